// Dropout mask values of a run of elements from the Philox stream of petal/philox.h, on the CPU.
// The generators of kLanes consecutive counters advance together in vector lanes; the bits are those
// of petal::dropout_bits (tests compare them with the reference and Triton streams).
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
    uint32_t bits[4 * kLanes];
    const int64_t end = first + n;
    for (int64_t g = first >> 2; g * 4 < end; g += kLanes) {
      philox_lanes(static_cast<uint64_t>(g), bits);
      const int64_t lo = std::max(first, g * 4), hi = std::min(end, (g + kLanes) * 4);
      for (int64_t e = lo; e < hi; ++e)
        dst[e - first] = petal::dropout_value(bits[e - g * 4], threshold, keep_value);
    }
  }

 private:
  static constexpr int kLanes = 32;  // counters generated together

#if defined(__GNUC__)
  // kLanes generators side by side in 64-bit vector lanes holding 32-bit values, so the 32x32->64-bit
  // products of petal::philox_round vectorise; bits[4 l + j] = output j of counter g + l.
  using U64s = uint64_t __attribute__((vector_size(8 * kLanes)));

  void philox_lanes(uint64_t g, uint32_t* bits) const {
    U64s c0, c1, c2 = {}, c3 = {};
    for (int l = 0; l < kLanes; ++l) {
      c0[l] = (g + l) & 0xFFFFFFFFu;
      c1[l] = (g + l) >> 32;
    }
    const U64s low = c2 + 0xFFFFFFFFu;
    uint64_t k0 = seed & 0xFFFFFFFFu, k1 = seed >> 32;
    for (int round = 0; round < 10; ++round) {
      const U64s p0 = c0 * static_cast<uint64_t>(petal::kPhiloxM0);
      const U64s p1 = c2 * static_cast<uint64_t>(petal::kPhiloxM1);
      c0 = (p1 >> 32) ^ c1 ^ k0;
      c2 = (p0 >> 32) ^ c3 ^ k1;
      c1 = p1 & low;
      c3 = p0 & low;
      k0 = (k0 + petal::kPhiloxW0) & 0xFFFFFFFFu;
      k1 = (k1 + petal::kPhiloxW1) & 0xFFFFFFFFu;
    }
    for (int l = 0; l < kLanes; ++l) {
      bits[4 * l] = static_cast<uint32_t>(c0[l]);
      bits[4 * l + 1] = static_cast<uint32_t>(c1[l]);
      bits[4 * l + 2] = static_cast<uint32_t>(c2[l]);
      bits[4 * l + 3] = static_cast<uint32_t>(c3[l]);
    }
  }
#else
  void philox_lanes(uint64_t g, uint32_t* bits) const {
    for (int l = 0; l < kLanes; ++l) {
      const petal::Philox4 r = petal::philox4x32_10(g + l, seed);
      for (int j = 0; j < 4; ++j) bits[4 * l + j] = r.v[j];
    }
  }
#endif
};

}  // namespace petal_C::cpu
