// petal/gated_residual.h — element math of the VL-PET gated residual (DESIGN §2.2), host and device.
//
// All functions are templates on the compute type T (float/double, at::vec::Vectorized<float/double>,
// device float); reduced types (bf16/fp16) are converted to float by the caller first.
//   forward :  h2 = adapter_sum(h, u, a_s);  G = gate_large(logit) | gate_middle_y(vec) | sigmoid(score)
//              score = Σ_row middle_x_score_term(x, h2, w) + b            (middleX, G per row)
//                    = Σ_row small_score_term(x, h2, w_x, w_h) + b        (small: G = mean_T sigmoid(score))
//              out = gated_out(x, h2, G, g_s[, mask])                     (x + g_s * (G * h2) * mask)
//   backward:  e = upstream(dout, g_s[, mask]);  dh2 = gate_h2_grad(e, G[, ds, w_h]);  du = a_s * dh2
//              large  : d_logit = large_logit_grad(e, h2, G)
//              row G  : ds = row_score_grad(Σ_row gate_score_term(e, h2) [/ T for small], G_row)
//                       dx = row_gate_x_grad(dout, ds, w_x);  d_w += ds * (x + h2) | [ds * x; ds * h2]
//              middleY: d_vec += gate_score_term(e, h2) (summed over rows);  dx = dout (plain copy)
// The mask is the dropout mask, already scaled by 1 / (1 - p).
#pragma once

#include "petal/macros.h"

namespace petal {

// ---------------------------------------------------------------- forward

template <typename T>
PETAL_HD T adapter_sum(T h, T u, T adapter_scale) {
  return h + adapter_scale * u;
}

template <typename T>
PETAL_HD T gate_large(T logit) {
  return sigmoid(logit);
}

template <typename T>
PETAL_HD T gate_middle_y(T gate_vector) {
  return T(1) + gate_vector;
}

// One element's term of the middleX row score (x + h2) · w.
template <typename T>
PETAL_HD T middle_x_score_term(T x, T h2, T w) {
  return (x + h2) * w;
}

// One element's term of the small row score x · w[:d] + h2 · w[d:].
template <typename T>
PETAL_HD T small_score_term(T x, T h2, T w_x, T w_h) {
  return x * w_x + h2 * w_h;
}

template <typename T>
PETAL_HD T gated_out(T x, T h2, T gate, T gate_scale) {
  return x + gate_scale * (gate * h2);
}

template <typename T>
PETAL_HD T gated_out(T x, T h2, T gate, T gate_scale, T mask) {
  return x + gate_scale * ((gate * h2) * mask);
}

// ---------------------------------------------------------------- backward

// e: the gradient reaching G * h2.
template <typename T>
PETAL_HD T upstream(T dout, T gate_scale) {
  return dout * gate_scale;
}

template <typename T>
PETAL_HD T upstream(T dout, T gate_scale, T mask) {
  return (dout * gate_scale) * mask;
}

// dh2 when G does not depend on h2 (large, middleY).
template <typename T>
PETAL_HD T gate_h2_grad(T e, T gate) {
  return e * gate;
}

// dh2 when G is a sigmoid of a row score that reads h2 through weight w (middleX: w, small: w[d:]).
template <typename T>
PETAL_HD T gate_h2_grad(T e, T gate, T ds, T w) {
  return e * gate + ds * w;
}

template <typename T>
PETAL_HD T adapter_u_grad(T dh2, T adapter_scale) {
  return adapter_scale * dh2;
}

template <typename T>
PETAL_HD T large_logit_grad(T e, T h2, T gate) {
  return e * h2 * sigmoid_grad(gate);
}

// Term of dL/dG: summed over a row (middleX), an example (small) or the rows of a column (middleY).
template <typename T>
PETAL_HD T gate_score_term(T e, T h2) {
  return e * h2;
}

// ds = dL/d(score) from dL/dG (for small: the example's Σ e*h2 divided by its row count) and G = sigmoid(score).
template <typename T>
PETAL_HD T row_score_grad(T d_gate, T gate) {
  return d_gate * sigmoid_grad(gate);
}

// dx of a row gate that reads x through weight w (middleX: w, small: w[:d]).
template <typename T>
PETAL_HD T row_gate_x_grad(T dout, T ds, T w) {
  return dout + ds * w;
}

// Term of d gate_weight: ds * (x + h2) for middleX; ds * x and ds * h2 for small.
template <typename T>
PETAL_HD T row_weight_grad(T ds, T v) {
  return ds * v;
}

}  // namespace petal
