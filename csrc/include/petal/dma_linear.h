// petal/dma_linear.h — element epilogues of the DMA linear (DESIGN §2.1), host and device.
//
// The GEMMs (t = x downᵀ, base = x Wᵀ, upd = z upᵀ, dz = dy up, ...) run elsewhere; these are the
// passes between them. Templates on the compute type T (float/double, Vectorized, device float).
//   forward :  z = dma_scaled(t, scale)                    R-wide: z = t * scale
//              y = dma_output(base, gamma, bias, upd)      N-wide: gamma * base + bias + upd
//                  dma_output(base, gamma, upd)            (no bias)
//   backward:  dt = dma_dt_accumulate(dt, dz, scale)       R-wide, summed over the J projections
//              d_scale = dma_scale_grad(dz, t)             R-wide (summed over rows for a static (R,) scale)
//              d_gamma = Σ_rows dma_gamma_grad(dy, base)   N-wide
//              gdy = dma_gamma_dy(dy, gamma)               gamma * dy, the frozen path's share of dx
#pragma once

#include "petal/macros.h"

namespace petal {

template <typename T>
PETAL_HD T dma_scaled(T t, T scale) {
  return t * scale;
}

template <typename T>
PETAL_HD T dma_output(T base, T gamma, T bias, T upd) {
  return (gamma * base + bias) + upd;
}

template <typename T>
PETAL_HD T dma_output(T base, T gamma, T upd) {
  return gamma * base + upd;
}

template <typename T>
PETAL_HD T dma_dt_accumulate(T dt, T dz, T scale) {
  return dt + dz * scale;
}

template <typename T>
PETAL_HD T dma_scale_grad(T dz, T t) {
  return dz * t;
}

template <typename T>
PETAL_HD T dma_gamma_grad(T dy, T base) {
  return dy * base;
}

template <typename T>
PETAL_HD T dma_gamma_dy(T dy, T gamma) {
  return dy * gamma;
}

}  // namespace petal
