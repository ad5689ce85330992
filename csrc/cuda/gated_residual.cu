// VL-PET gated residual on CUDA, forward and backward, all four gate granularities.
// Element math: petal/gated_residual.h (shared with the CPU kernels). Math in float (double for double).
//
//   large   : flat element-wise kernels, 16-byte vectors + scalar tail.
//   middleX : row kernels: each block owns whole rows; a thread holds its columns of the row in
//             registers (KV vectors), so the row score (a block reduction) costs no second read.
//   middleY : row kernels without the reduction; the backward accumulates d_vector per column.
//   small   : forward = row scores -> per-example mean of sigmoid -> apply; backward = row sums of
//             e*h2 (and, for 16-bit types, the row scores again) -> per-example sums -> row kernel.
//             The gates use the scores in float: a bf16/fp16 stat is too coarse for the sigmoid.
// Gate-parameter gradients: each backward block sums its contiguous rows into one partial row of a
// workspace; finish_columns then sums the partials in block order (deterministic, no atomics).
#include "common.cuh"
#include "petal/gated_residual.h"
#include "petal/philox.h"

namespace petal {
namespace cuda {
namespace {

using detail::acc_t;
using detail::dispatch;
using detail::block_sum;
using detail::load;
using detail::store;

template <typename T>
struct Params {
  int64_t rows, d, per_example;
  acc_t<T> as, gs;
  const T *x, *h, *u, *logits, *w, *b, *v, *mask;
  bool drop;  // in-kernel dropout (mask is null)
  uint64_t seed;
  uint32_t threshold;
  acc_t<T> keep;
};

template <typename T>
struct Grads {
  T *dx, *dh, *du, *d_logits, *d_weight, *d_bias, *d_vector;
};

// The dropout mask of elements o .. o+N-1: the caller's, the Philox stream's, or ones.
template <typename T, int N>
__device__ __forceinline__ void load_mask(const Params<T>& p, int64_t o, acc_t<T> (&m)[N]) {
  if (p.mask) {
    load<T, N>(p.mask + o, m);
  } else if (p.drop) {
#pragma unroll
    for (int i = 0; i < N; ++i) m[i] = dropout_value(dropout_bits(p.seed, o + i), p.threshold, p.keep);
  } else {
#pragma unroll
    for (int i = 0; i < N; ++i) m[i] = acc_t<T>(1);
  }
}

// ---------------------------------------------------------------------------- large (flat)

template <typename T, int V>
__global__ void large_forward(Params<T> p, T* __restrict__ out) {
  using A = acc_t<T>;
  const int64_t n = p.rows * p.d, nv = n / V;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  for (int64_t i = tid; i < nv; i += stride) {
    const int64_t o = i * V;
    A x[V], h[V], u[V], l[V], m[V], y[V];
    load<T, V>(p.x + o, x);
    load<T, V>(p.h + o, h);
    load<T, V>(p.u + o, u);
    load<T, V>(p.logits + o, l);
    load_mask<T, V>(p, o, m);
#pragma unroll
    for (int k = 0; k < V; ++k) {
      y[k] = gated_out(x[k], adapter_sum(h[k], u[k], p.as), gate_large(l[k]), p.gs, m[k]);
    }
    store<T, V>(out + o, y);
  }
  for (int64_t o = nv * V + tid; o < n; o += stride) {  // scalar tail (V > 1 only)
    A x[1], h[1], u[1], l[1], m[1], y[1];
    load<T, 1>(p.x + o, x);
    load<T, 1>(p.h + o, h);
    load<T, 1>(p.u + o, u);
    load<T, 1>(p.logits + o, l);
    load_mask<T, 1>(p, o, m);
    y[0] = gated_out(x[0], adapter_sum(h[0], u[0], p.as), gate_large(l[0]), p.gs, m[0]);
    store<T, 1>(out + o, y);
  }
}

template <typename T, int N>
__device__ __forceinline__ void large_backward_at(const Params<T>& p, const T* __restrict__ dout,
                                                  const Grads<T>& g, int64_t o) {
  using A = acc_t<T>;
  A dy[N], h[N], u[N], l[N], m[N], dh[N], du[N], dl[N];
  load<T, N>(dout + o, dy);
  load<T, N>(p.h + o, h);
  load<T, N>(p.u + o, u);
  load<T, N>(p.logits + o, l);
  load_mask<T, N>(p, o, m);
#pragma unroll
  for (int k = 0; k < N; ++k) {
    const A e = upstream(dy[k], p.gs, m[k]), gate = gate_large(l[k]);
    dh[k] = gate_h2_grad(e, gate);
    du[k] = adapter_u_grad(dh[k], p.as);
    dl[k] = large_logit_grad(e, adapter_sum(h[k], u[k], p.as), gate);
  }
  if (g.dx) store<T, N>(g.dx + o, dy);
  store<T, N>(g.dh + o, dh);
  if (g.du) store<T, N>(g.du + o, du);
  store<T, N>(g.d_logits + o, dl);
}

template <typename T, int V>
__global__ void large_backward(Params<T> p, const T* __restrict__ dout, Grads<T> g) {
  const int64_t n = p.rows * p.d, nv = n / V;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  for (int64_t i = tid; i < nv; i += stride) large_backward_at<T, V>(p, dout, g, i * V);
  for (int64_t o = nv * V + tid; o < n; o += stride) large_backward_at<T, 1>(p, dout, g, o);
}

// ---------------------------------------------------------------------------- row kernels: forward

enum class RowForward { middleX, middleY, small_score, small_apply };

// Thread t of a block owns the vectors j = t + k * blockDim.x (k < KV) of every row it visits.
template <typename T, int V, int KV, RowForward M>
__global__ void rows_forward(Params<T> p, T* __restrict__ out, T* __restrict__ stat,
                             const acc_t<T>* __restrict__ g_ex, acc_t<T>* __restrict__ scores) {
  using A = acc_t<T>;
  __shared__ A buf[2][32];
  const int64_t dv = p.d / V;
  int parity = 0;
  for (int64_t r = blockIdx.x; r < p.rows; r += gridDim.x) {
    const int64_t row = r * p.d;
    A x[KV][V], h2[KV][V], part = 0;
#pragma unroll
    for (int k = 0; k < KV; ++k) {
      const int64_t j = threadIdx.x + static_cast<int64_t>(k) * blockDim.x;
      if (j >= dv) continue;
      const int64_t c = j * V;
      A h[V], u[V];
      load<T, V>(p.x + row + c, x[k]);
      load<T, V>(p.h + row + c, h);
      load<T, V>(p.u + row + c, u);
#pragma unroll
      for (int i = 0; i < V; ++i) h2[k][i] = adapter_sum(h[i], u[i], p.as);
      if (M == RowForward::middleX) {
        A w[V];
        load<T, V>(p.w + c, w);
#pragma unroll
        for (int i = 0; i < V; ++i) part += middle_x_score_term(x[k][i], h2[k][i], w[i]);
      } else if (M == RowForward::small_score) {
        A wx[V], wh[V];
        load<T, V>(p.w + c, wx);
        load<T, V>(p.w + p.d + c, wh);
#pragma unroll
        for (int i = 0; i < V; ++i) part += small_score_term(x[k][i], h2[k][i], wx[i], wh[i]);
      }
    }
    A gate = 1;
    if (M == RowForward::middleX || M == RowForward::small_score) {
      const A score = block_sum(part, buf, parity) + detail::to_acc(p.b[0]);
      parity ^= 1;
      if (threadIdx.x == 0) {
        stat[r] = detail::from_acc<T>(score);
        if (M == RowForward::small_score) scores[r] = score;
      }
      if (M == RowForward::small_score) continue;
      gate = sigmoid(score);
    } else if (M == RowForward::small_apply) {
      gate = g_ex[r / p.per_example];
    }
#pragma unroll
    for (int k = 0; k < KV; ++k) {
      const int64_t j = threadIdx.x + static_cast<int64_t>(k) * blockDim.x;
      if (j >= dv) continue;
      const int64_t c = j * V;
      A m[V], y[V], gv[V];
      load_mask<T, V>(p, row + c, m);
      if (M == RowForward::middleY) load<T, V>(p.v + c, gv);
#pragma unroll
      for (int i = 0; i < V; ++i) {
        const A g = M == RowForward::middleY ? gate_middle_y(gv[i]) : gate;
        y[i] = gated_out(x[k][i], h2[k][i], g, p.gs, m[i]);
      }
      store<T, V>(out + row + c, y);
    }
  }
}

// Per example b (one block each): g_ex[b] = mean of sigmoid(score) over its rows and, when `se` is
// given, dg_ex[b] = the sum of se over its rows.
template <typename T>
__global__ void example_stats(const acc_t<T>* __restrict__ scores, const acc_t<T>* __restrict__ se,
                              int64_t per_example, acc_t<T>* __restrict__ g_ex,
                              acc_t<T>* __restrict__ dg_ex) {
  using A = acc_t<T>;
  __shared__ A buf[2][32];
  const int64_t first = static_cast<int64_t>(blockIdx.x) * per_example;
  A gsum = 0, esum = 0;
  for (int64_t i = threadIdx.x; i < per_example; i += blockDim.x) {
    gsum += sigmoid(scores[first + i]);
    if (se) esum += se[first + i];
  }
  gsum = block_sum(gsum, buf, 0);
  esum = block_sum(esum, buf, 1);
  if (threadIdx.x == 0) {
    g_ex[blockIdx.x] = gsum / static_cast<A>(per_example);
    if (dg_ex) dg_ex[blockIdx.x] = esum;
  }
}

// ---------------------------------------------------------------------------- row kernels: backward

enum class RowBackward { middleX, middleY, small };

// Block b owns rows [b * rows_per_block, ...) and writes its column sums of the gate-parameter
// gradient into partial[b * stride + c] (c < ncols; c == ncols: the bias).
template <typename T, int V, int KV, RowBackward M>
__global__ void rows_backward(Params<T> p, const T* __restrict__ dout, const acc_t<T>* __restrict__ scores,
                              const acc_t<T>* __restrict__ g_ex, const acc_t<T>* __restrict__ dg_ex,
                              Grads<T> g, acc_t<T>* __restrict__ partial, int64_t rows_per_block,
                              int64_t stride) {
  using A = acc_t<T>;
  __shared__ A buf[2][32];
  const int64_t dv = p.d / V;
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * rows_per_block;
  const int64_t r1 = r0 + rows_per_block < p.rows ? r0 + rows_per_block : p.rows;
  A acc[KV][V], acc_h[KV][V], acc_b = 0;  // acc_h: the h2 half of small's d_weight
#pragma unroll
  for (int k = 0; k < KV; ++k) {
#pragma unroll
    for (int i = 0; i < V; ++i) acc[k][i] = acc_h[k][i] = 0;
  }
  int parity = 0;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t row = r * p.d;
    A dy[KV][V], e[KV][V], h2[KV][V], x[KV][V], part = 0, score = 0;
#pragma unroll
    for (int k = 0; k < KV; ++k) {
      const int64_t j = threadIdx.x + static_cast<int64_t>(k) * blockDim.x;
      if (j >= dv) continue;
      const int64_t c = j * V;
      A h[V], u[V], m[V];
      load<T, V>(dout + row + c, dy[k]);
      load<T, V>(p.h + row + c, h);
      load<T, V>(p.u + row + c, u);
      load_mask<T, V>(p, row + c, m);
      if (M != RowBackward::middleY) load<T, V>(p.x + row + c, x[k]);
      A w[V];
      if (M == RowBackward::middleX) load<T, V>(p.w + c, w);
#pragma unroll
      for (int i = 0; i < V; ++i) {
        e[k][i] = upstream(dy[k][i], p.gs, m[i]);
        h2[k][i] = adapter_sum(h[i], u[i], p.as);
        if (M == RowBackward::middleX) {
          part += gate_score_term(e[k][i], h2[k][i]);
          score += middle_x_score_term(x[k][i], h2[k][i], w[i]);
        }
      }
    }
    A gate = 0, ds = 0;
    if (M == RowBackward::middleX) {
      // The gate from the row score recomputed at full precision, as the forward used it (the
      // saved stat is rounded to T).
      const A se = block_sum(part, buf, parity);
      parity ^= 1;
      gate = sigmoid(block_sum(score, buf, parity) + detail::to_acc(p.b[0]));
      parity ^= 1;
      ds = row_score_grad(se, gate);
    } else if (M == RowBackward::small) {
      const int64_t b = r / p.per_example;
      gate = g_ex[b];
      ds = row_score_grad(dg_ex[b] / static_cast<A>(p.per_example), sigmoid(scores[r]));
    }
    acc_b += ds;
#pragma unroll
    for (int k = 0; k < KV; ++k) {
      const int64_t j = threadIdx.x + static_cast<int64_t>(k) * blockDim.x;
      if (j >= dv) continue;
      const int64_t c = j * V;
      A dx[V], dh[V], du[V], wx[V], wh[V];
      if (M == RowBackward::middleY) {
        load<T, V>(p.v + c, wx);
      } else {
        load<T, V>(p.w + c, wx);
        if (M == RowBackward::small) load<T, V>(p.w + p.d + c, wh);
      }
#pragma unroll
      for (int i = 0; i < V; ++i) {
        if (M == RowBackward::middleY) {
          dx[i] = dy[k][i];
          dh[i] = gate_h2_grad(e[k][i], gate_middle_y(wx[i]));
          acc[k][i] += gate_score_term(e[k][i], h2[k][i]);
        } else if (M == RowBackward::middleX) {
          dx[i] = row_gate_x_grad(dy[k][i], ds, wx[i]);
          dh[i] = gate_h2_grad(e[k][i], gate, ds, wx[i]);
          acc[k][i] += row_weight_grad(ds, x[k][i] + h2[k][i]);
        } else {
          dx[i] = row_gate_x_grad(dy[k][i], ds, wx[i]);
          dh[i] = gate_h2_grad(e[k][i], gate, ds, wh[i]);
          acc[k][i] += row_weight_grad(ds, x[k][i]);
          acc_h[k][i] += row_weight_grad(ds, h2[k][i]);
        }
        du[i] = adapter_u_grad(dh[i], p.as);
      }
      if (g.dx) store<T, V>(g.dx + row + c, dx);
      store<T, V>(g.dh + row + c, dh);
      if (g.du) store<T, V>(g.du + row + c, du);
    }
  }
  A* out = partial + static_cast<int64_t>(blockIdx.x) * stride;
#pragma unroll
  for (int k = 0; k < KV; ++k) {
    const int64_t j = threadIdx.x + static_cast<int64_t>(k) * blockDim.x;
    if (j >= dv) continue;
#pragma unroll
    for (int i = 0; i < V; ++i) {
      out[j * V + i] = acc[k][i];
      if (M == RowBackward::small) out[p.d + j * V + i] = acc_h[k][i];
    }
  }
  if (M != RowBackward::middleY && threadIdx.x == 0) out[stride - 1] = acc_b;
}

// small backward, first pass: se[r] = Σ_row gate_score_term(e, h2), and scores[r] the row's gate
// score in float: recomputed from x and h2 for 16-bit types, else the saved stat (exact).
template <typename T, int V, int KV>
__global__ void small_row_sums(Params<T> p, const T* __restrict__ dout, const T* __restrict__ stat,
                               acc_t<T>* __restrict__ se, acc_t<T>* __restrict__ scores) {
  constexpr bool kRecompute = sizeof(T) < 4;
  using A = acc_t<T>;
  __shared__ A buf[2][32];
  const int64_t dv = p.d / V;
  int parity = 0;
  for (int64_t r = blockIdx.x; r < p.rows; r += gridDim.x) {
    const int64_t row = r * p.d;
    A part = 0, score = 0;
#pragma unroll
    for (int k = 0; k < KV; ++k) {
      const int64_t j = threadIdx.x + static_cast<int64_t>(k) * blockDim.x;
      if (j >= dv) continue;
      const int64_t c = j * V;
      A dy[V], h[V], u[V], m[V], x[V], wx[V], wh[V];
      load<T, V>(dout + row + c, dy);
      load<T, V>(p.h + row + c, h);
      load<T, V>(p.u + row + c, u);
      load_mask<T, V>(p, row + c, m);
      if (kRecompute) {
        load<T, V>(p.x + row + c, x);
        load<T, V>(p.w + c, wx);
        load<T, V>(p.w + p.d + c, wh);
      }
#pragma unroll
      for (int i = 0; i < V; ++i) {
        const A h2 = adapter_sum(h[i], u[i], p.as);
        part += gate_score_term(upstream(dy[i], p.gs, m[i]), h2);
        if (kRecompute) score += small_score_term(x[i], h2, wx[i], wh[i]);
      }
    }
    const A s = block_sum(part, buf, parity);
    parity ^= 1;
    if (kRecompute) {
      score = block_sum(score, buf, parity) + detail::to_acc(p.b[0]);
      parity ^= 1;
    }
    if (threadIdx.x == 0) {
      se[r] = s;
      scores[r] = kRecompute ? score : detail::to_acc(stat[r]);
    }
  }
}

// ---------------------------------------------------------------------------- host side

constexpr int kMaxThreads = 1024;
constexpr int kFlatThreads = 256;

template <typename T>
Params<T> params_of(const GatedResidualArgs& a) {
  Params<T> p;
  p.rows = a.rows;
  p.d = a.d;
  p.per_example = a.batch > 0 ? a.rows / a.batch : a.rows;
  p.as = static_cast<acc_t<T>>(a.adapter_scale);
  p.gs = static_cast<acc_t<T>>(a.gate_scale);
  p.x = static_cast<const T*>(a.x);
  p.h = static_cast<const T*>(a.h);
  p.u = static_cast<const T*>(a.u);
  p.logits = static_cast<const T*>(a.gate_logits);
  p.w = static_cast<const T*>(a.gate_weight);
  p.b = static_cast<const T*>(a.gate_bias);
  p.v = static_cast<const T*>(a.gate_vector);
  p.mask = static_cast<const T*>(a.dropout_mask);
  p.drop = a.dropout && !a.dropout_mask;
  p.seed = a.dropout_seed;
  p.threshold = a.dropout_threshold;
  p.keep = static_cast<acc_t<T>>(a.dropout_keep);
  return p;
}

// Launch shape of the row kernels: vector width, vectors per thread, threads per block.
struct RowShape {
  bool vector;  // 16-byte accesses (d divisible by the vector width, every pointer aligned)
  int threads;
};

template <typename T>
constexpr int kv_of(bool vector) {
  return vector ? 2 : 4;
}

bool all_aligned(std::initializer_list<const void*> ptrs) {
  for (const void* p : ptrs) {
    if (p && !detail::aligned16(p)) return false;
  }
  return true;
}

template <typename T>
bool row_shape(const GatedResidualArgs& a, std::initializer_list<const void*> extra, RowShape* s) {
  constexpr int V = detail::kVec<T>;
  s->vector = a.d % V == 0 &&
              all_aligned({a.x, a.h, a.u, a.gate_weight, a.gate_vector, a.dropout_mask}) &&
              all_aligned(extra);
  const int64_t width = s->vector ? a.d / V : a.d;
  const int64_t threads = detail::ceil_div(detail::ceil_div(width, kv_of<T>(s->vector)), 32) * 32;
  s->threads = static_cast<int>(threads < 32 ? 32 : threads);
  return threads <= kMaxThreads;
}

template <typename T>
int64_t max_d_of(int64_t d) {
  constexpr int V = detail::kVec<T>;
  return d % V == 0 ? int64_t(kMaxThreads) * kv_of<T>(true) * V : int64_t(kMaxThreads) * kv_of<T>(false);
}

unsigned row_blocks(int64_t rows, int threads) {
  const int64_t cap = static_cast<int64_t>(detail::sm_count()) * (2048 / threads);
  return static_cast<unsigned>(rows < cap ? rows : cap);
}

// Blocks of the backward row kernels: few enough that the partials stay small next to the rows.
int64_t partial_blocks(int64_t rows, int threads) {
  const int64_t cap = static_cast<int64_t>(detail::sm_count()) * (512 / threads > 1 ? 512 / threads : 1);
  return rows < cap ? rows : cap;
}

int64_t partial_cols(const GatedResidualArgs& a) {
  switch (a.granularity) {
    case Granularity::middleX: return a.d + 1;
    case Granularity::small: return 2 * a.d + 1;
    case Granularity::middleY: return a.d;
    default: return 0;
  }
}

template <typename A>
size_t aligned_bytes(int64_t n) {
  return static_cast<size_t>(detail::ceil_div(n * static_cast<int64_t>(sizeof(A)), 16) * 16);
}

template <typename T, int V, int KV, RowForward M>
void launch_rows_forward(const Params<T>& p, int threads, T* out, T* stat, const acc_t<T>* g_ex,
                         acc_t<T>* scores, cudaStream_t stream) {
  rows_forward<T, V, KV, M><<<row_blocks(p.rows, threads), threads, 0, stream>>>(p, out, stat, g_ex, scores);
}

template <typename T, int V, int KV>
void forward_rows(const GatedResidualArgs& a, const Params<T>& p, int threads, T* out, T* stat, void* ws,
                  cudaStream_t stream) {
  using A = acc_t<T>;
  switch (a.granularity) {
    case Granularity::middleX:
      launch_rows_forward<T, V, KV, RowForward::middleX>(p, threads, out, stat, nullptr, nullptr, stream);
      break;
    case Granularity::middleY:
      launch_rows_forward<T, V, KV, RowForward::middleY>(p, threads, out, stat, nullptr, nullptr, stream);
      break;
    default: {
      A* scores = static_cast<A*>(ws);
      A* g_ex = reinterpret_cast<A*>(static_cast<char*>(ws) + aligned_bytes<A>(a.rows));
      launch_rows_forward<T, V, KV, RowForward::small_score>(p, threads, out, stat, nullptr, scores, stream);
      example_stats<T><<<static_cast<unsigned>(a.batch), 256, 0, stream>>>(scores, nullptr, p.per_example,
                                                                          g_ex, nullptr);
      launch_rows_forward<T, V, KV, RowForward::small_apply>(p, threads, out, stat, g_ex, nullptr, stream);
    }
  }
}

template <typename T>
cudaError_t forward_impl(const GatedResidualArgs& a, void* out_, void* stat_, void* ws, cudaStream_t stream) {
  constexpr int V = detail::kVec<T>;
  const Params<T> p = params_of<T>(a);
  T* out = static_cast<T*>(out_);
  T* stat = static_cast<T*>(stat_);
  if (a.granularity == Granularity::large) {
    const bool vec = all_aligned({a.x, a.h, a.u, a.gate_logits, a.dropout_mask, out_});
    const unsigned blocks = detail::flat_blocks(a.rows * a.d, vec ? V : 1, kFlatThreads);
    if (vec) {
      large_forward<T, V><<<blocks, kFlatThreads, 0, stream>>>(p, out);
    } else {
      large_forward<T, 1><<<blocks, kFlatThreads, 0, stream>>>(p, out);
    }
    return cudaGetLastError();
  }
  RowShape s;
  if (!row_shape<T>(a, {out_}, &s)) return cudaErrorNotSupported;
  if (s.vector) {
    forward_rows<T, V, kv_of<T>(true)>(a, p, s.threads, out, stat, ws, stream);
  } else {
    forward_rows<T, 1, kv_of<T>(false)>(a, p, s.threads, out, stat, ws, stream);
  }
  return cudaGetLastError();
}

template <typename T, int V, int KV>
void backward_rows(const GatedResidualArgs& a, const Params<T>& p, int threads, const T* dout,
                   const T* stat, const Grads<T>& g, void* ws, cudaStream_t stream) {
  using A = acc_t<T>;
  const int64_t blocks = partial_blocks(a.rows, threads);
  const int64_t per_block = detail::ceil_div(a.rows, blocks);
  const int64_t used = detail::ceil_div(a.rows, per_block);
  const int64_t stride = partial_cols(a);
  A* partial = static_cast<A*>(ws);
  const unsigned grid = static_cast<unsigned>(used);
  if (a.granularity == Granularity::middleX) {
    rows_backward<T, V, KV, RowBackward::middleX><<<grid, threads, 0, stream>>>(
        p, dout, nullptr, nullptr, nullptr, g, partial, per_block, stride);
    detail::finish_columns<T><<<static_cast<unsigned>(detail::ceil_div(stride, 256)), 256, 0, stream>>>(
        partial, used, stride, a.d, g.d_weight, g.d_bias);
  } else if (a.granularity == Granularity::middleY) {
    rows_backward<T, V, KV, RowBackward::middleY><<<grid, threads, 0, stream>>>(
        p, dout, nullptr, nullptr, nullptr, g, partial, per_block, stride);
    detail::finish_columns<T><<<static_cast<unsigned>(detail::ceil_div(stride, 256)), 256, 0, stream>>>(
        partial, used, stride, a.d, g.d_vector, nullptr);
  } else {
    char* rest = static_cast<char*>(ws) + aligned_bytes<A>(blocks * stride);
    A* se = reinterpret_cast<A*>(rest);
    A* scores = reinterpret_cast<A*>(rest + aligned_bytes<A>(a.rows));
    A* g_ex = reinterpret_cast<A*>(rest + 2 * aligned_bytes<A>(a.rows));
    A* dg_ex = g_ex + a.batch;
    small_row_sums<T, V, KV><<<row_blocks(a.rows, threads), threads, 0, stream>>>(p, dout, stat, se, scores);
    example_stats<T><<<static_cast<unsigned>(a.batch), 256, 0, stream>>>(scores, se, p.per_example, g_ex,
                                                                         dg_ex);
    rows_backward<T, V, KV, RowBackward::small><<<grid, threads, 0, stream>>>(
        p, dout, scores, g_ex, dg_ex, g, partial, per_block, stride);
    detail::finish_columns<T><<<static_cast<unsigned>(detail::ceil_div(stride, 256)), 256, 0, stream>>>(
        partial, used, stride, 2 * a.d, g.d_weight, g.d_bias);
  }
}

template <typename T>
cudaError_t backward_impl(const GatedResidualArgs& a, const void* dout_, const void* stat_,
                          const GatedResidualGrads& gr, void* ws, cudaStream_t stream) {
  constexpr int V = detail::kVec<T>;
  const Params<T> p = params_of<T>(a);
  const T* dout = static_cast<const T*>(dout_);
  const T* stat = static_cast<const T*>(stat_);
  const Grads<T> g{static_cast<T*>(gr.dx),       static_cast<T*>(gr.dh),       static_cast<T*>(gr.du),
                   static_cast<T*>(gr.d_logits), static_cast<T*>(gr.d_weight), static_cast<T*>(gr.d_bias),
                   static_cast<T*>(gr.d_vector)};
  if (a.granularity == Granularity::large) {
    const bool vec = all_aligned({a.h, a.u, a.gate_logits, a.dropout_mask, dout_, gr.dx, gr.dh, gr.du,
                                  gr.d_logits});
    const unsigned blocks = detail::flat_blocks(a.rows * a.d, vec ? V : 1, kFlatThreads);
    if (vec) {
      large_backward<T, V><<<blocks, kFlatThreads, 0, stream>>>(p, dout, g);
    } else {
      large_backward<T, 1><<<blocks, kFlatThreads, 0, stream>>>(p, dout, g);
    }
    return cudaGetLastError();
  }
  RowShape s;
  if (!row_shape<T>(a, {dout_, gr.dx, gr.dh, gr.du}, &s)) return cudaErrorNotSupported;
  if (s.vector) {
    backward_rows<T, V, kv_of<T>(true)>(a, p, s.threads, dout, stat, g, ws, stream);
  } else {
    backward_rows<T, 1, kv_of<T>(false)>(a, p, s.threads, dout, stat, g, ws, stream);
  }
  return cudaGetLastError();
}

template <typename T>
size_t backward_workspace_of(const GatedResidualArgs& a) {
  using A = acc_t<T>;
  if (a.granularity == Granularity::large) return 0;
  // The block count of the narrowest (32-thread) block bounds every launch shape's.
  const int64_t blocks = partial_blocks(a.rows, 32);
  size_t bytes = aligned_bytes<A>(blocks * partial_cols(a));
  if (a.granularity == Granularity::small) bytes += 2 * aligned_bytes<A>(a.rows) + aligned_bytes<A>(2 * a.batch);
  return bytes;
}

}  // namespace

int64_t gated_residual_max_d(DType dtype, int64_t d) {
  switch (dtype) {
    case DType::f32: return max_d_of<float>(d);
    case DType::f16: return max_d_of<__half>(d);
    case DType::bf16: return max_d_of<__nv_bfloat16>(d);
    case DType::f64: return max_d_of<double>(d);
  }
  return 0;
}

size_t gated_residual_forward_workspace(const GatedResidualArgs& a) {
  if (a.granularity != Granularity::small) return 0;  // small: float scores (rows), then g_ex (batch)
  const int64_t acc = a.dtype == DType::f64 ? sizeof(double) : sizeof(float);
  return static_cast<size_t>(detail::ceil_div(a.rows * acc, 16) * 16 + a.batch * acc);
}

cudaError_t gated_residual_forward(const GatedResidualArgs& a, void* out, void* stat, void* workspace,
                                   cudaStream_t stream) {
  if (a.rows == 0) return cudaSuccess;
  return dispatch(a.dtype, [&](auto tag) {
    return forward_impl<decltype(tag)>(a, out, stat, workspace, stream);
  });
}

size_t gated_residual_backward_workspace(const GatedResidualArgs& a) {
  switch (a.dtype) {
    case DType::f64: return backward_workspace_of<double>(a);
    default: return backward_workspace_of<float>(a);
  }
}

cudaError_t gated_residual_backward(const GatedResidualArgs& a, const void* dout, const void* stat,
                                    const GatedResidualGrads& g, void* workspace, cudaStream_t stream) {
  if (a.rows == 0) return cudaSuccess;
  return dispatch(a.dtype, [&](auto tag) {
    return backward_impl<decltype(tag)>(a, dout, stat, g, workspace, stream);
  });
}

}  // namespace cuda
}  // namespace petal
