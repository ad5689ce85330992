// petal/philox.h — the counter-based dropout stream of gated_residual, host and device.
//
// Element i of a call (its index in the row-major (rows, d) layout) is kept when
//     bits(seed, i) = Philox4x32-10(key = seed, counter = (lo32(i / 4), hi32(i / 4), 0, 0))[i % 4]
// is >= threshold = floor(p * 2^32); a kept element is multiplied by 1 / (1 - p). The same definition
// is written in PyTorch (petal_kernels/philox.py, the reference) and Triton (petal_kernels/triton), so
// every backend drops the same elements for the same seed, and the backward regenerates the mask
// instead of saving it. Philox4x32-10 is Salmon et al. (SC'11), as in Random123, cuRAND and Triton.
#pragma once

#include <stdint.h>

#include "petal/macros.h"

namespace petal {

constexpr uint32_t kPhiloxM0 = 0xD2511F53u, kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u, kPhiloxW1 = 0xBB67AE85u;

struct Philox4 {
  uint32_t v[4];
};

// One Philox round on the counter (c0..c3) and the key bump that follows it.
PETAL_HD void philox_round(uint32_t& c0, uint32_t& c1, uint32_t& c2, uint32_t& c3, uint32_t& k0, uint32_t& k1) {
  const uint64_t p0 = static_cast<uint64_t>(kPhiloxM0) * c0;
  const uint64_t p1 = static_cast<uint64_t>(kPhiloxM1) * c2;
  c0 = static_cast<uint32_t>(p1 >> 32) ^ c1 ^ k0;
  c2 = static_cast<uint32_t>(p0 >> 32) ^ c3 ^ k1;
  c1 = static_cast<uint32_t>(p1);
  c3 = static_cast<uint32_t>(p0);
  k0 += kPhiloxW0;
  k1 += kPhiloxW1;
}

PETAL_HD Philox4 philox4x32_10(uint64_t counter, uint64_t seed) {
  uint32_t c0 = static_cast<uint32_t>(counter), c1 = static_cast<uint32_t>(counter >> 32), c2 = 0, c3 = 0;
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < 10; ++round) philox_round(c0, c1, c2, c3, k0, k1);
  return Philox4{{c0, c1, c2, c3}};
}

// threshold = floor(p * 2^32), saturated; the same as petal_kernels.philox.threshold.
inline uint32_t dropout_threshold(double p) {
  const double t = p * 4294967296.0;
  return t >= 4294967295.0 ? 0xFFFFFFFFu : static_cast<uint32_t>(t);
}

// The 32 random bits of element `index`.
PETAL_HD uint32_t dropout_bits(uint64_t seed, uint64_t index) {
  return philox4x32_10(index >> 2, seed).v[index & 3];
}

// Keep-mask value of one element: `keep_value` (1 / (1 - p) in the tensor's type) or 0.
template <typename T>
PETAL_HD T dropout_value(uint32_t bits, uint32_t threshold, T keep_value) {
  return bits >= threshold ? keep_value : T(0);
}

}  // namespace petal
