// Dropout mask values of a run of elements from the Philox stream of petal/philox.h, on the CPU.
// The generators of kLanes consecutive counters advance together in vector lanes; the bits are those
// of petal::dropout_bits (tests compare them with the reference and Triton streams).
#pragma once

#include <algorithm>
#include <cstdint>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

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

#if defined(__AVX2__)
  // Four counters per __m256i, one per 64-bit lane with its 32-bit state words in the low halves:
  // _mm256_mul_epu32 reads only those, so no word is masked until the output. kChains vectors of
  // counters go through the rounds together (independent chains for the multiplier's latency).
  static constexpr int kChains = 4;

  void philox_lanes(uint64_t g, uint32_t* bits) const {
    const __m256i m0 = _mm256_set1_epi64x(petal::kPhiloxM0), m1 = _mm256_set1_epi64x(petal::kPhiloxM1);
    static_assert(kLanes % (4 * kChains) == 0);
    for (int q = 0; q < kLanes / 4; q += kChains) {
      __m256i c0[kChains], c1[kChains], c2[kChains], c3[kChains];
      for (int v = 0; v < kChains; ++v) {
        const uint64_t first = g + 4 * (q + v);
        c0[v] = _mm256_set_epi64x(static_cast<int64_t>(first + 3), static_cast<int64_t>(first + 2),
                                  static_cast<int64_t>(first + 1), static_cast<int64_t>(first));
        c1[v] = _mm256_srli_epi64(c0[v], 32);
        c2[v] = c3[v] = _mm256_setzero_si256();
      }
      uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
      for (int round = 0; round < 10; ++round) {
        const __m256i key0 = _mm256_set1_epi64x(k0), key1 = _mm256_set1_epi64x(k1);
        for (int v = 0; v < kChains; ++v) {
          const __m256i p0 = _mm256_mul_epu32(c0[v], m0), p1 = _mm256_mul_epu32(c2[v], m1);
          c0[v] = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(p1, 32), c1[v]), key0);
          c2[v] = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(p0, 32), c3[v]), key1);
          c1[v] = p1;
          c3[v] = p0;
        }
        k0 += petal::kPhiloxW0;
        k1 += petal::kPhiloxW1;
      }
      for (int v = 0; v < kChains; ++v) {
        // lane l of a: words (c0, c1) of counter l; of b: (c2, c3); then counters 0..3 in order
        const __m256i a = _mm256_blend_epi32(c0[v], _mm256_slli_epi64(c1[v], 32), 0xAA);
        const __m256i b = _mm256_blend_epi32(c2[v], _mm256_slli_epi64(c3[v], 32), 0xAA);
        const __m256i even = _mm256_unpacklo_epi64(a, b), odd = _mm256_unpackhi_epi64(a, b);
        uint32_t* out = bits + 16 * (q + v);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), _mm256_permute2x128_si256(even, odd, 0x20));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 8), _mm256_permute2x128_si256(even, odd, 0x31));
      }
    }
  }
#elif defined(__GNUC__)
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
