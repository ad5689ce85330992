// petal_C: the compiled operators of petal_kernels, and the Python module petal_kernels._C that loads them.
//
// Schemas (device-neutral; CPU kernels registered here, CUDA kernels by csrc/cuda's TORCH_LIBRARY_IMPL):
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
#include <Python.h>
#include <torch/library.h>

#include "ops.h"

extern "C" {
// `import petal_kernels._C` runs the static registrations below; the module itself is empty.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

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

TORCH_LIBRARY_IMPL(petal_C, CPU, m) {
  m.impl("dma_linear_forward", &petal_C::cpu::dma_linear_forward);
  m.impl("dma_linear_backward", &petal_C::cpu::dma_linear_backward);
  m.impl("gated_residual_forward", &petal_C::cpu::gated_residual_forward);
  m.impl("gated_residual_backward", &petal_C::cpu::gated_residual_backward);
}
