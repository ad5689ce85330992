// DMA linear on the CPU for J projections sharing x: ATen GEMMs into preallocated outputs, with the
// element epilogues (petal/dma_linear.h) as fused row-parallel passes.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <vector>

#include "../aten/dma_backward.h"
#include "cpu_kernel_utils.h"
#include "ops.h"
#include "petal/dma_linear.h"

namespace petal_C::cpu {
namespace {

int64_t row_grain(int64_t width) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(width, 1)); }

// One projection's per-row-or-static R-wide scale: row m's scale starts at ptr + m * stride.
template <typename scalar_t>
struct Scale {
  const scalar_t* ptr;
  int64_t stride;  // 0 for a static (R,) scale, R for a per-row (M, R) one
  const scalar_t* row(int64_t m) const { return ptr + m * stride; }
};

template <typename scalar_t>
std::vector<Scale<scalar_t>> scale_views(at::TensorList scales, int64_t R) {
  std::vector<Scale<scalar_t>> out;
  for (const auto& s : scales) out.push_back({s.data_ptr<scalar_t>(), s.dim() == 1 ? 0 : R});
  return out;
}

// zs[j] = t * scales[j], all J in one pass over t.
template <typename scalar_t>
void scaled_t(const at::Tensor& t, at::TensorList scales, std::vector<at::Tensor>& zs) {
  using Vec = AccVec<scalar_t>;
  using io = Io<scalar_t>;
  const int64_t M = t.size(0), R = t.size(1);
  const scalar_t* tp = t.data_ptr<scalar_t>();
  const auto sv = scale_views<scalar_t>(scales, R);
  std::vector<scalar_t*> zp;  // nullptr: projection j needs no z
  for (auto& z : zs) zp.push_back(z.defined() ? z.data_ptr<scalar_t>() : nullptr);
  at::parallel_for(0, M, row_grain(R * static_cast<int64_t>(zs.size())), [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m)
      for_each_vec<Vec>(R, [&](int64_t i, int64_t n) {
        const Vec tv = io::load(tp + m * R + i, n);
        for (size_t j = 0; j < zp.size(); ++j)
          if (zp[j]) io::store(zp[j] + m * R + i, petal::dma_scaled(tv, io::load(sv[j].row(m) + i, n)), n);
      });
  });
}

// out[row_of[j] + n] = ups[j][n] * scales[j] for the projections with row_of[j] >= 0. Serial: N x R is small.
template <typename scalar_t>
void scaled_ups(at::TensorList ups, at::TensorList scales, const std::vector<int64_t>& row_of, at::Tensor& out) {
  using Vec = AccVec<scalar_t>;
  using io = Io<scalar_t>;
  const int64_t R = out.size(1);
  scalar_t* op = out.data_ptr<scalar_t>();
  for (size_t j = 0; j < ups.size(); ++j) {
    if (row_of[j] < 0) continue;
    const scalar_t* up = ups[j].data_ptr<scalar_t>();
    const scalar_t* sp = scales[j].data_ptr<scalar_t>();
    for (int64_t n = 0; n < ups[j].size(0); ++n)
      for_each_vec<Vec>(R, [&](int64_t i, int64_t cnt) {
        const Vec v = petal::dma_scaled(io::load(up + n * R + i, cnt), io::load(sp + i, cnt));
        io::store(op + (row_of[j] + n) * R + i, v, cnt);
      });
  }
}

// y = gamma * base + bias + y (y holds the up-projection on entry).
template <typename scalar_t>
void gamma_epilogue(const at::Tensor& base, const at::Tensor& gamma, const std::optional<at::Tensor>& bias,
                    at::Tensor& y) {
  using Vec = AccVec<scalar_t>;
  using io = Io<scalar_t>;
  const int64_t M = y.size(0), N = y.size(1);
  const scalar_t* bp_ = base.data_ptr<scalar_t>();
  const scalar_t* gp_ = gamma.data_ptr<scalar_t>();
  const scalar_t* biasp_ = bias.has_value() ? bias->data_ptr<scalar_t>() : nullptr;
  scalar_t* yp_ = y.data_ptr<scalar_t>();
  at::parallel_for(0, M, row_grain(N), [&](int64_t m0, int64_t m1) {
    // local copies: captured ones are reloaded after every (may-alias) vector store
    const scalar_t *const bp = bp_, *const gp = gp_, *const biasp = biasp_;
    scalar_t* const yp = yp_;
    for (int64_t m = m0; m < m1; ++m)
      for_each_vec<Vec>(N, [&](int64_t i, int64_t n) {
        const int64_t off = m * N + i;
        const Vec b = io::load(bp + off, n), g = io::load(gp + i, n), upd = io::load(yp + off, n);
        io::store(yp + off, biasp ? petal::dma_output(b, g, io::load(biasp + i, n), upd) : petal::dma_output(b, g, upd),
                  n);
      });
  });
}

// The R-wide backward pass over the projections with a per-row (M, R) scale, all at once:
//   dt (+)= Σ_j dz_j * scale_j;  d_scale_j = dz_j * t;  z_j = t * scale_j.
// Outputs that are undefined are skipped; dt is added to when dt_written. Projections with a static
// scale go through static_scale_grads and come here with neither dz_j nor z_j.
template <typename scalar_t>
void r_wide_backward(const at::Tensor& t, const std::vector<at::Tensor>& dzs, at::TensorList scales,
                     at::Tensor& dt, bool dt_written, std::vector<at::Tensor>& d_scales, std::vector<at::Tensor>& zs) {
  using acc = acc_t<scalar_t>;
  using Vec = AccVec<scalar_t>;
  using io = Io<scalar_t>;
  const int64_t M = t.size(0), R = t.size(1), J = static_cast<int64_t>(dzs.size());
  const scalar_t* tp = t.data_ptr<scalar_t>();
  const auto sv = scale_views<scalar_t>(scales, R);
  auto ptr = [](at::Tensor& x) { return x.defined() ? x.data_ptr<scalar_t>() : nullptr; };
  std::vector<const scalar_t*> dzp;
  std::vector<scalar_t*> dsp, zp;
  for (const auto& dz : dzs) dzp.push_back(dz.defined() ? dz.data_ptr<scalar_t>() : nullptr);
  for (int64_t j = 0; j < J; ++j) {
    dsp.push_back(ptr(d_scales[j]));
    zp.push_back(ptr(zs[j]));
  }
  scalar_t* dtp = ptr(dt);
  at::parallel_for(0, M, row_grain(R * J), [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m)
      for_each_vec<Vec>(R, [&](int64_t i, int64_t n) {
        const int64_t off = m * R + i;
        const Vec tv = io::load(tp + off, n);
        Vec dt_v = dt_written ? io::load(dtp + off, n) : Vec(acc(0));
        for (int64_t j = 0; j < J; ++j) {
          if (!zp[j] && !dzp[j]) continue;
          const Vec s = io::load(sv[j].row(m) + i, n);
          if (zp[j]) io::store(zp[j] + off, petal::dma_scaled(tv, s), n);
          if (!dzp[j]) continue;
          const Vec dz = io::load(dzp[j] + off, n);
          if (dtp) dt_v = petal::dma_dt_accumulate(dt_v, dz, s);
          if (dsp[j]) io::store(dsp[j] + off, petal::dma_scale_grad(dz, tv), n);
        }
        if (dtp) io::store(dtp + off, dt_v, n);
      });
  });
}

// d_gamma = Σ_rows dy * base, per-chunk partials combined in chunk order.
template <typename scalar_t>
void gamma_grad(const at::Tensor& dy, const at::Tensor& base, at::Tensor& d_gamma) {
  using red = red_t<scalar_t>;
  using Vec = AccVec<scalar_t>;
  using io = Io<scalar_t>;
  const int64_t M = dy.size(0), N = dy.size(1), Np = padded<scalar_t>(N);
  const scalar_t *dyp_ = dy.data_ptr<scalar_t>(), *bp_ = base.data_ptr<scalar_t>();
  const int64_t chunks = num_chunks(M);
  std::vector<red> partial(chunks * Np, red(0));
  for_each_chunk(M, chunks, [&](int64_t c, int64_t m0, int64_t m1) {
    const scalar_t *const dyp = dyp_, *const bp = bp_;  // local copies, as in gamma_epilogue
    red* const part = partial.data() + c * Np;
    for (int64_t m = m0; m < m1; ++m)
      for_each_vec<Vec>(N, [&](int64_t i, int64_t n) {
        const Vec term = petal::dma_gamma_grad(io::load(dyp + m * N + i, n), io::load(bp + m * N + i, n));
        Wide<scalar_t>(term).add_to(part + i);
      });
  });
  scalar_t* out = d_gamma.data_ptr<scalar_t>();
  at::parallel_for(0, N, combine_grain(chunks), [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      red sum = 0;
      for (int64_t c = 0; c < chunks; ++c) sum += partial[c * Np + i];
      out[i] = static_cast<scalar_t>(sum);
    }
  });
}

void check_forward(const at::Tensor& x, at::TensorList weights, const OptTensorList& biases, const at::Tensor& down,
                   at::TensorList ups, at::TensorList scales, const OptTensorList& gammas) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous(), "petal_C: x must be a contiguous (M, K) tensor, got ", x.sizes());
  const int64_t M = x.size(0), K = x.size(1);
  TORCH_CHECK(down.dim() == 2 && down.size(1) == K && down.is_contiguous(), "petal_C: down must be contiguous (R, ",
              K, "), got ", down.sizes());
  const int64_t R = down.size(0);
  const size_t J = weights.size();
  TORCH_CHECK(J > 0 && biases.size() == J && ups.size() == J && scales.size() == J && gammas.size() == J,
              "petal_C: weights, biases, ups, scales and gammas must all hold J > 0 entries");
  auto same = [&](const char* name, const at::Tensor& t) {
    TORCH_CHECK(t.scalar_type() == x.scalar_type() && t.device() == x.device() && t.is_contiguous(), "petal_C: ",
                name, " must be contiguous ", x.scalar_type(), " on ", x.device(), ", got ", t.scalar_type());
  };
  same("down", down);
  for (size_t j = 0; j < J; ++j) {
    same("weights[j]", weights[j]);
    TORCH_CHECK(weights[j].dim() == 2 && weights[j].size(1) == K, "petal_C: weights[", j, "] must be (N, ", K,
                "), got ", weights[j].sizes());
    const int64_t N = weights[j].size(0);
    same("ups[j]", ups[j]);
    TORCH_CHECK(ups[j].dim() == 2 && ups[j].size(0) == N && ups[j].size(1) == R, "petal_C: ups[", j, "] must be (",
                N, ", ", R, "), got ", ups[j].sizes());
    same("scales[j]", scales[j]);
    const bool static_scale = scales[j].dim() == 1 && scales[j].size(0) == R;
    const bool row_scale = scales[j].dim() == 2 && scales[j].size(0) == M && scales[j].size(1) == R;
    TORCH_CHECK(static_scale || row_scale, "petal_C: scales[", j, "] must be (", R, ") or (", M, ", ", R,
                "), got ", scales[j].sizes());
    for (const auto& [name, t] : {std::pair{"biases[j]", get(biases, j)}, std::pair{"gammas[j]", get(gammas, j)}}) {
      if (!t.has_value()) continue;
      same(name, *t);
      TORCH_CHECK(t->dim() == 1 && t->size(0) == N, "petal_C: ", name, " must be (", N, "), got ", t->sizes());
    }
  }
}

}  // namespace

std::tuple<std::vector<at::Tensor>, at::Tensor, std::vector<at::Tensor>> dma_linear_forward(
    const at::Tensor& x, at::TensorList weights, const OptTensorList& biases, const at::Tensor& down,
    at::TensorList ups, at::TensorList scales, const OptTensorList& gammas) {
  check_forward(x, weights, biases, down, ups, scales, gammas);
  const size_t J = weights.size();
  const int64_t M = x.size(0), K = x.size(1);
  at::Tensor t = at::mm(x, down.t());  // shared by the J projections, saved for the backward

  // Projections without gamma and with a static scale fold the rank-R update into a transient
  // W + (up * scale) down (2NKR flops instead of 2MNR plus a pass over y; never saved) when that is
  // the cheaper side (K <= M). All of them share one (ΣN, K) buffer, so one GEMM adds every ΔW and
  // y_j reads its contiguous row block. Not for bf16/fp16, whose rounding of W + ΔW would swamp a small ΔW.
  const bool wide_type = x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble;
  std::vector<int64_t> row_of(J, -1);  // row of projection j in the folded buffer, -1: not folded
  std::vector<at::Tensor> zs(J), folded_weights;
  int64_t folded_rows = 0;
  bool any_z = false;
  for (size_t j = 0; j < J; ++j) {
    if (wide_type && K <= M && !get(gammas, j).has_value() && scales[j].dim() == 1) {
      row_of[j] = folded_rows;
      folded_rows += weights[j].size(0);
      folded_weights.push_back(weights[j]);
    } else {
      zs[j] = at::empty_like(t);
      any_z = true;
    }
  }
  at::Tensor w_eff;
  if (!folded_weights.empty()) {
    w_eff = at::cat(folded_weights);
    at::Tensor u_scaled = at::empty({folded_rows, down.size(0)}, x.options());
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dma_linear_fold",
                               [&] { scaled_ups<scalar_t>(ups, scales, row_of, u_scaled); });
    w_eff.addmm_(u_scaled, down);
  }
  if (any_z)
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "dma_linear_forward",
                                    [&] { scaled_t<scalar_t>(t, scales, zs); });

  std::vector<at::Tensor> ys, bases;
  for (size_t j = 0; j < J; ++j) {
    const auto bias = get(biases, j);
    const auto gamma = get(gammas, j);
    if (row_of[j] >= 0) {
      const at::Tensor w_j = w_eff.narrow(0, row_of[j], weights[j].size(0)).t();
      ys.push_back(bias.has_value() ? at::addmm(*bias, x, w_j) : at::mm(x, w_j));
      bases.push_back(x.new_empty({0}));
    } else if (gamma.has_value()) {  // base is returned: d_gamma needs it
      at::Tensor base = at::mm(x, weights[j].t());
      at::Tensor y = at::mm(zs[j], ups[j].t());
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "dma_linear_gamma",
                                      [&] { gamma_epilogue<scalar_t>(base, *gamma, bias, y); });
      ys.push_back(y);
      bases.push_back(base);
    } else {
      at::Tensor y = bias.has_value() ? at::addmm(*bias, x, weights[j].t()) : at::mm(x, weights[j].t());
      y.addmm_(zs[j], ups[j].t());
      ys.push_back(y);
      bases.push_back(x.new_empty({0}));
    }
  }
  return {ys, t, bases};
}

std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>, std::vector<at::Tensor>>
dma_linear_backward(at::TensorList dys, const at::Tensor& x, at::TensorList weights, const at::Tensor& down,
                    at::TensorList ups, at::TensorList scales, const OptTensorList& gammas, const at::Tensor& t,
                    const OptTensorList& bases, std::array<bool, 5> needs) {
  const auto [need_x, need_down, need_up, need_scale, need_gamma] = needs;
  const size_t J = weights.size();
  OptTensorList no_bias;
  for (size_t j = 0; j < J; ++j) no_bias.push_back(std::nullopt);
  check_forward(x, weights, no_bias, down, ups, scales, gammas);
  const int64_t M = x.size(0), R = down.size(0);
  TORCH_CHECK(dys.size() == J && bases.size() == J, "petal_C: dys and bases must hold ", J, " entries");
  TORCH_CHECK(t.sizes() == at::IntArrayRef({M, R}) && t.is_contiguous() && t.scalar_type() == x.scalar_type(),
              "petal_C: t must be a contiguous (", M, ", ", R, ") tensor, got ", t.sizes());
  for (size_t j = 0; j < J; ++j) {
    TORCH_CHECK(dys[j].sizes() == at::IntArrayRef({M, weights[j].size(0)}) && dys[j].is_contiguous() &&
                    dys[j].scalar_type() == x.scalar_type(),
                "petal_C: dys[", j, "] must be contiguous (", M, ", ", weights[j].size(0), "), got ", dys[j].sizes());
    if (need_gamma && get(gammas, j).has_value()) {
      const auto base = get(bases, j);
      TORCH_CHECK(base.has_value() && base->sizes() == dys[j].sizes() && base->is_contiguous(), "petal_C: bases[",
                  j, "] must be the forward's (", M, ", ", weights[j].size(0), ") base when gammas[", j, "] is given");
    }
  }

  auto none = [&] { return x.new_empty({0}); };
  const bool need_dt = need_x || need_down;
  at::Tensor dt = need_dt ? at::empty_like(t) : at::Tensor();
  std::vector<at::Tensor> dzs(J), zs(J), d_scales(J), d_ups(J), d_gammas(J);
  bool dt_written = false, any_per_row = false;
  for (size_t j = 0; j < J; ++j) {
    if (scales[j].dim() == 1) {
      static_scale_grads(dys[j], ups[j], scales[j], t, dt, dt_written, need_up, need_scale, d_ups[j], d_scales[j]);
      dt_written = need_dt;
      continue;
    }
    any_per_row = true;
    if (need_dt || need_scale) dzs[j] = at::mm(dys[j], ups[j]);
    if (need_up) zs[j] = at::empty_like(t);
    if (need_scale) d_scales[j] = at::empty_like(scales[j]);
  }
  if (any_per_row && (need_dt || need_scale || need_up))
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "dma_linear_r_wide", [&] {
      r_wide_backward<scalar_t>(t, dzs, scales, dt, dt_written, d_scales, zs);
    });

  for (size_t j = 0; j < J; ++j) {
    if (!need_up) {
      d_ups[j] = none();
    } else if (zs[j].defined()) {  // per-row scale; a static one's d_up came from static_scale_grads
      d_ups[j] = at::mm(dys[j].t(), zs[j]);
    }
    const auto gamma = get(gammas, j);
    if (need_gamma && gamma.has_value()) {
      d_gammas[j] = at::empty_like(*gamma);
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "dma_linear_gamma_grad",
                                      [&] { gamma_grad<scalar_t>(dys[j], *get(bases, j), d_gammas[j]); });
    } else {
      d_gammas[j] = none();
    }
    if (!need_scale) d_scales[j] = none();
  }
  // (x^T dt)^T: MKL runs this layout ~20 % faster than dt^T x at Q-Former shapes (M >> K > R)
  at::Tensor d_down = need_down ? at::mm(x.t(), dt).t().contiguous() : none();

  at::Tensor dx = need_x ? accumulate_dx(dt, down, dys, weights, gammas) : none();
  return {dx, d_down, d_ups, d_scales, d_gammas};
}

}  // namespace petal_C::cpu

TORCH_LIBRARY_IMPL(petal_C, CPU, m) {  // schemas: csrc/library.cpp
  m.impl("dma_linear_forward", &petal_C::cpu::dma_linear_forward);
  m.impl("dma_linear_backward", &petal_C::cpu::dma_linear_backward);
}
