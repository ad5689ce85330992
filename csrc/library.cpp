// petal_C: the compiled operators of petal_kernels, and the Python module _C that defines them (see
// petal_kernels/_build_spec.py for the modules of a build).
//
// Schemas (device-neutral; the CPU kernels register in csrc/cpu's kernel files, compiled into the CPU kernel
// module of each ISA; the CUDA kernels by csrc/cuda's TORCH_LIBRARY_IMPL):
//   dma_linear_forward(Tensor x, Tensor[] weights, Tensor?[] biases, Tensor down, Tensor[] ups,
//                      Tensor[] scales, Tensor?[] gammas) -> (Tensor[] ys, Tensor t, Tensor[] bases)
//   dma_linear_backward(Tensor[] dys, Tensor x, Tensor[] weights, Tensor down, Tensor[] ups, Tensor[] scales,
//                       Tensor?[] gammas, Tensor t, Tensor?[] bases, bool[5] needs)
//                       -> (Tensor dx, Tensor d_down, Tensor[] d_ups, Tensor[] d_scales, Tensor[] d_gammas)
//   gated_residual_forward(Tensor x, Tensor h, Tensor u, str granularity, float adapter_scale, float gate_scale,
//                          Tensor? gate_logits, Tensor? gate_weight, Tensor? gate_bias, Tensor? gate_vector,
//                          Tensor? dropout_mask, float dropout_p, int dropout_seed, int batch)
//                          -> (Tensor out, Tensor stat)
//   gated_residual_backward(Tensor dout, <the forward's inputs>, Tensor stat)
//                          -> (Tensor dx, Tensor dh, Tensor du, Tensor d_logits, Tensor d_weight,
//                              Tensor d_bias, Tensor d_vector)
// Semantics are those of petal_kernels/reference.py's canonical functions on canonical tensors (2-D contiguous
// rows, scale (R,) or (M, R), gate_bias (1,)); dropout_p > 0 drops by the Philox stream of dropout_seed
// (csrc/include/petal/philox.h) instead of a mask; a gradient that is not needed or not used is a 0-element tensor.
// bases[j] is a 0-element tensor when gammas[j] is None. needs = (x, down, ups, scales, gammas).
#include <torch/library.h>

#include "module_init.h"

PETAL_PYTHON_MODULE()  // `import` runs the static registrations below; the module itself is empty

TORCH_LIBRARY(petal_C, m) {
  m.def(
      "dma_linear_forward(Tensor x, Tensor[] weights, Tensor?[] biases, Tensor down, Tensor[] ups, "
      "Tensor[] scales, Tensor?[] gammas) -> (Tensor[], Tensor, Tensor[])");
  m.def(
      "dma_linear_backward(Tensor[] dys, Tensor x, Tensor[] weights, Tensor down, Tensor[] ups, "
      "Tensor[] scales, Tensor?[] gammas, Tensor t, Tensor?[] bases, bool[5] needs) "
      "-> (Tensor, Tensor, Tensor[], Tensor[], Tensor[])");
  m.def(
      "gated_residual_forward(Tensor x, Tensor h, Tensor u, str granularity, float adapter_scale, "
      "float gate_scale, Tensor? gate_logits, Tensor? gate_weight, Tensor? gate_bias, Tensor? gate_vector, "
      "Tensor? dropout_mask, float dropout_p, int dropout_seed, int batch) -> (Tensor, Tensor)");
  m.def(
      "gated_residual_backward(Tensor dout, Tensor x, Tensor h, Tensor u, str granularity, "
      "float adapter_scale, float gate_scale, Tensor? gate_logits, Tensor? gate_weight, Tensor? gate_bias, "
      "Tensor? gate_vector, Tensor? dropout_mask, float dropout_p, int dropout_seed, int batch, Tensor stat) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
}
