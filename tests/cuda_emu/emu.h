// Host emulation of the CUDA execution model, enough to run csrc/cuda/*.cu kernels on the CPU in
// tests (no GPU here): force-included (g++ -include) before a .cu whose `k<<<grid, block, smem,
// stream>>>(args)` launches were rewritten to `emu::launch(k, grid, block, smem, stream)(args)`.
// Blocks run one after another; the threads of a block run as real std::threads, with a
// std::barrier for __syncthreads and an exchange buffer for warp shuffles. __shared__ becomes a
// function-static (one block runs at a time). Not a performance model, only a correctness harness.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <barrier>
#include <thread>
#include <vector>

#undef __global__
#undef __device__
#undef __host__
#undef __forceinline__
#undef __shared__
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static

namespace emu {

struct Context {
  uint3 tid, bid;
  dim3 bdim, gdim;
  std::barrier<>* barrier;
  double* exchange;
};
inline thread_local Context ctx;

inline unsigned linear_tid() { return ctx.tid.x + ctx.bdim.x * (ctx.tid.y + ctx.bdim.y * ctx.tid.z); }

template <typename T>
T shfl_xor(T v, int offset) {
  const unsigned t = linear_tid();
  ctx.exchange[t] = static_cast<double>(v);
  ctx.barrier->arrive_and_wait();
  const T r = static_cast<T>(ctx.exchange[t ^ static_cast<unsigned>(offset)]);
  ctx.barrier->arrive_and_wait();
  return r;
}

template <typename K>
struct Launch {
  K kernel;
  dim3 grid, block;

  template <typename... Args>
  void operator()(Args... args) const {
    const unsigned n = block.x * block.y * block.z;
    for (unsigned bz = 0; bz < grid.z; ++bz)
      for (unsigned by = 0; by < grid.y; ++by)
        for (unsigned bx = 0; bx < grid.x; ++bx) {
          std::barrier<> barrier(n);
          std::vector<double> exchange(n);
          std::vector<std::thread> threads;
          for (unsigned t = 0; t < n; ++t) {
            threads.emplace_back([&, t] {
              ctx.tid = uint3{t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
              ctx.bid = uint3{bx, by, bz};
              ctx.bdim = block;
              ctx.gdim = grid;
              ctx.barrier = &barrier;
              ctx.exchange = exchange.data();
              kernel(args...);
            });
          }
          for (auto& th : threads) th.join();
        }
  }
};

template <typename K>
Launch<K> launch(K kernel, dim3 grid, dim3 block, size_t = 0, cudaStream_t = nullptr) {
  return Launch<K>{kernel, grid, block};
}

}  // namespace emu

#define threadIdx (emu::ctx.tid)
#define blockIdx (emu::ctx.bid)
#define blockDim (emu::ctx.bdim)
#define gridDim (emu::ctx.gdim)
#define __syncthreads() (emu::ctx.barrier->arrive_and_wait())
#define __shfl_xor_sync(mask, v, offset) (emu::shfl_xor((v), (offset)))
