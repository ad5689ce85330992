// Dropout mask values of a run of elements from the Philox stream of petal/philox.h, on the CPU.
// The generators of kBlock consecutive counters advance together (structure of arrays), which the
// compiler vectorises; the bits are those of petal::dropout_bits.
#pragma once

#include <algorithm>
#include <cstdint>

#include "petal/philox.h"

namespace petal_C::cpu {

struct Dropout {
  bool on = false;
  uint64_t seed = 0;
  uint32_t threshold = 0;
  double keep = 1.0;  // 1 / (1 - p)

  Dropout() = default;
  Dropout(double p, int64_t seed_)
      : on(p > 0.0),
        seed(static_cast<uint64_t>(seed_)),
        threshold(petal::dropout_threshold(p)),
        keep(p > 0.0 ? 1.0 / (1.0 - p) : 1.0) {}

  // dst[j] = mask value of element first + j, j < n: keep_value or 0.
  template <typename scalar_t>
  void fill(int64_t first, int64_t n, scalar_t keep_value, scalar_t* dst) const {
    constexpr int kBlock = 16;
    uint32_t bits[4 * kBlock];
    const int64_t end = first + n;
    for (int64_t g = first >> 2; g * 4 < end; g += kBlock) {
      uint32_t c0[kBlock], c1[kBlock], c2[kBlock], c3[kBlock];
      for (int l = 0; l < kBlock; ++l) {
        c0[l] = static_cast<uint32_t>(static_cast<uint64_t>(g + l));
        c1[l] = static_cast<uint32_t>(static_cast<uint64_t>(g + l) >> 32);
        c2[l] = c3[l] = 0;
      }
      uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
      for (int round = 0; round < 10; ++round) {
        for (int l = 0; l < kBlock; ++l) {
          uint32_t a = k0, b = k1;
          petal::philox_round(c0[l], c1[l], c2[l], c3[l], a, b);
        }
        k0 += petal::kPhiloxW0;
        k1 += petal::kPhiloxW1;
      }
      for (int l = 0; l < kBlock; ++l) {
        bits[4 * l] = c0[l];
        bits[4 * l + 1] = c1[l];
        bits[4 * l + 2] = c2[l];
        bits[4 * l + 3] = c3[l];
      }
      const int64_t lo = std::max(first, g * 4), hi = std::min(end, (g + kBlock) * 4);
      for (int64_t e = lo; e < hi; ++e)
        dst[e - first] = petal::dropout_value(bits[e - g * 4], threshold, keep_value);
    }
  }
};

}  // namespace petal_C::cpu
