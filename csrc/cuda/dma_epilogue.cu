// The element-wise passes of the DMA linear on CUDA (the GEMMs are cuBLAS calls made by
// bindings_cuda.cpp). Element math: petal/dma_linear.h (shared with the CPU kernels).
//
//   dma_scale_forward   z = t * scale                         R-wide, scale (R,) or (M, R)
//   dma_epilogue        y = gamma * base + bias + y           N-wide, after y = z @ up.T
//   dma_scale_backward  dt (+)= dz * scale, z = t * scale, d_scale = dz * t (per-row scale)
//   column_dot          out[c] = sum_r a[r, c] * b[r, c]      d_gamma, broadcast d_scale
//
// Flat kernels use 16-byte vectors when the row width is a multiple of the vector width and every
// pointer is aligned, else scalar accesses; a vector then never straddles two rows.
#include "common.cuh"
#include "petal/dma_linear.h"

namespace petal {
namespace cuda {
namespace {

using detail::acc_t;
using detail::dispatch;
using detail::load;
using detail::store;

constexpr int kThreads = 256;

template <typename T, int V>
__global__ void scale_forward(int64_t n, int64_t r, const T* __restrict__ t, const T* __restrict__ scale,
                              bool per_row, T* __restrict__ z) {
  using A = acc_t<T>;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n / V; i += stride) {
    const int64_t o = i * V;
    A tv[V], s[V], out[V];
    load<T, V>(t + o, tv);
    load<T, V>(scale + (per_row ? o : o % r), s);
#pragma unroll
    for (int k = 0; k < V; ++k) out[k] = dma_scaled(tv[k], s[k]);
    store<T, V>(z + o, out);
  }
}

template <typename T, int V>
__global__ void epilogue(int64_t n, int64_t cols, const T* __restrict__ base, const T* __restrict__ gamma,
                         const T* __restrict__ bias, T* __restrict__ y) {
  using A = acc_t<T>;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n / V; i += stride) {
    const int64_t o = i * V, c = o % cols;
    A b[V], g[V], bi[V], upd[V], out[V];
    load<T, V>(base + o, b);
    load<T, V>(y + o, upd);
    if (gamma) {
      load<T, V>(gamma + c, g);
    } else {
#pragma unroll
      for (int k = 0; k < V; ++k) g[k] = 1;
    }
    if (bias) {
      load<T, V>(bias + c, bi);
#pragma unroll
      for (int k = 0; k < V; ++k) out[k] = dma_output(b[k], g[k], bi[k], upd[k]);
    } else {
#pragma unroll
      for (int k = 0; k < V; ++k) out[k] = dma_output(b[k], g[k], upd[k]);
    }
    store<T, V>(y + o, out);
  }
}

template <typename T, int V>
__global__ void scale_backward(int64_t n, int64_t r, const T* __restrict__ dz, const T* __restrict__ t,
                               const T* __restrict__ scale, bool per_row, T* __restrict__ dt, bool accumulate,
                               T* __restrict__ z, T* __restrict__ d_scale) {
  using A = acc_t<T>;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n / V; i += stride) {
    const int64_t o = i * V;
    A g[V], tv[V], s[V], out[V];
    load<T, V>(dz + o, g);
    load<T, V>(t + o, tv);
    load<T, V>(scale + (per_row ? o : o % r), s);
    if (dt) {
      if (accumulate) {
        load<T, V>(dt + o, out);
      } else {
#pragma unroll
        for (int k = 0; k < V; ++k) out[k] = 0;
      }
#pragma unroll
      for (int k = 0; k < V; ++k) out[k] = dma_dt_accumulate(out[k], g[k], s[k]);
      store<T, V>(dt + o, out);
    }
    if (z) {
#pragma unroll
      for (int k = 0; k < V; ++k) out[k] = dma_scaled(tv[k], s[k]);
      store<T, V>(z + o, out);
    }
    if (d_scale) {
#pragma unroll
      for (int k = 0; k < V; ++k) out[k] = dma_scale_grad(g[k], tv[k]);
      store<T, V>(d_scale + o, out);
    }
  }
}

// Block (32, 8) at (bx, by): columns bx * 32 + threadIdx.x, rows by * rows_per_block + ... ;
// the 8 row lanes are combined in shared memory in a fixed order, one partial row per by.
template <typename T>
__global__ void column_dot_partial(int64_t rows, int64_t cols, const T* __restrict__ a, const T* __restrict__ b,
                                   int64_t rows_per_block, acc_t<T>* __restrict__ partial) {
  using A = acc_t<T>;
  __shared__ A lanes[8][33];
  const int64_t c = static_cast<int64_t>(blockIdx.x) * 32 + threadIdx.x;
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * rows_per_block;
  const int64_t r1 = r0 + rows_per_block < rows ? r0 + rows_per_block : rows;
  A s = 0;
  if (c < cols) {
    for (int64_t r = r0 + threadIdx.y; r < r1; r += blockDim.y) {
      s += dma_gamma_grad(detail::to_acc(a[r * cols + c]), detail::to_acc(b[r * cols + c]));
    }
  }
  lanes[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && c < cols) {
    A total = 0;
#pragma unroll
    for (int k = 0; k < 8; ++k) total += lanes[k][threadIdx.x];
    partial[static_cast<int64_t>(blockIdx.y) * cols + c] = total;
  }
}

bool all_aligned(std::initializer_list<const void*> ptrs) {
  for (const void* p : ptrs) {
    if (p && !detail::aligned16(p)) return false;
  }
  return true;
}

// Launches the vector instantiation of a flat kernel when the row width allows 16-byte vectors and
// every pointer is aligned, else the scalar one (both have the same signature).
template <typename T, typename... Params, typename... Args>
cudaError_t launch_flat(void (*vector_kernel)(int64_t, Params...), void (*scalar_kernel)(int64_t, Params...),
                        int64_t n, int64_t width, std::initializer_list<const void*> ptrs, cudaStream_t stream,
                        Args... args) {
  constexpr int V = detail::kVec<T>;
  const bool vec = width % V == 0 && all_aligned(ptrs);
  const unsigned blocks = detail::flat_blocks(n, vec ? V : 1, kThreads);
  (vec ? vector_kernel : scalar_kernel)<<<blocks, kThreads, 0, stream>>>(n, args...);
  return cudaGetLastError();
}

// Row blocks of the column reduction: enough blocks to fill the GPU, few enough partial rows.
int64_t column_row_blocks(int64_t rows, int64_t cols) {
  const int64_t col_blocks = detail::ceil_div(cols, 32);
  int64_t want = detail::ceil_div(static_cast<int64_t>(detail::sm_count()) * 8, col_blocks);
  const int64_t by_rows = detail::ceil_div(rows, 64);  // at least 64 rows per block
  want = want < by_rows ? want : by_rows;
  return want < 1 ? 1 : (want > 65535 ? 65535 : want);
}

size_t acc_size(DType dtype) { return dtype == DType::f64 ? sizeof(double) : sizeof(float); }

}  // namespace

cudaError_t dma_scale_forward(DType dtype, int64_t rows, int64_t r, const void* t, const void* scale,
                              bool scale_per_row, void* z, cudaStream_t stream) {
  if (rows == 0 || r == 0) return cudaSuccess;
  return dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    return launch_flat<T>(scale_forward<T, detail::kVec<T>>, scale_forward<T, 1>, rows * r, r, {t, scale, z},
                          stream, r, static_cast<const T*>(t), static_cast<const T*>(scale), scale_per_row,
                          static_cast<T*>(z));
  });
}

cudaError_t dma_epilogue(DType dtype, int64_t rows, int64_t n, const void* base, const void* gamma,
                         const void* bias, void* y, cudaStream_t stream) {
  if (rows == 0 || n == 0) return cudaSuccess;
  return dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    return launch_flat<T>(epilogue<T, detail::kVec<T>>, epilogue<T, 1>, rows * n, n, {base, gamma, bias, y},
                          stream, n, static_cast<const T*>(base), static_cast<const T*>(gamma),
                          static_cast<const T*>(bias), static_cast<T*>(y));
  });
}

cudaError_t dma_scale_backward(DType dtype, int64_t rows, int64_t r, const void* dz, const void* t,
                               const void* scale, bool scale_per_row, void* dt, bool accumulate, void* z,
                               void* d_scale_rows, cudaStream_t stream) {
  if (rows == 0 || r == 0) return cudaSuccess;
  return dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    return launch_flat<T>(scale_backward<T, detail::kVec<T>>, scale_backward<T, 1>, rows * r, r,
                          {dz, t, scale, dt, z, d_scale_rows}, stream, r, static_cast<const T*>(dz),
                          static_cast<const T*>(t), static_cast<const T*>(scale), scale_per_row,
                          static_cast<T*>(dt), accumulate, static_cast<T*>(z), static_cast<T*>(d_scale_rows));
  });
}

size_t column_dot_workspace(DType dtype, int64_t rows, int64_t cols) {
  if (cols == 0) return 0;
  return static_cast<size_t>(column_row_blocks(rows, cols) * cols) * acc_size(dtype);
}

cudaError_t column_dot(DType dtype, int64_t rows, int64_t cols, const void* a, const void* b, void* out,
                       void* workspace, cudaStream_t stream) {
  if (cols == 0) return cudaSuccess;
  return dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    using A = acc_t<T>;
    const int64_t row_blocks = column_row_blocks(rows, cols);
    const int64_t per_block = detail::ceil_div(rows, row_blocks);
    A* partial = static_cast<A*>(workspace);
    const dim3 grid(static_cast<unsigned>(detail::ceil_div(cols, 32)), static_cast<unsigned>(row_blocks));
    column_dot_partial<T><<<grid, dim3(32, 8), 0, stream>>>(rows, cols, static_cast<const T*>(a),
                                                            static_cast<const T*>(b), per_block, partial);
    detail::finish_columns<T><<<static_cast<unsigned>(detail::ceil_div(cols, 256)), 256, 0, stream>>>(
        partial, row_blocks, cols, cols, static_cast<T*>(out), nullptr);
    return cudaGetLastError();
  });
}

}  // namespace cuda
}  // namespace petal
