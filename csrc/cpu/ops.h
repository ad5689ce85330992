// The CPU implementations of the petal_C operators (schemas: see bindings.cpp).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/List.h>

#include <array>
#include <optional>
#include <string_view>
#include <tuple>
#include <vector>

namespace petal_C::cpu {

using OptTensorList = c10::List<std::optional<at::Tensor>>;

std::tuple<std::vector<at::Tensor>, at::Tensor, std::vector<at::Tensor>> dma_linear_forward(
    const at::Tensor& x, at::TensorList weights, const OptTensorList& biases, const at::Tensor& down,
    at::TensorList ups, at::TensorList scales, const OptTensorList& gammas);

std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>, std::vector<at::Tensor>>
dma_linear_backward(at::TensorList dys, const at::Tensor& x, at::TensorList weights, const at::Tensor& down,
                    at::TensorList ups, at::TensorList scales, const OptTensorList& gammas, const at::Tensor& t,
                    const OptTensorList& bases, std::array<bool, 5> needs);

std::tuple<at::Tensor, at::Tensor> gated_residual_forward(
    const at::Tensor& x, const at::Tensor& h, const at::Tensor& u, std::string_view granularity,
    double adapter_scale, double gate_scale, const std::optional<at::Tensor>& gate_logits,
    const std::optional<at::Tensor>& gate_weight, const std::optional<at::Tensor>& gate_bias,
    const std::optional<at::Tensor>& gate_vector, const std::optional<at::Tensor>& dropout_mask,
    double dropout_p, int64_t dropout_seed, int64_t batch);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
gated_residual_backward(const at::Tensor& dout, const at::Tensor& x, const at::Tensor& h, const at::Tensor& u,
                        std::string_view granularity, double adapter_scale, double gate_scale,
                        const std::optional<at::Tensor>& gate_logits,
                        const std::optional<at::Tensor>& gate_weight,
                        const std::optional<at::Tensor>& gate_bias,
                        const std::optional<at::Tensor>& gate_vector,
                        const std::optional<at::Tensor>& dropout_mask, double dropout_p, int64_t dropout_seed,
                        int64_t batch, const at::Tensor& stat);

}  // namespace petal_C::cpu
