// Test stand-in (tests/test_cuda_emulated.py): the emulated kernels run on the CPU, so there is
// no device to guard.
#pragma once
#include <c10/core/Device.h>

namespace c10::cuda {
struct CUDAGuard {
  explicit CUDAGuard(c10::Device) {}
};
}  // namespace c10::cuda
