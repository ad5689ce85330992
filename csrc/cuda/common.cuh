// Device-side plumbing shared by the CUDA kernels: element types, 16-byte packs, block reductions,
// launch geometry. No torch headers (see csrc/cuda/launchers.h).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <initializer_list>

#include "launchers.h"

namespace petal {
namespace cuda {
namespace detail {

// Math runs in float for the 16/32-bit types and in double for double.
template <typename T> struct AccOf { using type = float; };
template <> struct AccOf<double> { using type = double; };
template <typename T> using acc_t = typename AccOf<T>::type;

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_acc(acc_t<T> v);
template <> __device__ __forceinline__ float from_acc<float>(float v) { return v; }
template <> __device__ __forceinline__ double from_acc<double>(double v) { return v; }
template <> __device__ __forceinline__ __half from_acc<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// Elements per 16-byte vector access.
template <typename T> constexpr int kVec = 16 / static_cast<int>(sizeof(T));

template <typename T, int N> struct alignas(sizeof(T) * N) Pack { T v[N]; };

// Loads N consecutive elements at p (aligned to N * sizeof(T) when N > 1) as accumulator values.
template <typename T, int N>
__device__ __forceinline__ void load(const T* __restrict__ p, acc_t<T> (&out)[N]) {
  const Pack<T, N> pk = *reinterpret_cast<const Pack<T, N>*>(p);
#pragma unroll
  for (int i = 0; i < N; ++i) out[i] = to_acc(pk.v[i]);
}

template <typename T, int N>
__device__ __forceinline__ void store(T* __restrict__ p, const acc_t<T> (&in)[N]) {
  Pack<T, N> pk;
#pragma unroll
  for (int i = 0; i < N; ++i) pk.v[i] = from_acc<T>(in[i]);
  *reinterpret_cast<Pack<T, N>*>(p) = pk;
}

template <typename A> __device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// Sum of v over the block, returned to every thread; the same fixed order on every call
// (deterministic). `buf` holds 2 x 32 slots: callers alternate `parity` between consecutive calls,
// which makes one __syncthreads per call enough.
template <typename A>
__device__ __forceinline__ A block_sum(A v, A (*buf)[32], int parity) {
  v = warp_sum(v);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, warps = (blockDim.x + 31) >> 5;
  if (lane == 0) buf[parity][warp] = v;
  __syncthreads();
  A total = 0;
  for (int w = 0; w < warps; ++w) total += buf[parity][w];
  return total;
}

// fn(T{}) for the element type T of `dtype` (float, __half, __nv_bfloat16, double).
template <typename Fn>
cudaError_t dispatch(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::f32: return fn(float{});
    case DType::f16: return fn(__half{});
    case DType::bf16: return fn(__nv_bfloat16{});
    case DType::f64: return fn(double{});
  }
  return cudaErrorInvalidValue;
}

inline bool aligned16(const void* p) { return (reinterpret_cast<std::uintptr_t>(p) & 15u) == 0; }

inline int sm_count() {
  int device = 0, sms = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess || sms <= 0) {
    cudaGetLastError();  // clear a sticky query error; fall back to an H100-sized guess
    return 132;
  }
  return sms;
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Blocks for a grid-stride element-wise kernel over n items of `per_thread` elements each.
inline unsigned flat_blocks(int64_t n, int per_thread, int threads) {
  const int64_t want = ceil_div(ceil_div(n, per_thread), threads);
  const int64_t cap = static_cast<int64_t>(sm_count()) * (2048 / threads);
  return static_cast<unsigned>(want < 1 ? 1 : (want < cap ? want : cap));
}

// Second pass of the column reductions: out[c] = sum over blocks b (in order) of
// partial[b * stride + c] for c < ncols, and bias_out[0] = the same sum at c == ncols when
// bias_out is given. One thread per column; reads coalesce across columns.
template <typename T>
__global__ void finish_columns(const acc_t<T>* __restrict__ partial, int64_t blocks, int64_t stride,
                               int64_t ncols, T* __restrict__ out, T* __restrict__ bias_out) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c > ncols || (c == ncols && !bias_out)) return;
  acc_t<T> s = 0;
  for (int64_t b = 0; b < blocks; ++b) s += partial[b * stride + c];
  if (c < ncols) {
    out[c] = from_acc<T>(s);
  } else {
    bias_out[0] = from_acc<T>(s);
  }
}

}  // namespace detail
}  // namespace cuda
}  // namespace petal
