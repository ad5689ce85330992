// csrc/cuda/bindings_cuda.cpp compiled for the CPU against the emulated kernels: its CUDA
// registrations land on the CPU key of a test library `petal_C_emu` (whose schemas are the real
// ones, pasted in by tests/test_cuda_emulated.py as PETAL_EMU_SCHEMAS), `is_cuda` checks read
// `is_cpu`, and the stream/guard come from tests/cuda_emu/stubs.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "c10/cuda/CUDAGuard.h"
#include "c10/cuda/CUDAStream.h"

#include "schemas.inc"  // TORCH_LIBRARY(petal_C_emu, m) { m.def(...) ... }

#undef TORCH_LIBRARY_IMPL
#define TORCH_LIBRARY_IMPL(ns, k, m) _TORCH_LIBRARY_IMPL(petal_C_emu, CPU, m, C10_UID)
#define is_cuda is_cpu

#include "bindings_cuda.cpp"
