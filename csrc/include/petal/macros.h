// petal/macros.h — what makes the element-wise math headers compile for both host C++ and nvcc.
//
//   PETAL_HD          qualifier of every header function: `__host__ __device__ __forceinline__` under
//                     nvcc/hip, a forced inline in host C++ too (a call left in a vectorised loop, even
//                     through the PLT, once cost the large gate's forward half its speed).
//   petal::Math<T>    customisation point for the few transcendental helpers the math needs
//                     (today: Math<T>::sigmoid). Specialised here for float and double; the CPU
//                     kernels add a specialisation for at::vec::Vectorized<float/double>, the CUDA kernels may add device
//                     intrinsics. Specialise it *before* instantiating a header template with a new T.
//
// No torch headers here or in any petal/*.h: they are included by .cu files built without torch.
#pragma once

#include <math.h>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define PETAL_HD __host__ __device__ __forceinline__
#elif defined(_MSC_VER)
#define PETAL_HD __forceinline
#else
#define PETAL_HD inline __attribute__((always_inline))
#endif

namespace petal {

template <typename T>
struct Math;

template <>
struct Math<float> {
  static PETAL_HD float sigmoid(float v) { return 1.0f / (1.0f + ::expf(-v)); }
};

template <>
struct Math<double> {
  static PETAL_HD double sigmoid(double v) { return 1.0 / (1.0 + ::exp(-v)); }
};

// sigmoid(v) = 1 / (1 + exp(-v)); NaN in -> NaN out, ±inf -> 1 / 0.
template <typename T>
PETAL_HD T sigmoid(T v) {
  return Math<T>::sigmoid(v);
}

// d sigmoid / d v expressed through the sigmoid's value g.
template <typename T>
PETAL_HD T sigmoid_grad(T g) {
  return g * (T(1) - g);
}

}  // namespace petal
