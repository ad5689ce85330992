// petal_C::gated_residual_autograd: petal_kernels.gated_residual's eager path on the compiled backends (cpu,
// cuda). The same canonicalisation and autograd formula as petal_kernels/_ops.py's petal::gated_residual, in
// C++: the registered op over the same kernels costs ~0.19 ms more per forward+backward at a few rows, a Python
// autograd.Function ~0.08 ms more (argument handling, dispatcher round trips, Function.apply;
// docs/notes/GATED_CPU.md), as much as the whole unfused epilogue at a few hundred rows.
// torch.compile, functorch and tensor subclasses take the torch.library op (petal_kernels/_ops.py).
//
//   gated_residual_autograd(Tensor x, Tensor h, Tensor u, str granularity, float adapter_scale,
//       float gate_scale, Tensor? gate_logits, Tensor? gate_weight, Tensor? gate_bias, Tensor? gate_vector,
//       Tensor? dropout_mask, float dropout_p, int? dropout_seed) -> Tensor
//
// The op takes the public call's arguments as they come: under torch.autocast it casts the floating operands
// to the autocast dtype; it validates them as petal_kernels._checks does, raising the same errors (the Python
// wrapper sends here only calls whose argument types the schema holds, with at least one row); and it draws
// the dropout seed from the default generator when none is given, after the checks, as
// petal_kernels.philox.draw_seed does. The kernels get x, h, u (and gate_logits, dropout_mask) as contiguous
// (rows, d), the gate parameters flattened. Backward: dL/dx is dout itself for the gates that do not read x,
// dL/du is dL/dh when adapter_scale is 1; nothing is saved beyond the inputs and the (rows,) gate scores.
// Double backward is refused (the kernels' backward is not differentiable).
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <charconv>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <string_view>

#include "../aten/gate.h"

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

    at::AutoDispatchBelowADInplaceOrView below_autograd;
    Canonical c(x, h, u, granularity, gates[0], gates[1], gates[2], gates[3], mask);
    const int64_t rows = c.x.size(0), d = c.x.size(1);
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

bool present(const OptTensor& t) { return t.has_value() && t->defined(); }

// Python's spelling of the values in the messages, so both paths of petal_kernels.gated_residual raise the
// same documented errors (tests/test_op_errors.py compares them).
std::string py_shape(at::IntArrayRef sizes) {
  std::string s = "(";
  for (size_t i = 0; i < sizes.size(); ++i) s += (i ? ", " : "") + std::to_string(sizes[i]);
  return s + (sizes.size() == 1 ? ",)" : ")");
}

std::string py_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "torch.float32";
    case at::kDouble: return "torch.float64";
    case at::kHalf: return "torch.float16";
    case at::kBFloat16: return "torch.bfloat16";
    case at::kLong: return "torch.int64";
    case at::kInt: return "torch.int32";
    case at::kShort: return "torch.int16";
    case at::kChar: return "torch.int8";
    case at::kByte: return "torch.uint8";
    case at::kBool: return "torch.bool";
    case at::kComplexFloat: return "torch.complex64";
    case at::kComplexDouble: return "torch.complex128";
    default: return std::string("torch.") + c10::toString(t);
  }
}

std::string py_float(double v) {
  char buf[32];
  const auto end = std::to_chars(buf, buf + sizeof(buf), v).ptr;
  std::string s(buf, end);
  return s.find_first_of(".en") == std::string::npos ? s + ".0" : s;  // repr(1.0) is '1.0'
}

std::string desc(const Tensor& t) {  // petal_kernels._checks._desc
  return "shape " + py_shape(t.sizes()) + ", dtype " + py_dtype(t.scalar_type()) + ", device " + t.device().str();
}

// petal_kernels._checks.gated_residual for the calls that reach this op (the Python wrapper sends every call
// with another argument type, zero rows or a seed tensor through those checks instead): the same errors,
// in the same order.
void check_operands(std::string_view granularity, const Tensor& x, const Tensor& h, const Tensor& u,
                    const OptTensor& logits, const OptTensor& weight, const OptTensor& bias, const OptTensor& vector,
                    const OptTensor& mask, double dropout_p) {
  const Gate gate = parse_gate(granularity);
  const auto dtype = x.scalar_type();
  auto floating = [](const char* name, const Tensor& t) {
    const auto type = t.scalar_type();
    TORCH_CHECK_TYPE(type == at::kFloat || type == at::kDouble || type == at::kBFloat16 || type == at::kHalf, name,
                     " must be a floating tensor (float16, bfloat16, float32 or float64), got ", desc(t));
  };
  auto like_x = [&](const char* name, const OptTensor& t) {
    TORCH_CHECK_TYPE(present(t), name, " must be a tensor, got None");
    floating(name, *t);
    TORCH_CHECK_TYPE(t->scalar_type() == dtype, name, " has dtype ", py_dtype(t->scalar_type()), " but x has dtype ",
                     py_dtype(dtype), "; cast all inputs to one dtype (or run under torch.autocast)");
    TORCH_CHECK_VALUE(t->device() == x.device(), name, " is on device ", t->device().str(), " but x is on ",
                      x.device().str());
  };
  auto shaped = [](const char* name, const Tensor& t, at::IntArrayRef sizes, const std::string& what) {
    TORCH_CHECK_VALUE(t.sizes() == sizes, name, " must have shape ", py_shape(sizes), " (", what, "), got ",
                      desc(t));
  };
  floating("x", x);
  TORCH_CHECK_VALUE(x.dim() >= 1, "x must have at least one dim (*, d), got ", desc(x));
  TORCH_CHECK_VALUE(x.numel() > 0, "petal_C::gated_residual_autograd needs at least one row of a positive width "
                    "(petal_kernels.gated_residual runs empty inputs on the registered op), got ", desc(x));
  like_x("h", h);
  shaped("h", h, x.sizes(), "same as x");
  like_x("u", u);
  shaped("u", u, x.sizes(), "same as x");
  const bool row_gate = gate == Gate::middleX || gate == Gate::small;
  const struct {
    const char* name;
    const OptTensor& value;
    bool needed;
    const char* users;
  } gates[] = {{"gate_logits", logits, gate == Gate::large, "large"},
               {"gate_weight", weight, row_gate, "middleX / small"},
               {"gate_bias", bias, row_gate, "middleX / small"},
               {"gate_vector", vector, gate == Gate::middleY, "middleY"}};
  for (const auto& g : gates) {
    if (g.needed) {
      like_x(g.name, g.value);
    } else {
      TORCH_CHECK_VALUE(!present(g.value), g.name, " is only used by granularity ", g.users,
                        ", but granularity is '", granularity, "'; pass None");
    }
  }
  const int64_t d = x.size(-1);
  if (gate == Gate::large) {
    shaped("gate_logits", *logits, x.sizes(), "same as x");
  } else if (gate == Gate::middleY) {
    shaped("gate_vector", *vector, {d}, "d=" + std::to_string(d) + " from x");
  } else {
    const int64_t width = gate == Gate::middleX ? d : 2 * d;
    shaped("gate_weight", *weight, {width},
           gate == Gate::middleX ? "d=" + std::to_string(d) + " from x" : "2d=" + std::to_string(width) + " from x: [x; h']");
    TORCH_CHECK_VALUE(bias->numel() == 1 && bias->dim() <= 1,
                      "gate_bias must be a scalar tensor of shape () or (1,), got ", desc(*bias));
  }
  TORCH_CHECK_VALUE(gate != Gate::small || x.dim() == 3,
                    "granularity 'small' gates per example and needs x of shape (B, T, d), got ", desc(x));
  if (present(mask)) {
    like_x("dropout_mask", mask);
    shaped("dropout_mask", *mask, x.sizes(), "same as x");
  }
  TORCH_CHECK_VALUE(dropout_p >= 0.0 && dropout_p < 1.0, "dropout_p must be in [0, 1), got ", py_float(dropout_p));
  TORCH_CHECK_VALUE(dropout_p == 0.0 || !present(mask),
                    "pass either dropout_mask (a mask made by the caller) or dropout_p (dropout made in the kernel), "
                    "not both; got a mask and dropout_p=", py_float(dropout_p));
}

// Under torch.autocast every floating operand runs in the autocast dtype (petal_kernels/_autocast.py).
Tensor autocast(const Tensor& t, std::optional<at::ScalarType> dtype) {
  return dtype && t.is_floating_point() ? t.to(*dtype) : t;
}

OptTensor autocast(const OptTensor& t, std::optional<at::ScalarType> dtype) {
  return present(t) ? OptTensor(autocast(*t, dtype)) : t;
}

Tensor gated_residual_autograd(const Tensor& x_, const Tensor& h_, const Tensor& u_, std::string_view granularity,
                               double adapter_scale, double gate_scale, const OptTensor& gate_logits_,
                               const OptTensor& gate_weight_, const OptTensor& gate_bias_,
                               const OptTensor& gate_vector_, const OptTensor& dropout_mask_, double dropout_p,
                               std::optional<int64_t> dropout_seed) {
  const auto device = x_.device().type();
  std::optional<at::ScalarType> cast;
  if (at::autocast::is_autocast_enabled(device)) cast = at::autocast::get_autocast_dtype(device);
  const Tensor x = autocast(x_, cast), h = autocast(h_, cast), u = autocast(u_, cast);
  const OptTensor gate_logits = autocast(gate_logits_, cast), gate_weight = autocast(gate_weight_, cast),
                  gate_bias = autocast(gate_bias_, cast), gate_vector = autocast(gate_vector_, cast),
                  dropout_mask = autocast(dropout_mask_, cast);
  check_operands(granularity, x, h, u, gate_logits, gate_weight, gate_bias, gate_vector, dropout_mask, dropout_p);
  int64_t seed = dropout_seed.value_or(0);
  if (dropout_p > 0.0 && !dropout_seed.has_value()) {  // philox.draw_seed: [0, 2**63 - 1) from the generator
    seed = at::randint(0, std::numeric_limits<int64_t>::max(), at::IntArrayRef{}, at::TensorOptions().dtype(at::kLong))
               .item<int64_t>();
  }
  return GatedResidualAutograd::apply(x, h, u, granularity, adapter_scale, gate_scale, gate_logits, gate_weight,
                                      gate_bias, gate_vector, dropout_mask, dropout_p, seed);
}

}  // namespace
}  // namespace petal_C

TORCH_LIBRARY_FRAGMENT(petal_C, m) {
  m.def(
      "gated_residual_autograd(Tensor x, Tensor h, Tensor u, str granularity, float adapter_scale, "
      "float gate_scale, Tensor? gate_logits, Tensor? gate_weight, Tensor? gate_bias, Tensor? gate_vector, "
      "Tensor? dropout_mask, float dropout_p, int? dropout_seed) -> Tensor");
}

TORCH_LIBRARY_IMPL(petal_C, CompositeImplicitAutograd, m) {
  m.impl("gated_residual_autograd", &petal_C::gated_residual_autograd);
}
