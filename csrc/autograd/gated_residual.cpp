// petal_C::gated_residual_autograd: the differentiable gated_residual that eager calls run on the compiled
// backends (cpu, cuda). The same canonicalisation and autograd formula as petal_kernels/_ops.py's
// petal::gated_residual, in C++: the Python autograd.Function over the same kernels cost ~0.13 ms more
// per forward+backward (reshapes, argument handling, Function.apply; docs/GATED_CPU.md), as much as
// the whole unfused form at a few rows.
// torch.compile and functorch keep tracing the torch.library op (petal_kernels/_ops.py).
//
//   gated_residual_autograd(Tensor x, Tensor h, Tensor u, str granularity, float adapter_scale,
//       float gate_scale, Tensor? gate_logits, Tensor? gate_weight, Tensor? gate_bias, Tensor? gate_vector,
//       Tensor? dropout_mask, float dropout_p, int dropout_seed) -> Tensor
//
// x, h, u (and gate_logits, dropout_mask) are (..., d) with at least one row; the kernels get them as
// contiguous (rows, d), the gate parameters flattened. Backward: dL/dx is dout itself for the gates that
// do not read x, dL/du is dL/dh when adapter_scale is 1; nothing is saved beyond the inputs and the
// (rows,) gate scores. Double backward is refused (the kernels' backward is not differentiable).
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <optional>
#include <string>
#include <string_view>

namespace petal_C {
namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using ForwardFn = std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, std::string_view, double,
                                             double, const OptTensor&, const OptTensor&, const OptTensor&,
                                             const OptTensor&, const OptTensor&, double, int64_t, int64_t);
using BackwardFn = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>(
    const Tensor&, const Tensor&, const Tensor&, const Tensor&, std::string_view, double, double, const OptTensor&,
    const OptTensor&, const OptTensor&, const OptTensor&, const OptTensor&, double, int64_t, int64_t, const Tensor&);

const c10::TypedOperatorHandle<ForwardFn>& forward_op() {
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("petal_C::gated_residual_forward", "").typed<ForwardFn>();
  return op;
}

const c10::TypedOperatorHandle<BackwardFn>& backward_op() {
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("petal_C::gated_residual_backward", "").typed<BackwardFn>();
  return op;
}

// The canonical operands of one call, derived from the caller's tensors.
struct Canonical {
  Tensor x, h, u;
  OptTensor logits, weight, bias, vector, mask;
  int64_t batch;

  Canonical(const Tensor& x_, const Tensor& h_, const Tensor& u_, std::string_view granularity,
            const OptTensor& logits_, const OptTensor& weight_, const OptTensor& bias_, const OptTensor& vector_,
            const OptTensor& mask_) {
    const int64_t d = x_.size(-1);
    const int64_t rows = x_.numel() / d;
    auto flat = [&](const Tensor& t) { return t.reshape({rows, d}).contiguous(); };
    auto flat_opt = [&](const OptTensor& t) -> OptTensor {
      return t.has_value() && t->defined() ? OptTensor(flat(*t)) : std::nullopt;
    };
    auto vec = [](const OptTensor& t) -> OptTensor {
      return t.has_value() && t->defined() ? OptTensor(t->reshape({-1}).contiguous()) : std::nullopt;
    };
    x = flat(x_);
    h = flat(h_);
    u = flat(u_);
    logits = flat_opt(logits_);
    weight = vec(weight_);
    bias = vec(bias_);
    vector = vec(vector_);
    mask = flat_opt(mask_);
    batch = granularity == "small" ? x_.size(0) : 0;
  }
};

bool dx_is_dout(std::string_view granularity) { return granularity == "large" || granularity == "middleY"; }

OptTensor saved_or_none(const Tensor& t) { return t.defined() ? OptTensor(t) : std::nullopt; }

Tensor undefined_if_absent(const OptTensor& t) { return t.has_value() ? *t : Tensor(); }

}  // namespace

// The autograd node reads torch::autograd::CppNode<petal_C::GatedResidualAutograd>.
struct GatedResidualAutograd : public torch::autograd::Function<GatedResidualAutograd> {
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& h, const Tensor& u,
                        std::string_view granularity, double adapter_scale, double gate_scale,
                        const OptTensor& gate_logits, const OptTensor& gate_weight, const OptTensor& gate_bias,
                        const OptTensor& gate_vector, const OptTensor& dropout_mask, double dropout_p,
                        int64_t dropout_seed) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    Canonical c(x, h, u, granularity, gate_logits, gate_weight, gate_bias, gate_vector, dropout_mask);
    auto [out, stat] = forward_op().call(c.x, c.h, c.u, granularity, adapter_scale, gate_scale, c.logits, c.weight,
                                         c.bias, c.vector, c.mask, dropout_p, dropout_seed, c.batch);
    const OptTensor* gates[] = {&gate_logits, &gate_weight, &gate_bias, &gate_vector};
    int64_t need_gates = 0;  // bit i: gate operand i (logits, weight, bias, vector) wants a gradient
    for (int i = 0; i < 4; ++i) {
      if (gates[i]->has_value() && (*gates[i])->defined() && (*gates[i])->requires_grad()) need_gates |= 1 << i;
    }
    ctx->saved_data["need_gates"] = need_gates;
    ctx->saved_data["granularity"] = std::string(granularity);
    ctx->saved_data["adapter_scale"] = adapter_scale;
    ctx->saved_data["gate_scale"] = gate_scale;
    ctx->saved_data["dropout_p"] = dropout_p;
    ctx->saved_data["dropout_seed"] = dropout_seed;
    ctx->save_for_backward({x, h, u, stat, undefined_if_absent(gate_logits), undefined_if_absent(gate_weight),
                            undefined_if_absent(gate_bias), undefined_if_absent(gate_vector),
                            undefined_if_absent(dropout_mask)});
    return out.view(x.sizes());
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    TORCH_CHECK(!at::GradMode::is_enabled(),
                "petal_kernels.gated_residual supports one backward only: its gradient is not differentiable "
                "(create_graph=True)");
    // Unpacking may run a checkpointed region's recomputation, which must record autograd as usual:
    // only the kernel call below skips the autograd keys.
    const variable_list saved = ctx->get_saved_variables();
    const Tensor &x = saved[0], &h = saved[1], &u = saved[2], &stat = saved[3];
    const OptTensor gates[] = {saved_or_none(saved[4]), saved_or_none(saved[5]), saved_or_none(saved[6]),
                               saved_or_none(saved[7])};
    const OptTensor mask = saved_or_none(saved[8]);
    const std::string granularity = ctx->saved_data["granularity"].toStringRef();
    const double adapter_scale = ctx->saved_data["adapter_scale"].toDouble();
    const Tensor& dout = grad_outputs[0];

    Canonical c(x, h, u, granularity, gates[0], gates[1], gates[2], gates[3], mask);
    const int64_t rows = c.x.size(0), d = c.x.size(1);
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [dx, dh, du, d_logits, d_weight, d_bias, d_vector] = backward_op().call(
        dout.reshape({rows, d}).contiguous(), c.x, c.h, c.u, granularity, adapter_scale,
        ctx->saved_data["gate_scale"].toDouble(), c.logits, c.weight, c.bias, c.vector, c.mask,
        ctx->saved_data["dropout_p"].toDouble(), ctx->saved_data["dropout_seed"].toInt(), c.batch, stat);

    dh = dh.view(x.sizes());
    dx = dx_is_dout(granularity) ? dout : dx.view(x.sizes());
    du = adapter_scale == 1.0 ? dh : du.view(x.sizes());
    const Tensor d_gates[] = {d_logits, d_weight, d_bias, d_vector};
    variable_list grads = {dx, dh, du, Tensor(), Tensor(), Tensor()};
    const int64_t need_gates = ctx->saved_data["need_gates"].toInt();
    for (int i = 0; i < 4; ++i) {
      grads.push_back(need_gates & (1 << i) ? d_gates[i].view(gates[i]->sizes()) : Tensor());
    }
    grads.insert(grads.end(), {Tensor(), Tensor(), Tensor()});  // dropout_mask, dropout_p, dropout_seed
    return grads;
  }
};

namespace {

Tensor gated_residual_autograd(const Tensor& x, const Tensor& h, const Tensor& u, std::string_view granularity,
                               double adapter_scale, double gate_scale, const OptTensor& gate_logits,
                               const OptTensor& gate_weight, const OptTensor& gate_bias,
                               const OptTensor& gate_vector, const OptTensor& dropout_mask, double dropout_p,
                               int64_t dropout_seed) {
  TORCH_CHECK_VALUE(x.dim() >= 1 && x.size(-1) > 0 && x.numel() > 0,
                    "gated_residual_autograd: x must have at least one row of a positive width, got shape ",
                    x.sizes());
  return GatedResidualAutograd::apply(x, h, u, granularity, adapter_scale, gate_scale, gate_logits,
                              gate_weight, gate_bias, gate_vector, dropout_mask, dropout_p, dropout_seed);
}

}  // namespace
}  // namespace petal_C

TORCH_LIBRARY_FRAGMENT(petal_C, m) {
  m.def(
      "gated_residual_autograd(Tensor x, Tensor h, Tensor u, str granularity, float adapter_scale, "
      "float gate_scale, Tensor? gate_logits, Tensor? gate_weight, Tensor? gate_bias, Tensor? gate_vector, "
      "Tensor? dropout_mask, float dropout_p, int dropout_seed) -> Tensor");
}

TORCH_LIBRARY_IMPL(petal_C, CompositeImplicitAutograd, m) {
  m.impl("gated_residual_autograd", &petal_C::gated_residual_autograd);
}
