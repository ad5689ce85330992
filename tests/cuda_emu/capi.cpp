// C entry points over the csrc/cuda launchers for ctypes (tests/test_cuda_emulated.py), plus the
// few CUDA runtime calls the launchers make, answered as a device with EMU_SMS multiprocessors.
#include <cstdlib>
#include <vector>

#include "launchers.h"

namespace pc = petal::cuda;

static int emu_sms = 2;

extern "C" {

cudaError_t cudaGetLastError(void) { return cudaSuccess; }
cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr, int) {
  *value = emu_sms;
  return cudaSuccess;
}

const char* cudaGetErrorString(cudaError_t err) { return err == cudaSuccess ? "no error" : "emulated error"; }

void emu_set_sms(int sms) { emu_sms = sms; }

static pc::GatedResidualArgs gated_args(int dtype, int granularity, int64_t rows, int64_t d, int64_t batch,
                                        double as, double gs, const void* x, const void* h, const void* u,
                                        const void* logits, const void* w, const void* b, const void* v,
                                        const void* mask) {
  return pc::GatedResidualArgs{static_cast<pc::DType>(dtype), static_cast<pc::Granularity>(granularity),
                               rows, d, batch, as, gs, x, h, u, logits, w, b, v, mask};
}

struct Workspace {
  void* p;
  explicit Workspace(size_t bytes) : p(std::aligned_alloc(64, (bytes / 64 + 1) * 64)) {}
  ~Workspace() { std::free(p); }
};

int emu_gated_forward(int dtype, int granularity, int64_t rows, int64_t d, int64_t batch, double as, double gs,
                      const void* x, const void* h, const void* u, const void* logits, const void* w,
                      const void* b, const void* v, const void* mask, void* out, void* stat) {
  const auto a = gated_args(dtype, granularity, rows, d, batch, as, gs, x, h, u, logits, w, b, v, mask);
  Workspace ws(pc::gated_residual_forward_workspace(a));
  return pc::gated_residual_forward(a, out, stat, ws.p, nullptr);
}

int emu_gated_backward(int dtype, int granularity, int64_t rows, int64_t d, int64_t batch, double as, double gs,
                       const void* x, const void* h, const void* u, const void* logits, const void* w,
                       const void* b, const void* v, const void* mask, const void* dout, const void* stat,
                       void* dx, void* dh, void* du, void* d_logits, void* d_weight, void* d_bias,
                       void* d_vector) {
  const auto a = gated_args(dtype, granularity, rows, d, batch, as, gs, x, h, u, logits, w, b, v, mask);
  Workspace ws(pc::gated_residual_backward_workspace(a));
  const pc::GatedResidualGrads g{dx, dh, du, d_logits, d_weight, d_bias, d_vector};
  return pc::gated_residual_backward(a, dout, stat, g, ws.p, nullptr);
}

long long emu_gated_max_d(int dtype, int64_t d) { return pc::gated_residual_max_d(static_cast<pc::DType>(dtype), d); }

int emu_dma_scale_forward(int dtype, int64_t rows, int64_t r, const void* t, const void* scale, int per_row,
                          void* z) {
  return pc::dma_scale_forward(static_cast<pc::DType>(dtype), rows, r, t, scale, per_row != 0, z, nullptr);
}

int emu_dma_epilogue(int dtype, int64_t rows, int64_t n, const void* base, const void* gamma, const void* bias,
                     void* y) {
  return pc::dma_epilogue(static_cast<pc::DType>(dtype), rows, n, base, gamma, bias, y, nullptr);
}

int emu_dma_scale_backward(int dtype, int64_t rows, int64_t r, const void* dz, const void* t, const void* scale,
                           int per_row, void* dt, int accumulate, void* z, void* d_scale_rows) {
  return pc::dma_scale_backward(static_cast<pc::DType>(dtype), rows, r, dz, t, scale, per_row != 0, dt,
                                accumulate != 0, z, d_scale_rows, nullptr);
}

int emu_column_dot(int dtype, int64_t rows, int64_t cols, const void* a, const void* b, void* out) {
  Workspace ws(pc::column_dot_workspace(static_cast<pc::DType>(dtype), rows, cols));
  return pc::column_dot(static_cast<pc::DType>(dtype), rows, cols, a, b, out, ws.p, nullptr);
}

}  // extern "C"
