// CUDA kernels of the petal_C operators (schemas: csrc/library.cpp). Built only in a CUDA build.
// GEMMs are ATen calls on CUDA tensors (cuBLAS); the element-wise passes are the launchers of
// csrc/cuda/*.cu, run on the current stream. Semantics: petal_kernels/reference.py.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <array>
#include <optional>
#include <string_view>
#include <tuple>
#include <vector>

#include "../aten/dma_backward.h"
#include "launchers.h"
#include "petal/philox.h"

namespace petal_C::cuda {
namespace {

namespace pc = petal::cuda;
using OptTensor = std::optional<at::Tensor>;

cudaStream_t stream() { return c10::cuda::getCurrentCUDAStream(); }

pc::DType dtype_of(const at::Tensor& x) {
  switch (x.scalar_type()) {
    case at::kFloat: return pc::DType::f32;
    case at::kHalf: return pc::DType::f16;
    case at::kBFloat16: return pc::DType::bf16;
    case at::kDouble: return pc::DType::f64;
    default: TORCH_CHECK_TYPE(false, "petal_C (CUDA): unsupported dtype ", x.scalar_type());
  }
}

void check_launch(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, "petal_C (CUDA): ", what, " failed: ", cudaGetErrorString(err));
}

at::Tensor workspace(size_t bytes, const at::Tensor& like) {
  return at::empty({static_cast<int64_t>(bytes)}, like.options().dtype(at::kByte));
}

const void* ptr(const OptTensor& t) { return t.has_value() && t->defined() ? t->data_ptr() : nullptr; }

void* ptr_or_null(at::Tensor& t) { return t.defined() && t.numel() ? t.data_ptr() : nullptr; }

// Every tensor the kernels read: contiguous, x's dtype, on x's device.
void check_same(const char* name, const at::Tensor& t, const at::Tensor& x) {
  TORCH_CHECK(t.is_contiguous() && t.scalar_type() == x.scalar_type() && t.device() == x.device(), "petal_C (CUDA): ",
              name, " must be a contiguous ", x.scalar_type(), " tensor on ", x.device(), ", got ", t.scalar_type(),
              " on ", t.device());
}

// ---------------------------------------------------------------------------- gated_residual

pc::Granularity parse_granularity(std::string_view name) {
  if (name == "large") return pc::Granularity::large;
  if (name == "middleX") return pc::Granularity::middleX;
  if (name == "middleY") return pc::Granularity::middleY;
  if (name == "small") return pc::Granularity::small;
  TORCH_CHECK_VALUE(false, "granularity must be one of large, middleX, middleY, small; got ", name);
}

pc::GatedResidualArgs gated_args(const at::Tensor& x, const at::Tensor& h, const at::Tensor& u,
                                 std::string_view granularity, double adapter_scale, double gate_scale,
                                 const OptTensor& gate_logits, const OptTensor& gate_weight,
                                 const OptTensor& gate_bias, const OptTensor& gate_vector,
                                 const OptTensor& dropout_mask, double dropout_p, int64_t dropout_seed,
                                 int64_t batch) {
  const pc::Granularity g = parse_granularity(granularity);
  TORCH_CHECK(dropout_p >= 0.0 && dropout_p < 1.0, "petal_C (CUDA): dropout_p must be in [0, 1), got ", dropout_p);
  TORCH_CHECK(dropout_p == 0.0 || !dropout_mask.has_value(),
              "petal_C (CUDA): dropout_mask and dropout_p > 0 are exclusive");
  TORCH_CHECK(x.is_cuda() && x.dim() == 2, "petal_C (CUDA): x must be a (M, d) CUDA tensor, got ", x.sizes());
  check_same("x", x, x);
  const int64_t d = x.size(1);
  for (const auto& [name, t] : {std::pair{"h", OptTensor(h)}, std::pair{"u", OptTensor(u)},
                                std::pair{"dropout_mask", dropout_mask}, std::pair{"gate_logits", gate_logits}}) {
    if (!t.has_value()) continue;
    check_same(name, *t, x);
    TORCH_CHECK(t->sizes() == x.sizes(), "petal_C (CUDA): ", name, " must have shape ", x.sizes(), ", got ",
                t->sizes());
  }
  auto need = [&](const char* name, const OptTensor& t, int64_t n) {
    TORCH_CHECK(t.has_value() && t->numel() == n, "petal_C (CUDA): granularity '", granularity, "' needs ", name,
                " with ", n, " elements");
    check_same(name, *t, x);
  };
  switch (g) {
    case pc::Granularity::large: need("gate_logits", gate_logits, x.numel()); break;
    case pc::Granularity::middleY: need("gate_vector", gate_vector, d); break;
    default:
      need("gate_weight", gate_weight, g == pc::Granularity::small ? 2 * d : d);
      need("gate_bias", gate_bias, 1);
  }
  if (g == pc::Granularity::small) {
    TORCH_CHECK(batch > 0 && x.size(0) % batch == 0, "petal_C (CUDA): 'small' needs batch dividing the ", x.size(0),
                " rows, got ", batch);
  }
  pc::GatedResidualArgs a{dtype_of(x),      g,           x.size(0),          d,
                          batch,            adapter_scale, gate_scale,        x.data_ptr(),
                          h.data_ptr(),     u.data_ptr(),  ptr(gate_logits),  ptr(gate_weight),
                          ptr(gate_bias),   ptr(gate_vector), ptr(dropout_mask)};
  if (dropout_p > 0.0) {
    a.dropout = true;
    a.dropout_seed = static_cast<uint64_t>(dropout_seed);
    a.dropout_threshold = petal::dropout_threshold(dropout_p);
    // 1 / (1 - p) as a mask of x's dtype would hold it
    a.dropout_keep = at::scalar_tensor(1.0 / (1.0 - dropout_p), at::TensorOptions().dtype(x.scalar_type()))
                         .item<double>();
  }
  return a;
}

void check_gated(cudaError_t err, const pc::GatedResidualArgs& a, std::string_view granularity,
                 const char* what) {
  TORCH_CHECK(err != cudaErrorNotSupported, "petal_C (CUDA): gated_residual '", granularity, "' holds a row in registers and supports d <= ", pc::gated_residual_max_d(a.dtype, a.d),
              " for this dtype and layout, got d = ", a.d,
              "; use PETAL_BACKEND=triton or PETAL_BACKEND=reference for wider rows");
  check_launch(err, what);
}

bool row_gate(const pc::GatedResidualArgs& a) {
  return a.granularity == pc::Granularity::middleX || a.granularity == pc::Granularity::small;
}

std::tuple<at::Tensor, at::Tensor> gated_residual_forward(
    const at::Tensor& x, const at::Tensor& h, const at::Tensor& u, std::string_view granularity,
    double adapter_scale, double gate_scale, const OptTensor& gate_logits, const OptTensor& gate_weight,
    const OptTensor& gate_bias, const OptTensor& gate_vector, const OptTensor& dropout_mask, double dropout_p,
    int64_t dropout_seed, int64_t batch) {
  const c10::cuda::CUDAGuard guard(x.device());
  const auto a = gated_args(x, h, u, granularity, adapter_scale, gate_scale, gate_logits, gate_weight, gate_bias,
                            gate_vector, dropout_mask, dropout_p, dropout_seed, batch);
  at::Tensor out = at::empty_like(x);
  at::Tensor stat = x.new_empty({row_gate(a) ? x.size(0) : 0});
  at::Tensor ws = workspace(pc::gated_residual_forward_workspace(a), x);
  check_gated(pc::gated_residual_forward(a, out.data_ptr(), ptr_or_null(stat), ptr_or_null(ws), stream()), a,
              granularity, "gated_residual_forward");
  return {out, stat};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
gated_residual_backward(const at::Tensor& dout, const at::Tensor& x, const at::Tensor& h, const at::Tensor& u,
                        std::string_view granularity, double adapter_scale, double gate_scale,
                        const OptTensor& gate_logits, const OptTensor& gate_weight, const OptTensor& gate_bias,
                        const OptTensor& gate_vector, const OptTensor& dropout_mask, double dropout_p,
                        int64_t dropout_seed, int64_t batch, const at::Tensor& stat) {
  const c10::cuda::CUDAGuard guard(x.device());
  const auto a = gated_args(x, h, u, granularity, adapter_scale, gate_scale, gate_logits, gate_weight, gate_bias,
                            gate_vector, dropout_mask, dropout_p, dropout_seed, batch);
  check_same("dout", dout, x);
  TORCH_CHECK(dout.sizes() == x.sizes(), "petal_C (CUDA): dout must have shape ", x.sizes(), ", got ", dout.sizes());
  if (row_gate(a)) {
    check_same("stat", stat, x);
    TORCH_CHECK(stat.numel() == x.size(0), "petal_C (CUDA): stat must hold one score per row (", x.size(0),
                "), got ", stat.sizes());
  }
  // dx = dout (large, middleY) and du = dh (adapter_scale 1) are not written: the autograd formula hands
  // dout / dh through (a custom op's outputs may not alias its inputs).
  at::Tensor dx = row_gate(a) ? at::empty_like(x) : x.new_empty({0});
  at::Tensor dh = at::empty_like(x);
  at::Tensor du = adapter_scale == 1.0 ? x.new_empty({0}) : at::empty_like(x);
  auto grad_like = [&](const OptTensor& t, bool used) { return used ? at::empty_like(*t) : x.new_empty({0}); };
  at::Tensor d_logits = grad_like(gate_logits, a.granularity == pc::Granularity::large);
  at::Tensor d_weight = grad_like(gate_weight, row_gate(a));
  at::Tensor d_bias = grad_like(gate_bias, row_gate(a));
  at::Tensor d_vector = grad_like(gate_vector, a.granularity == pc::Granularity::middleY);
  const pc::GatedResidualGrads g{ptr_or_null(dx),        dh.data_ptr(),          ptr_or_null(du),
                                 ptr_or_null(d_logits), ptr_or_null(d_weight), ptr_or_null(d_bias),
                                 ptr_or_null(d_vector)};
  at::Tensor ws = workspace(pc::gated_residual_backward_workspace(a), x);
  check_gated(pc::gated_residual_backward(a, dout.data_ptr(), row_gate(a) ? stat.data_ptr() : nullptr, g,
                                          ptr_or_null(ws), stream()),
              a, granularity, "gated_residual_backward");
  return {dx, dh, du, d_logits, d_weight, d_bias, d_vector};
}

// ---------------------------------------------------------------------------- dma_linear

void check_dma(const at::Tensor& x, at::TensorList weights, const at::Tensor& down, at::TensorList ups,
               at::TensorList scales, const OptTensorList& gammas) {
  TORCH_CHECK(x.is_cuda() && x.dim() == 2, "petal_C (CUDA): x must be a (M, K) CUDA tensor, got ", x.sizes());
  check_same("x", x, x);
  check_same("down", down, x);
  const int64_t M = x.size(0), K = x.size(1), R = down.size(0);
  const size_t J = weights.size();
  TORCH_CHECK(J > 0 && ups.size() == J && scales.size() == J && gammas.size() == J,
              "petal_C (CUDA): weights, ups, scales and gammas must all hold J > 0 entries");
  TORCH_CHECK(down.dim() == 2 && down.size(1) == K, "petal_C (CUDA): down must be (R, ", K, "), got ", down.sizes());
  for (size_t j = 0; j < J; ++j) {
    check_same("weights[j]", weights[j], x);
    check_same("ups[j]", ups[j], x);
    check_same("scales[j]", scales[j], x);
    const int64_t N = weights[j].size(0);
    TORCH_CHECK(weights[j].dim() == 2 && weights[j].size(1) == K && ups[j].dim() == 2 && ups[j].size(0) == N &&
                    ups[j].size(1) == R,
                "petal_C (CUDA): weights[", j, "] must be (N, ", K, ") and ups[", j, "] (N, ", R, "), got ",
                weights[j].sizes(), " and ", ups[j].sizes());
    const bool static_scale = scales[j].dim() == 1 && scales[j].size(0) == R;
    const bool row_scale = scales[j].dim() == 2 && scales[j].size(0) == M && scales[j].size(1) == R;
    TORCH_CHECK(static_scale || row_scale, "petal_C (CUDA): scales[", j, "] must be (", R, ") or (", M, ", ", R,
                "), got ", scales[j].sizes());
    if (const auto g = get(gammas, j)) {
      check_same("gammas[j]", *g, x);
      TORCH_CHECK(g->numel() == N, "petal_C (CUDA): gammas[", j, "] must be (", N, "), got ", g->sizes());
    }
  }
}

std::tuple<std::vector<at::Tensor>, at::Tensor, std::vector<at::Tensor>> dma_linear_forward(
    const at::Tensor& x, at::TensorList weights, const OptTensorList& biases, const at::Tensor& down,
    at::TensorList ups, at::TensorList scales, const OptTensorList& gammas) {
  const c10::cuda::CUDAGuard guard(x.device());
  check_dma(x, weights, down, ups, scales, gammas);
  TORCH_CHECK(biases.size() == weights.size(), "petal_C (CUDA): biases must hold one entry per weight");
  const int64_t M = x.size(0), R = down.size(0);
  const pc::DType dt = dtype_of(x);
  at::Tensor t = at::mm(x, down.t());
  std::vector<at::Tensor> ys, bases;
  for (size_t j = 0; j < weights.size(); ++j) {
    const auto bias = get(biases, j), gamma = get(gammas, j);
    if (bias) {
      check_same("biases[j]", *bias, x);
      TORCH_CHECK(bias->numel() == weights[j].size(0), "petal_C (CUDA): biases[", j, "] must be (",
                  weights[j].size(0), "), got ", bias->sizes());
    }
    at::Tensor z = at::empty_like(t);
    check_launch(pc::dma_scale_forward(dt, M, R, t.data_ptr(), scales[j].data_ptr(), scales[j].dim() == 2,
                                       z.data_ptr(), stream()),
                 "dma_scale_forward");
    if (gamma) {  // base is returned: d_gamma needs it
      at::Tensor base = at::mm(x, weights[j].t());
      at::Tensor y = at::mm(z, ups[j].t());
      check_launch(pc::dma_epilogue(dt, M, y.size(1), base.data_ptr(), gamma->data_ptr(), ptr(bias), y.data_ptr(),
                                    stream()),
                   "dma_epilogue");
      ys.push_back(y);
      bases.push_back(base);
    } else {
      at::Tensor y = bias ? at::addmm(*bias, x, weights[j].t()) : at::mm(x, weights[j].t());
      y.addmm_(z, ups[j].t());
      ys.push_back(y);
      bases.push_back(x.new_empty({0}));
    }
  }
  return {ys, t, bases};
}

at::Tensor column_dot(const at::Tensor& a, const at::Tensor& b) {
  const int64_t rows = a.size(0), cols = a.size(1);
  at::Tensor out = a.new_empty({cols});
  at::Tensor ws = workspace(pc::column_dot_workspace(dtype_of(a), rows, cols), a);
  check_launch(pc::column_dot(dtype_of(a), rows, cols, a.data_ptr(), b.data_ptr(), ptr_or_null(out),
                              ptr_or_null(ws), stream()),
               "column_dot");
  return out;
}

std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>, std::vector<at::Tensor>>
dma_linear_backward(at::TensorList dys, const at::Tensor& x, at::TensorList weights, const at::Tensor& down,
                    at::TensorList ups, at::TensorList scales, const OptTensorList& gammas, const at::Tensor& t,
                    const OptTensorList& bases, std::array<bool, 5> needs) {
  const c10::cuda::CUDAGuard guard(x.device());
  const auto [need_x, need_down, need_up, need_scale, need_gamma] = needs;
  check_dma(x, weights, down, ups, scales, gammas);
  const size_t J = weights.size();
  const int64_t M = x.size(0), R = down.size(0);
  TORCH_CHECK(dys.size() == J && bases.size() == J, "petal_C (CUDA): dys and bases must hold ", J, " entries");
  check_same("t", t, x);
  TORCH_CHECK(t.dim() == 2 && t.size(0) == M && t.size(1) == R, "petal_C (CUDA): t must be (", M, ", ", R,
              "), got ", t.sizes());
  for (size_t j = 0; j < J; ++j) {
    check_same("dys[j]", dys[j], x);
    TORCH_CHECK(dys[j].dim() == 2 && dys[j].size(0) == M && dys[j].size(1) == weights[j].size(0),
                "petal_C (CUDA): dys[", j, "] must be (", M, ", ", weights[j].size(0), "), got ", dys[j].sizes());
    if (need_gamma && get(gammas, j)) {
      const auto base = get(bases, j);
      TORCH_CHECK(base && base->sizes() == dys[j].sizes(), "petal_C (CUDA): bases[", j,
                  "] must be the forward's base when gammas[", j, "] is given");
      check_same("bases[j]", *base, x);
    }
  }
  const pc::DType dtype = dtype_of(x);
  auto none = [&] { return x.new_empty({0}); };
  const bool need_dt = need_x || need_down;
  at::Tensor dt = need_dt ? at::empty_like(t) : at::Tensor();
  std::vector<at::Tensor> d_ups, d_scales, d_gammas;
  bool dt_written = false;
  for (size_t j = 0; j < J; ++j) {
    const bool per_row = scales[j].dim() == 2;
    const auto gamma = get(gammas, j);
    d_gammas.push_back(need_gamma && gamma ? column_dot(dys[j], *get(bases, j)) : none());
    if (!per_row) {
      at::Tensor d_up, d_scale;
      static_scale_grads(dys[j], ups[j], scales[j], t, dt, dt_written, need_up, need_scale, d_up, d_scale);
      dt_written = need_dt;
      d_ups.push_back(need_up ? d_up : none());
      d_scales.push_back(need_scale ? d_scale : none());
      continue;
    }
    const void* s = scales[j].data_ptr();
    at::Tensor z = need_up ? at::empty_like(t) : at::Tensor();
    at::Tensor d_scale = need_scale ? at::empty_like(scales[j]) : none();
    if (need_dt || need_scale) {
      const at::Tensor dz = at::mm(dys[j], ups[j]);
      check_launch(pc::dma_scale_backward(dtype, M, R, dz.data_ptr(), t.data_ptr(), s, per_row,
                                          need_dt ? dt.data_ptr() : nullptr, dt_written, ptr_or_null(z),
                                          need_scale ? d_scale.data_ptr() : nullptr, stream()),
                   "dma_scale_backward");
      dt_written = need_dt;
    } else if (need_up) {
      check_launch(pc::dma_scale_forward(dtype, M, R, t.data_ptr(), s, per_row, z.data_ptr(), stream()),
                   "dma_scale_forward");
    }
    d_ups.push_back(need_up ? at::mm(dys[j].t(), z) : none());
    d_scales.push_back(d_scale);
  }
  at::Tensor d_down = need_down ? at::mm(dt.t(), x) : none();
  at::Tensor dx = need_x ? accumulate_dx(dt, down, dys, weights, gammas) : none();
  return {dx, d_down, d_ups, d_scales, d_gammas};
}

}  // namespace
}  // namespace petal_C::cuda

TORCH_LIBRARY_IMPL(petal_C, CUDA, m) {
  m.impl("dma_linear_forward", &petal_C::cuda::dma_linear_forward);
  m.impl("dma_linear_backward", &petal_C::cuda::dma_linear_backward);
  m.impl("gated_residual_forward", &petal_C::cuda::gated_residual_forward);
  m.impl("gated_residual_backward", &petal_C::cuda::gated_residual_backward);
}
