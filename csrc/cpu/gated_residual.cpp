// VL-PET gated residual on the CPU: one row-parallel, vectorised pass forward and one backward
// (two for "small", whose gate is a per-example mean). Element math: petal/gated_residual.h.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <type_traits>
#include <vector>

#include "../aten/gate.h"
#include "cpu_kernel_utils.h"
#include "ops.h"
#include "philox_fill.h"
#include "petal/gated_residual.h"

namespace petal_C::cpu {
namespace {

template <typename scalar_t>
const scalar_t* ptr_or_null(const std::optional<at::Tensor>& t) {
  return t.has_value() ? t->data_ptr<scalar_t>() : nullptr;
}

// gate_weight in red_t, one padded segment per d-slice (the storage behind Rows::w_wide).
template <typename scalar_t>
std::vector<red_t<scalar_t>> wide_weight(const std::optional<at::Tensor>& gate_weight, int64_t d) {
  std::vector<red_t<scalar_t>> out;
  if (!gate_weight.has_value()) return out;
  const scalar_t* w = gate_weight->data_ptr<scalar_t>();
  const int64_t dp = padded<scalar_t>(d), segments = gate_weight->numel() / std::max<int64_t>(d, 1);
  out.assign(segments * dp, red_t<scalar_t>(0));
  for (int64_t s = 0; s < segments; ++s)
    for (int64_t i = 0; i < d; ++i) out[s * dp + i] = static_cast<red_t<scalar_t>>(w[s * d + i]);
  return out;
}

// Raw views of one call's canonical (M, d) tensors plus the gate's parameters. Trivially copyable on
// purpose: every parallel body works on its own copy. Vectorized stores may alias anything, so fields
// read through a shared object are reloaded after each store; a local copy's stay in registers.
template <typename scalar_t>
struct Rows {
  using acc = acc_t<scalar_t>;
  using red = red_t<scalar_t>;
  using Vec = AccVec<scalar_t>;
  using RVec = at::vec::Vectorized<red>;
  using io = Io<scalar_t>;

  int64_t M, d, dp;  // dp: d padded to whole vectors (layout of the red_t scratch rows)
  const scalar_t *x, *h, *u, *logits, *weight, *vector, *mask;
  Dropout drop;        // in-kernel dropout (when there is no caller mask)
  scalar_t keep_value;  // 1 / (1 - p) in scalar_t, as a caller's mask would hold it
  red bias;
  const red* w_wide;  // wide_weight(gate_weight, d), or null
  Vec a_s, g_s;

  Rows(const at::Tensor& x_, const at::Tensor& h_, const at::Tensor& u_, double adapter_scale,
       double gate_scale, const std::optional<at::Tensor>& gate_logits,
       const std::optional<at::Tensor>& gate_weight, const std::optional<at::Tensor>& gate_bias,
       const std::optional<at::Tensor>& gate_vector, const std::optional<at::Tensor>& dropout_mask,
       const Dropout& dropout, const std::vector<red>& w_wide_)
      : M(x_.size(0)),
        d(x_.size(1)),
        dp(padded<scalar_t>(x_.size(1))),
        x(x_.data_ptr<scalar_t>()),
        h(h_.data_ptr<scalar_t>()),
        u(u_.data_ptr<scalar_t>()),
        logits(ptr_or_null<scalar_t>(gate_logits)),
        weight(ptr_or_null<scalar_t>(gate_weight)),
        vector(ptr_or_null<scalar_t>(gate_vector)),
        mask(ptr_or_null<scalar_t>(dropout_mask)),
        drop(dropout),
        keep_value(static_cast<scalar_t>(dropout.keep)),
        bias(gate_bias.has_value() ? static_cast<red>(gate_bias->data_ptr<scalar_t>()[0]) : red(0)),
        w_wide(w_wide_.empty() ? nullptr : w_wide_.data()),
        a_s(static_cast<acc>(adapter_scale)),
        g_s(static_cast<acc>(gate_scale)) {}

  // Row m of the dropout mask: the caller's, the Philox stream's (written into a per-thread row), or null.
  const scalar_t* mask_row(int64_t m) const {
    if (mask) return mask + m * d;
    if (!drop.on) return nullptr;
    thread_local std::vector<scalar_t> row;
    row.resize(d);
    drop.fill(m * d, d, keep_value, row.data());
    return row.data();
  }

  Vec h2(int64_t off, int64_t n) const {
    return petal::adapter_sum(io::load(h + off, n), io::load(u + off, n), a_s);
  }

  // Pre-sigmoid score of row m (middleX or small), accumulated in red_t; lanes past d load as 0.
  red score(Gate gate, int64_t m) const {
    RVec sum(red(0));
    const int64_t row = m * d;
    for_each_vec<Vec>(d, [&](int64_t i, int64_t n) {
      const Vec xv = io::load(x + row + i, n);
      const Vec hv = h2(row + i, n);
      const Wide<scalar_t> xw(xv), hw(hv);
      for (int64_t k = 0; k < Wide<scalar_t>::kParts; ++k) {
        const red* w = w_wide + i + k * RVec::size();
        sum = sum + (gate == Gate::middleX
                         ? petal::middle_x_score_term(xw.part[k], hw.part[k], RVec::loadu(w))
                         : petal::small_score_term(xw.part[k], hw.part[k], RVec::loadu(w), RVec::loadu(w + dp)));
      }
    });
    return hsum(sum) + bias;
  }

  // out[m] = x + g_s * (G * h2) * mask, G from gate_of(offset, index in row, n).
  template <typename GateOf>
  void write_out(scalar_t* out, int64_t m, const GateOf& gate_of) const {
    const int64_t row = m * d;
    const scalar_t* mk = mask_row(m);
    for_each_vec<Vec>(d, [&](int64_t i, int64_t n) {
      const Vec xv = io::load(x + row + i, n);
      const Vec hv = h2(row + i, n);
      const Vec g = gate_of(row + i, i, n);
      const Vec o = mk ? petal::gated_out(xv, hv, g, g_s, io::load(mk + i, n)) : petal::gated_out(xv, hv, g, g_s);
      io::store(out + row + i, o, n);
    });
  }

  // e at dout + off; mk: the mask at the same element (a row's mask_row + column) or null.
  Vec upstream(const scalar_t* dout, int64_t off, int64_t n, const scalar_t* mk) const {
    const Vec dv = io::load(dout + off, n);
    return mk ? petal::upstream(dv, g_s, io::load(mk, n)) : petal::upstream(dv, g_s);
  }

  // Σ_row e * h2 of row m in red_t: dL/dG for a row gate; mk: the row's mask_row(m).
  red gate_grad_sum(const scalar_t* dout, int64_t m, const scalar_t* mk) const {
    RVec sum(red(0));
    const int64_t row = m * d;
    for_each_vec<Vec>(d, [&](int64_t i, int64_t n) {
      const Vec e = upstream(dout, row + i, n, mk ? mk + i : nullptr);
      sum = sum + Wide<scalar_t>(petal::gate_score_term(e, h2(row + i, n))).sum();
    });
    return hsum(sum);
  }
};

// middleY backward: rows whose d_vector terms are summed in acc_t before the sum is widened into the
// chunk's red_t partials (one widening per block instead of per row).
constexpr int64_t kBlockRows = 8;

int64_t row_grain(int64_t d) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(d, 1)); }

// Each parallel body below starts from its own copies of rows and the output pointers (see Rows).
template <typename scalar_t>
void forward_kernel(const Rows<scalar_t>& rows, Gate gate, int64_t batch, scalar_t* out_, scalar_t* stat_) {
  static_assert(std::is_trivially_copyable_v<Rows<scalar_t>>);
  using acc = acc_t<scalar_t>;
  using red = red_t<scalar_t>;
  using Vec = AccVec<scalar_t>;
  using io = Io<scalar_t>;
  const int64_t M = rows.M;
  switch (gate) {
    case Gate::large:
      at::parallel_for(0, M, row_grain(rows.d), [&](int64_t m0, int64_t m1) {
        const Rows<scalar_t> r = rows;
        scalar_t* const out = out_;
        for (int64_t m = m0; m < m1; ++m)
          r.write_out(out, m, [&](int64_t off, int64_t, int64_t n) {
            return petal::gate_large(io::load(r.logits + off, n));
          });
      });
      break;
    case Gate::middleY:
      at::parallel_for(0, M, row_grain(rows.d), [&](int64_t m0, int64_t m1) {
        const Rows<scalar_t> r = rows;
        scalar_t* const out = out_;
        for (int64_t m = m0; m < m1; ++m)
          r.write_out(out, m, [&](int64_t, int64_t i, int64_t n) {
            return petal::gate_middle_y(io::load(r.vector + i, n));
          });
      });
      break;
    case Gate::middleX:
      at::parallel_for(0, M, row_grain(rows.d), [&](int64_t m0, int64_t m1) {
        const Rows<scalar_t> r = rows;
        scalar_t *const out = out_, *const stat = stat_;
        for (int64_t m = m0; m < m1; ++m) {
          const red score = r.score(gate, m);
          stat[m] = static_cast<scalar_t>(score);
          const Vec g(static_cast<acc>(petal::sigmoid(score)));
          r.write_out(out, m, [&](int64_t, int64_t, int64_t) { return g; });
        }
      });
      break;
    case Gate::small: {
      const int64_t T = M / batch;
      std::vector<red> score(M);
      at::parallel_for(0, M, row_grain(rows.d), [&](int64_t m0, int64_t m1) {
        const Rows<scalar_t> r = rows;
        for (int64_t m = m0; m < m1; ++m) {
          score[m] = r.score(gate, m);
          stat_[m] = static_cast<scalar_t>(score[m]);
        }
      });
      std::vector<acc> g_ex(batch);
      for (int64_t b = 0; b < batch; ++b) {
        red sum = 0;
        for (int64_t m = b * T; m < (b + 1) * T; ++m) sum += petal::sigmoid(score[m]);
        g_ex[b] = static_cast<acc>(sum / static_cast<red>(T));
      }
      at::parallel_for(0, M, row_grain(rows.d), [&](int64_t m0, int64_t m1) {
        const Rows<scalar_t> r = rows;
        scalar_t* const out = out_;
        for (int64_t m = m0; m < m1; ++m) {
          const Vec g(g_ex[m / T]);
          r.write_out(out, m, [&](int64_t, int64_t, int64_t) { return g; });
        }
      });
      break;
    }
  }
}

// Per-chunk red_t partial sums of `segments` d-wide gradients (rows padded to dp), combined in chunk
// order into dst (scalar_t, segments * d).
template <typename scalar_t>
struct Partials {
  using red = red_t<scalar_t>;
  int64_t chunks, segments, d, dp;
  std::vector<red> data;

  Partials(int64_t chunks_, int64_t segments_, int64_t d_)
      : chunks(chunks_), segments(segments_), d(d_), dp(padded<scalar_t>(d_)),
        data(chunks_ * segments_ * dp, red(0)) {}
  red* chunk(int64_t c, int64_t segment = 0) { return data.data() + (c * segments + segment) * dp; }

  // Column sums in chunk order, a row of partials at a time (contiguous, vectorised; the same sums as
  // adding each column's partials one by one).
  void combine(scalar_t* dst) const {
    const int64_t width = segments * dp;
    at::parallel_for(0, width, combine_grain(chunks), [&](int64_t k0, int64_t k1) {
      std::vector<red> sum(data.begin() + k0, data.begin() + k1);
      for (int64_t c = 1; c < chunks; ++c) {
        const red* row = data.data() + c * width;
        for (int64_t k = k0; k < k1; ++k) sum[k - k0] += row[k];
      }
      for (int64_t k = k0; k < k1; ++k) {
        if (k % dp < d) dst[k / dp * d + k % dp] = static_cast<scalar_t>(sum[k - k0]);
      }
    });
  }
};

template <typename scalar_t>
struct Grads {
  scalar_t *dx, *dh, *du, *d_logits, *d_weight, *d_bias, *d_vector;

  // dh = dh2, du = a_s * dh2.
  void store_h(int64_t off, const AccVec<scalar_t>& dh2, int64_t n, const AccVec<scalar_t>& a_s) const {
    Io<scalar_t>::store(dh + off, dh2, n);
    if (du) Io<scalar_t>::store(du + off, petal::adapter_u_grad(dh2, a_s), n);
  }
};

// As in forward_kernel, each parallel body works on its own copies of rows, grads and the pointers.
template <typename scalar_t>
void backward_kernel(const Rows<scalar_t>& rows, Gate gate, int64_t batch, const scalar_t* dout_,
                     const scalar_t* stat_, const Grads<scalar_t>& grads) {
  using acc = acc_t<scalar_t>;
  using red = red_t<scalar_t>;
  using Vec = AccVec<scalar_t>;
  using RVec = at::vec::Vectorized<red>;
  using io = Io<scalar_t>;
  const int64_t M = rows.M, d = rows.d;

  if (gate == Gate::large) {
    at::parallel_for(0, M, row_grain(d), [&](int64_t m0, int64_t m1) {
      const Rows<scalar_t> r = rows;
      const Grads<scalar_t> g = grads;
      const scalar_t* const dout = dout_;
      // without dropout the chunk's rows are one flat run; with it, row by row (the mask is per row)
      const bool flat = !r.mask && !r.drop.on;
      for (int64_t m = m0; m < (flat ? m0 + 1 : m1); ++m) {
        const scalar_t* mk = flat ? nullptr : r.mask_row(m);
        for_each_vec<Vec>((flat ? m1 - m0 : 1) * d, [&](int64_t i, int64_t n) {
          const int64_t off = m * d + i;
          const Vec hv = r.h2(off, n);
          const Vec G = petal::gate_large(io::load(r.logits + off, n));
          const Vec e = r.upstream(dout, off, n, mk ? mk + i : nullptr);
          g.store_h(off, petal::gate_h2_grad(e, G), n, r.a_s);
          io::store(g.d_logits + off, petal::large_logit_grad(e, hv, G), n);
          if (g.dx) io::store(g.dx + off, io::load(dout + off, n), n);
        });
      }
    });
    return;
  }

  const int64_t chunks = num_chunks(M);
  if (gate == Gate::middleY) {
    Partials<scalar_t> dvec(chunks, 1, d);
    for_each_chunk(M, chunks, [&](int64_t c, int64_t m0, int64_t m1) {
      const Rows<scalar_t> r = rows;
      const Grads<scalar_t> g = grads;
      const scalar_t* const dout = dout_;
      red* const part = dvec.chunk(c);
      thread_local std::vector<acc> block_sum;
      block_sum.resize(r.dp);
      acc* const bs = block_sum.data();
      for (int64_t b0 = m0; b0 < m1; b0 += kBlockRows) {
        const int64_t b1 = std::min(m1, b0 + kBlockRows);
        for (int64_t m = b0; m < b1; ++m) {
          const scalar_t* mk = r.mask_row(m);
          for_each_vec<Vec>(d, [&](int64_t i, int64_t n) {
            const int64_t off = m * d + i;
            const Vec e = r.upstream(dout, off, n, mk ? mk + i : nullptr);
            g.store_h(off, petal::gate_h2_grad(e, petal::gate_middle_y(io::load(r.vector + i, n))), n, r.a_s);
            const Vec term = petal::gate_score_term(e, r.h2(off, n));
            (m == b0 ? term : Vec::loadu(bs + i) + term).store(bs + i);
            if (g.dx) io::store(g.dx + off, io::load(dout + off, n), n);
          });
        }
        for_each_vec<Vec>(d, [&](int64_t i, int64_t) { Wide<scalar_t>(Vec::loadu(bs + i)).add_to(part + i); });
      }
    });
    dvec.combine(grads.d_vector);
    return;
  }

  // Row gates: ds[m] = dL/d score[m] and G[m], the row's gate value. A bf16/fp16 stat is too coarse
  // for the sigmoid's slope (one ulp of a score near 10 is 0.06): those rows recompute the score.
  auto score_of = [&](const Rows<scalar_t>& r, int64_t m) {
    return io::kReduced ? r.score(gate, m) : static_cast<red>(stat_[m]);
  };
  // middleX: a row's ds needs only that row, so the sweep below finds it while the row is in cache;
  // small: ds needs the whole example's gate, found in a sweep of its own first.
  const bool small = gate == Gate::small;
  std::vector<red> ds(small ? M : 0), sg(small ? M : 0);
  std::vector<acc> G(small ? M : 0);
  if (small) {
    const int64_t T = M / batch;
    at::parallel_for(0, M, row_grain(d), [&](int64_t m0, int64_t m1) {
      const Rows<scalar_t> r = rows;
      for (int64_t m = m0; m < m1; ++m) {
        ds[m] = r.gate_grad_sum(dout_, m, r.mask_row(m));
        sg[m] = petal::sigmoid(score_of(r, m));
      }
    });
    for (int64_t b = 0; b < batch; ++b) {
      red d_gate = 0, gate_sum = 0;
      for (int64_t m = b * T; m < (b + 1) * T; ++m) {
        d_gate += ds[m];
        gate_sum += sg[m];
      }
      d_gate /= static_cast<red>(T);
      const acc g_ex = static_cast<acc>(gate_sum / static_cast<red>(T));
      for (int64_t m = b * T; m < (b + 1) * T; ++m) {
        G[m] = g_ex;
        ds[m] = petal::row_score_grad(d_gate, sg[m]);
      }
    }
  }

  Partials<scalar_t> dw(chunks, small ? 2 : 1, d), db(chunks, 1, 1);
  for_each_chunk(M, chunks, [&](int64_t c, int64_t m0, int64_t m1) {
    const Rows<scalar_t> r = rows;
    const Grads<scalar_t> g = grads;
    const scalar_t* const dout = dout_;
    const scalar_t* const w_h = small ? r.weight + d : r.weight;
    red* const part_x = dw.chunk(c, 0);
    red* const part_h = dw.chunk(c, small ? 1 : 0);
    red bias_sum = 0;
    for (int64_t m = m0; m < m1; ++m) {
      const scalar_t* mk = r.mask_row(m);
      red ds_m;
      acc G_m;
      if (small) {
        ds_m = ds[m];
        G_m = G[m];
      } else {
        const red sg_m = petal::sigmoid(score_of(r, m));
        G_m = static_cast<acc>(sg_m);
        ds_m = petal::row_score_grad(r.gate_grad_sum(dout, m, mk), sg_m);
      }
      bias_sum += ds_m;
      const RVec ds_wide(ds_m);
      const Vec dsv(static_cast<acc>(ds_m)), Gv(G_m);
      for_each_vec<Vec>(d, [&](int64_t i, int64_t n) {
        const int64_t off = m * d + i;
        const Vec xv = io::load(r.x + off, n);
        const Vec hv = r.h2(off, n);
        const Vec e = r.upstream(dout, off, n, mk ? mk + i : nullptr);
        g.store_h(off, petal::gate_h2_grad(e, Gv, dsv, io::load(w_h + i, n)), n, r.a_s);
        io::store(g.dx + off, petal::row_gate_x_grad(io::load(dout + off, n), dsv, io::load(r.weight + i, n)), n);
        auto weight_grad = [&](const RVec& v) { return petal::row_weight_grad(ds_wide, v); };
        if (small) {
          Wide<scalar_t>(xv).add_to(part_x + i, weight_grad);
          Wide<scalar_t>(hv).add_to(part_h + i, weight_grad);
        } else {
          Wide<scalar_t>(xv + hv).add_to(part_x + i, weight_grad);
        }
      });
    }
    db.chunk(c)[0] = bias_sum;
  });
  dw.combine(grads.d_weight);
  db.combine(grads.d_bias);
}

void check_rows(const char* name, const at::Tensor& t, const at::Tensor& x) {
  TORCH_CHECK(t.dim() == 2 && t.sizes() == x.sizes() && t.is_contiguous() && t.scalar_type() == x.scalar_type(),
              "petal_C: ", name, " must be a contiguous ", x.sizes(), " ", x.scalar_type(), " tensor, got ",
              t.sizes(), " ", t.scalar_type());
}

void check_call(Gate gate, const at::Tensor& x, const at::Tensor& h, const at::Tensor& u,
                const std::optional<at::Tensor>& gate_logits, const std::optional<at::Tensor>& gate_weight,
                const std::optional<at::Tensor>& gate_bias, const std::optional<at::Tensor>& gate_vector,
                const std::optional<at::Tensor>& dropout_mask, int64_t batch) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous(), "petal_C: x must be a contiguous (M, d) tensor, got ", x.sizes());
  check_rows("h", h, x);
  check_rows("u", u, x);
  if (dropout_mask.has_value()) check_rows("dropout_mask", *dropout_mask, x);
  const int64_t d = x.size(1);
  auto vec = [&](const char* name, const std::optional<at::Tensor>& t, int64_t n) {
    TORCH_CHECK(t.has_value() && t->is_contiguous() && t->numel() == n && t->scalar_type() == x.scalar_type(),
                "petal_C: granularity needs ", name, " with ", n, " elements of ", x.scalar_type());
  };
  switch (gate) {
    case Gate::large:
      TORCH_CHECK(gate_logits.has_value(), "petal_C: granularity 'large' needs gate_logits");
      check_rows("gate_logits", *gate_logits, x);
      break;
    case Gate::middleY:
      vec("gate_vector", gate_vector, d);
      break;
    case Gate::middleX:
    case Gate::small:
      vec("gate_weight", gate_weight, gate == Gate::small ? 2 * d : d);
      vec("gate_bias", gate_bias, 1);
      break;
  }
  if (gate == Gate::small)
    TORCH_CHECK(batch > 0 && x.size(0) % batch == 0, "petal_C: 'small' needs batch dividing the ", x.size(0),
                " rows, got ", batch);
}

Dropout checked_dropout(const std::optional<at::Tensor>& dropout_mask, double p, int64_t seed) {
  TORCH_CHECK(p >= 0.0 && p < 1.0, "petal_C: dropout_p must be in [0, 1), got ", p);
  TORCH_CHECK(p == 0.0 || !dropout_mask.has_value(), "petal_C: dropout_mask and dropout_p > 0 are exclusive");
  return Dropout(p, seed);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> gated_residual_forward(
    const at::Tensor& x, const at::Tensor& h, const at::Tensor& u, std::string_view granularity,
    double adapter_scale, double gate_scale, const std::optional<at::Tensor>& gate_logits,
    const std::optional<at::Tensor>& gate_weight, const std::optional<at::Tensor>& gate_bias,
    const std::optional<at::Tensor>& gate_vector, const std::optional<at::Tensor>& dropout_mask,
    double dropout_p, int64_t dropout_seed, int64_t batch) {
  const Gate gate = parse_gate(granularity);
  check_call(gate, x, h, u, gate_logits, gate_weight, gate_bias, gate_vector, dropout_mask, batch);
  const Dropout dropout = checked_dropout(dropout_mask, dropout_p, dropout_seed);
  at::Tensor out = at::empty_like(x);
  const bool row_gate = gate == Gate::middleX || gate == Gate::small;
  at::Tensor stat = x.new_empty({row_gate ? x.size(0) : 0});
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "gated_residual_forward", [&] {
    const auto w_wide = wide_weight<scalar_t>(gate_weight, x.size(1));
    const Rows<scalar_t> rows(x, h, u, adapter_scale, gate_scale, gate_logits, gate_weight, gate_bias,
                              gate_vector, dropout_mask, dropout, w_wide);
    forward_kernel<scalar_t>(rows, gate, batch, out.data_ptr<scalar_t>(),
                             row_gate ? stat.data_ptr<scalar_t>() : nullptr);
  });
  return {out, stat};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
gated_residual_backward(const at::Tensor& dout, const at::Tensor& x, const at::Tensor& h, const at::Tensor& u,
                        std::string_view granularity, double adapter_scale, double gate_scale,
                        const std::optional<at::Tensor>& gate_logits,
                        const std::optional<at::Tensor>& gate_weight,
                        const std::optional<at::Tensor>& gate_bias,
                        const std::optional<at::Tensor>& gate_vector,
                        const std::optional<at::Tensor>& dropout_mask, double dropout_p, int64_t dropout_seed,
                        int64_t batch, const at::Tensor& stat) {
  const Gate gate = parse_gate(granularity);
  check_call(gate, x, h, u, gate_logits, gate_weight, gate_bias, gate_vector, dropout_mask, batch);
  const Dropout dropout = checked_dropout(dropout_mask, dropout_p, dropout_seed);
  check_rows("dout", dout, x);
  const bool row_gate = gate == Gate::middleX || gate == Gate::small;
  if (row_gate)
    TORCH_CHECK(stat.is_contiguous() && stat.numel() == x.size(0) && stat.scalar_type() == x.scalar_type(),
                "petal_C: stat must hold one ", x.scalar_type(), " score per row (", x.size(0), "), got ",
                stat.sizes());
  // dx = dout (large, middleY) and du = dh (adapter_scale 1) are not written: the autograd formula
  // returns dout / dh themselves, which a custom op's outputs may not alias.
  at::Tensor dx = row_gate ? at::empty_like(x) : x.new_empty({0});
  at::Tensor dh = at::empty_like(x);
  at::Tensor du = adapter_scale == 1.0 ? x.new_empty({0}) : at::empty_like(x);
  auto grad_like = [&](const std::optional<at::Tensor>& t, bool used) {
    return used ? at::empty_like(*t) : x.new_empty({0});
  };
  at::Tensor d_logits = grad_like(gate_logits, gate == Gate::large);
  at::Tensor d_weight = grad_like(gate_weight, row_gate);
  at::Tensor d_bias = grad_like(gate_bias, row_gate);
  at::Tensor d_vector = grad_like(gate_vector, gate == Gate::middleY);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "gated_residual_backward", [&] {
    const auto w_wide = wide_weight<scalar_t>(gate_weight, x.size(1));
    const Rows<scalar_t> rows(x, h, u, adapter_scale, gate_scale, gate_logits, gate_weight, gate_bias,
                              gate_vector, dropout_mask, dropout, w_wide);
    auto p = [](at::Tensor& t) { return t.numel() ? t.data_ptr<scalar_t>() : nullptr; };
    const Grads<scalar_t> grads{p(dx), p(dh), p(du), p(d_logits), p(d_weight), p(d_bias), p(d_vector)};
    backward_kernel<scalar_t>(rows, gate, batch, dout.data_ptr<scalar_t>(),
                              row_gate ? stat.data_ptr<scalar_t>() : nullptr, grads);
  });
  return {dx, dh, du, d_logits, d_weight, d_bias, d_vector};
}

}  // namespace petal_C::cpu

TORCH_LIBRARY_IMPL(petal_C, CPU, m) {  // schemas: csrc/library.cpp
  m.impl("gated_residual_forward", &petal_C::cpu::gated_residual_forward);
  m.impl("gated_residual_backward", &petal_C::cpu::gated_residual_backward);
}
