// Host launchers of the CUDA kernels: raw pointers, sizes and a stream in, a cudaError_t out.
// No torch headers here or in the .cu files (the CPU torch wheel cannot compile c10/cuda headers,
// and torch/extension.h costs ~70 s of nvcc per file); csrc/cuda/bindings_cuda.cpp adapts tensors.
//
// All tensors are contiguous, row-major, of one element type `dtype`. Every launcher may be called
// with rows == 0 (it then does nothing). Workspaces are device buffers of at least the size the
// matching *_workspace() function returns, 16-byte aligned, with no required initial content.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace petal {
namespace cuda {

enum class DType : int { f32 = 0, f16 = 1, bf16 = 2, f64 = 3 };
enum class Granularity : int { large = 0, middleX = 1, middleY = 2, small = 3 };

// The widest row (d) the gated_residual row kernels (middleX, middleY, small) hold in registers:
// d must be at most this. `large` has no limit.
int64_t gated_residual_max_d(DType dtype, int64_t d);

// ---------------------------------------------------------------------------- gated_residual
// Canonical arguments of petal_kernels.reference.gated_residual_forward/backward: x, h, u and the
// optional gate_logits / dropout_mask are (rows, d); gate_weight is (d,) for middleX and (2d,) for
// small; gate_bias (1,); gate_vector (d,); `batch` examples of rows / batch rows each for small.
struct GatedResidualArgs {
  DType dtype;
  Granularity granularity;
  int64_t rows, d, batch;
  double adapter_scale, gate_scale;
  const void *x, *h, *u;
  const void *gate_logits, *gate_weight, *gate_bias, *gate_vector, *dropout_mask;  // null if absent
  // In-kernel dropout (no dropout_mask): element i is kept when petal::dropout_bits(seed, i) >= threshold
  // (petal/philox.h) and then scaled by keep, 1 / (1 - p) rounded to dtype.
  bool dropout;
  uint64_t dropout_seed;
  uint32_t dropout_threshold;
  double dropout_keep;
};

// out (rows, d); stat (rows,) pre-sigmoid gate scores for middleX and small (else unused).
size_t gated_residual_forward_workspace(const GatedResidualArgs& a);
cudaError_t gated_residual_forward(const GatedResidualArgs& a, void* out, void* stat, void* workspace,
                                   cudaStream_t stream);

// Gradients: dh (rows, d) always; dx and du (rows, d), each may be null (not written: the caller hands
// dout / dh through where they are equal); d_logits (rows, d) for large; d_weight (d,)/(2d,) and
// d_bias (1,) for middleX/small; d_vector (d,) for middleY. `stat` is what the forward wrote.
struct GatedResidualGrads {
  void *dx, *dh, *du, *d_logits, *d_weight, *d_bias, *d_vector;
};
size_t gated_residual_backward_workspace(const GatedResidualArgs& a);
cudaError_t gated_residual_backward(const GatedResidualArgs& a, const void* dout, const void* stat,
                                    const GatedResidualGrads& g, void* workspace, cudaStream_t stream);

// ---------------------------------------------------------------------------- dma_linear (R-wide)
// z = t * scale, t and z (rows, r); scale (r,) or, when scale_per_row, (rows, r).
cudaError_t dma_scale_forward(DType dtype, int64_t rows, int64_t r, const void* t, const void* scale,
                              bool scale_per_row, void* z, cudaStream_t stream);

// y = gamma * base + bias + y  (the fused epilogue after y = z @ up.T); y and base (rows, n);
// gamma and bias (n,), each may be null (then 1 and 0).
cudaError_t dma_epilogue(DType dtype, int64_t rows, int64_t n, const void* base, const void* gamma,
                         const void* bias, void* y, cudaStream_t stream);

// One projection's R-wide backward, element-wise over (rows, r):
//   dt = dz * scale (accumulate: dt += dz * scale)      when dt is non-null
//   z = t * scale (for d_up = dy.T @ z)                 when z is non-null
//   d_scale = dz * t                                    when d_scale_rows is non-null (per-row scale)
// The (r,) d_scale of a broadcast scale is column_dot(dz, t).
cudaError_t dma_scale_backward(DType dtype, int64_t rows, int64_t r, const void* dz, const void* t,
                               const void* scale, bool scale_per_row, void* dt, bool accumulate, void* z,
                               void* d_scale_rows, cudaStream_t stream);

// out[c] = sum_r a[r, c] * b[r, c] for (rows, cols) a and b: d_gamma = column_dot(dy, base),
// broadcast d_scale = column_dot(dz, t). Block partials in float/double, then a second pass sums
// them in a fixed order (deterministic).
size_t column_dot_workspace(DType dtype, int64_t rows, int64_t cols);
cudaError_t column_dot(DType dtype, int64_t rows, int64_t cols, const void* a, const void* b, void* out,
                       void* workspace, cudaStream_t stream);

}  // namespace cuda
}  // namespace petal
