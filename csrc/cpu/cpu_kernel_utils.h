// Helpers shared by the CPU kernels: Vectorized specialisation of petal::Math, load/store of any float
// dtype as Vectorized<opmath>, horizontal sums, and the fixed row chunking that makes the gradient
// reductions independent of the thread count (partials per chunk, combined in chunk order).
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/macros/Macros.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <utility>

#include "petal/macros.h"

namespace petal {

template <typename V, typename = void>
struct HasExpU20 : std::false_type {};
template <typename V>
struct HasExpU20<V, std::void_t<decltype(std::declval<const V&>().exp_u20())>> : std::true_type {};

// sigmoid(v) = 1 / (1 + 2^n p(r)) with -v = n ln2 + r, |r| <= ln2 / 2, p ATen's exp_u20 polynomial,
// evaluated by Estrin's scheme: the large gate's loops are bound by the latency of this chain (the
// sigmoid of one vector has to finish before the out-of-order window moves on), and Horner's five
// dependent FMAs were a third of it. -v is clamped to +-87 (exp within float's normal range); below
// v = -87 the sigmoid (< 1.7e-38) is 0, as at -inf; NaN is put back at the end.
#if (defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)) && !defined(_MSC_VER)
// 2^n for whole-numbered float lanes n in [-126, 127], by building the exponent field.
template <typename Vec>
C10_ALWAYS_INLINE Vec pow2i(const Vec& n) {
#if defined(CPU_CAPABILITY_AVX512)
  const __m512i biased = _mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127));
  return _mm512_castsi512_ps(_mm512_slli_epi32(biased, 23));
#else
  const __m256i biased = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
  return _mm256_castsi256_ps(_mm256_slli_epi32(biased, 23));
#endif
}

template <typename Vec>
C10_ALWAYS_INLINE Vec fast_sigmoid(const Vec& v) {  // an out-of-line call in the loops cost 50 %
  constexpr float c1 = 0.999999701f, c2 = 0.499991506f, c3 = 0.166676521f, c4 = 0.0418978221f,
                  c5 = 0.00828929059f;
  constexpr float log2e = 1.44269504088896341f, ln2 = 0.693147180559945309f;
  using at::vec::fmadd;
  const Vec t = at::vec::clamp(v.neg(), Vec(-87.f), Vec(87.f));
  const Vec n = (t * Vec(log2e)).round();
  const Vec r = at::vec::fnmadd(n, Vec(ln2), t);
  const Vec r2 = r * r;
  const Vec low = fmadd(r, Vec(c1), Vec(1.f));                                  // 1 + c1 r
  const Vec mid = fmadd(r, Vec(c3), Vec(c2));                                   // c2 + c3 r
  const Vec high = fmadd(r, Vec(c5), Vec(c4));                                  // c4 + c5 r
  const Vec p = fmadd(fmadd(high, r2, mid), r2, low);
  const Vec s = Vec(1.f) / fmadd(p, pow2i(n), Vec(1.f));
  return Vec::blendv(Vec::blendv(s, Vec(0.f), v < Vec(-87.f)), v, v.isnan());
}
#endif

template <typename S>
struct Math<at::vec::Vectorized<S>> {
  using Vec = at::vec::Vectorized<S>;

  // The sigmoid's exp where fast_sigmoid does not apply. float: ATen's polynomial exp_u20 (a few ulp
  // here) instead of Sleef's 1-ulp exp; it clamps its input, so NaN and overflow are put back. double
  // keeps Sleef.
  static Vec exp(const Vec& v) {
    if constexpr (std::is_same_v<S, float> && HasExpU20<Vec>::value) {
      const Vec big(88.72283935546875f);  // ln(FLT_MAX): exp_u20 clamps above it
      Vec r = Vec::blendv(v.exp_u20(), Vec(std::numeric_limits<float>::infinity()), v > big);
      return Vec::blendv(r, v, v.isnan());
    } else {
      return v.exp();
    }
  }

  C10_ALWAYS_INLINE static Vec sigmoid(const Vec& v) {
#if (defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)) && !defined(_MSC_VER)
    if constexpr (std::is_same_v<S, float>) return fast_sigmoid(v);
#endif
    return Vec(S(1)) / (Vec(S(1)) + exp(-v));
  }
};

}  // namespace petal

namespace petal_C::cpu {

template <typename scalar_t>
using acc_t = at::opmath_type<scalar_t>;  // float for bf16/fp16, else the type itself

template <typename scalar_t>
using AccVec = at::vec::Vectorized<acc_t<scalar_t>>;

// Loads and stores AccVec<scalar_t>::size() elements (or the first n) of a scalar_t array.
template <typename scalar_t>
struct Io {
  using Vec = AccVec<scalar_t>;
  static constexpr int64_t kWidth = Vec::size();
  static constexpr bool kReduced = !std::is_same_v<scalar_t, acc_t<scalar_t>>;

  static Vec load(const scalar_t* p) {
    if constexpr (kReduced) {
      Vec v;
      at::vec::load_to_float(p, v);
      return v;
    } else {
      return Vec::loadu(p);
    }
  }

  static Vec load(const scalar_t* p, int64_t n) {
    if constexpr (kReduced) {
      if (n == kWidth) return load(p);
      acc_t<scalar_t> buf[kWidth] = {};
      for (int64_t i = 0; i < n; ++i) buf[i] = static_cast<acc_t<scalar_t>>(p[i]);
      return Vec::loadu(buf);
    } else {
      return Vec::loadu(p, n);
    }
  }

  static void store(scalar_t* p, const Vec& v, int64_t n = kWidth) {
    if constexpr (kReduced) {
      acc_t<scalar_t> buf[kWidth];
      v.store(buf);
      for (int64_t i = 0; i < n; ++i) p[i] = static_cast<scalar_t>(buf[i]);
    } else {
      v.store(p, n);
    }
  }
};

// Type of long reductions (gate scores, gradient sums over rows): double for float32/float64 inputs,
// float for half inputs, as petal_kernels.reference accumulates them.
template <typename scalar_t>
using red_t = std::conditional_t<std::is_same_v<scalar_t, float>, double, acc_t<scalar_t>>;

// An AccVec widened to red_t: kParts vectors of Vectorized<red_t> (2 for float -> double, else 1).
template <typename scalar_t>
struct Wide {
  using acc = acc_t<scalar_t>;
  using red = red_t<scalar_t>;
  using Vec = AccVec<scalar_t>;
  using RVec = at::vec::Vectorized<red>;
  static constexpr int64_t kParts = Vec::size() / RVec::size();
  RVec part[kParts];

  explicit Wide(const Vec& v) {
    if constexpr (kParts == 1) {
      part[0] = v;
#if defined(CPU_CAPABILITY_AVX512) && !defined(_MSC_VER)
    } else if constexpr (std::is_same_v<acc, float> && std::is_same_v<red, double> && kParts == 2) {
      const __m512 f = v;
      part[0] = _mm512_cvtps_pd(_mm512_castps512_ps256(f));
      part[1] = _mm512_cvtps_pd(_mm512_extractf32x8_ps(f, 1));
#elif defined(CPU_CAPABILITY_AVX2) && !defined(_MSC_VER)
    } else if constexpr (std::is_same_v<acc, float> && std::is_same_v<red, double> && kParts == 2) {
      const __m256 f = v;
      part[0] = _mm256_cvtps_pd(_mm256_castps256_ps128(f));
      part[1] = _mm256_cvtps_pd(_mm256_extractf128_ps(f, 1));
#endif
    } else {
      acc narrow[Vec::size()];
      red wide[Vec::size()];
      v.store(narrow);
      for (int64_t i = 0; i < Vec::size(); ++i) wide[i] = static_cast<red>(narrow[i]);
      for (int64_t k = 0; k < kParts; ++k) part[k] = RVec::loadu(wide + k * RVec::size());
    }
  }

  // dst[0 : Vec::size()] += term(part) for each part.
  template <typename F>
  void add_to(red* dst, const F& term) const {
    for (int64_t k = 0; k < kParts; ++k) {
      red* p = dst + k * RVec::size();
      (RVec::loadu(p) + term(part[k])).store(p);
    }
  }

  void add_to(red* dst) const {
    add_to(dst, [](const RVec& v) { return v; });
  }

  RVec sum() const {
    RVec s = part[0];
    for (int64_t k = 1; k < kParts; ++k) s = s + part[k];
    return s;
  }
};

// n rounded up to a whole number of AccVec<scalar_t>: the padded width of red_t scratch rows.
template <typename scalar_t>
inline int64_t padded(int64_t n) {
  const int64_t w = AccVec<scalar_t>::size();
  return (n + w - 1) / w * w;
}

template <typename T>
inline T hsum(const at::vec::Vectorized<T>& v) {
  return at::vec::vec_reduce_all<T>([](auto a, auto b) { return a + b; }, v);
}

// Rows are split into a number of chunks that depends on the row count only, so per-chunk partial
// sums combined in chunk order give the same bits for any thread count.
inline int64_t num_chunks(int64_t rows, int64_t min_rows = 32, int64_t max_chunks = 128) {
  return std::max<int64_t>(1, std::min<int64_t>(max_chunks, (rows + min_rows - 1) / min_rows));
}

// Grain of a parallel loop over the columns of `chunks` partial rows: small combines stay serial.
inline int64_t combine_grain(int64_t chunks) { return std::max<int64_t>(1, (int64_t{1} << 18) / std::max<int64_t>(chunks, 1)); }

// fn(chunk, row_begin, row_end) for every chunk of `rows`, chunks run in parallel.
template <typename F>
inline void for_each_chunk(int64_t rows, int64_t chunks, const F& fn) {
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) fn(c, rows * c / chunks, rows * (c + 1) / chunks);
  });
}

// Element-wise row loop over [0, n): body(Vec-index offset, count) with full vectors then one tail.
template <typename Vec, typename F>
inline void for_each_vec(int64_t n, const F& body) {
  int64_t i = 0;
  for (; i + Vec::size() <= n; i += Vec::size()) body(i, static_cast<int64_t>(Vec::size()));
  if (i < n) body(i, n - i);
}

}  // namespace petal_C::cpu
