// ATen-level pieces of the dma_linear backward shared by the CPU and the CUDA bindings
// (torch headers: included by .cpp files only, never by a .cu file).
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/List.h>

#include <optional>

namespace petal_C {

using OptTensorList = c10::List<std::optional<at::Tensor>>;

// Entry j of a Tensor?[] argument; an undefined tensor counts as absent.
inline std::optional<at::Tensor> get(const OptTensorList& list, size_t j) {
  std::optional<at::Tensor> t = list.get(j);
  return (t.has_value() && t->defined()) ? t : std::nullopt;
}

// The rank-R gradients of a projection with a static (R,) scale s, without dz = dy @ up or z = t * s:
//   dt += dy @ (up * s);  G = dy^T t;  d_up = G * s;  d_scale = Σ_n up ⊙ G.
// dt must be defined (and written) when dt_written; d_up / d_scale are left undefined unless needed.
inline void static_scale_grads(const at::Tensor& dy, const at::Tensor& up, const at::Tensor& s, const at::Tensor& t,
                               at::Tensor& dt, bool dt_written, bool need_up, bool need_scale, at::Tensor& d_up,
                               at::Tensor& d_scale) {
  if (dt.defined()) {
    const at::Tensor scaled_up = up * s;
    if (dt_written) {
      dt.addmm_(dy, scaled_up);
    } else {
      at::mm_out(dt, dy, scaled_up);
    }
  }
  if (!need_up && !need_scale) return;
  const at::Tensor g = at::mm(dy.t(), t);  // (N, R)
  if (need_up) d_up = g * s;
  if (need_scale) {
    const auto acc = at::isReducedFloatingType(g.scalar_type()) ? at::kFloat : g.scalar_type();
    d_scale = at::sum(up.to(acc) * g.to(acc), 0).to(g.scalar_type());
  }
}

// dx = dt @ down + Σ_j (gamma_j * dy_j) @ W_j, accumulated in one buffer (dt: (M, R), down: (R, K)).
inline at::Tensor accumulate_dx(const at::Tensor& dt, const at::Tensor& down, at::TensorList dys,
                                at::TensorList weights, const OptTensorList& gammas) {
  const int64_t M = dt.size(0), K = down.size(1);
  at::Tensor dx = at::mm(dt, down);
  for (size_t j = 0; j < dys.size(); ++j) {
    const auto gamma = get(gammas, j);
    if (!gamma) {
      dx.addmm_(dys[j], weights[j]);
    } else if (K <= M) {  // (gamma * dy) @ W == dy @ (gamma[:, None] * W): scale the smaller operand
      dx.addmm_(dys[j], weights[j] * gamma->unsqueeze(1));
    } else {
      dx.addmm_(dys[j] * *gamma, weights[j]);
    }
  }
  return dx;
}

}  // namespace petal_C
