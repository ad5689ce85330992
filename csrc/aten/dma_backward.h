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
