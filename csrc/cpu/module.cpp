// The Python module _cpu_<isa>: the CPU kernels of csrc/cpu compiled for one x86-64 vector ISA
// (petal_kernels/_build_spec.py). Importing it runs the kernel files' TORCH_LIBRARY_IMPL(petal_C, CPU)
// registrations; petal_kernels imports the one module the host runs.
#include "../module_init.h"

PETAL_PYTHON_MODULE()
