"""What the compiled extension is made of, for setup.py (which reads this file by path, before torch or
petal_kernels can be imported) and for the loader (petal_kernels/_extension.py). No imports beyond the
standard library.

Modules, all under ``petal_kernels/_ext/<torch tag>/`` so that builds for different torch versions (two
venvs sharing one clone, an editable install and a wheel) never overwrite each other:

* ``_C``: the ``petal_C`` operator schemas and the C++ autograd op (csrc/library.cpp, csrc/autograd), and
  the CUDA kernels in a CUDA build; compiled for the baseline ISA.
* ``_cpu_<isa>``: the CPU kernels (csrc/cpu), one module per x86-64 vector ISA (``default``, ``avx2``,
  ``avx512``: the capabilities of ATen's ``CPU_CAPABILITY``), each compiled for its ISA. The loader
  imports the widest one the host runs, as ``torch.backends.cpu.get_cpu_capability()`` reports it (which
  honours ``ATEN_CPU_CAPABILITY``), so a wheel built on an AVX-512 machine runs on an AVX2 or older one.
"""

from __future__ import annotations

import platform
import re
import sys

PACKAGE = "petal_kernels"
EXT_DIR = "_ext"
CORE = "_C"

# ISA -> compiler flags, as ATen compiles its own kernels for the same at::vec capability
_X86_ISA_FLAGS = {
    "default": ["-DCPU_CAPABILITY=DEFAULT", "-DCPU_CAPABILITY_DEFAULT"],
    "avx2": ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"],
    "avx512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c",
               "-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512"],
}
# torch.backends.cpu.get_cpu_capability() -> the ISAs whose kernels run there, widest first
_RUNS_ON = {"AVX512": ("avx512", "avx2", "default"), "AVX2": ("avx2", "default")}

CPU_SOURCES = ("csrc/cpu/module.cpp", "csrc/cpu/dma_linear.cpp", "csrc/cpu/gated_residual.cpp")
CORE_SOURCES = ("csrc/library.cpp", "csrc/autograd/gated_residual.cpp")


def torch_tag(torch_version: str) -> str:
    """The directory of the modules built against ``torch_version``: ``2.13.0+cpu`` -> ``torch2_13_0_cpu``."""
    return "torch" + re.sub(r"\W", "_", torch_version)


def module_name(torch_version: str, module: str) -> str:
    return f"{PACKAGE}.{EXT_DIR}.{torch_tag(torch_version)}.{module}"


def cpu_isas(machine: str | None = None, platform_name: str | None = None) -> dict[str, list[str]]:
    """ISA -> flags of the CPU kernel modules a build makes on this kind of machine (x86-64 Linux/macOS:
    three; anything else: the default one, with no ISA flags)."""
    machine = (machine or platform.machine()).lower()
    platform_name = platform_name or sys.platform
    if platform_name == "win32" or machine not in ("x86_64", "amd64"):
        return {"default": list(_X86_ISA_FLAGS["default"])}
    return {isa: list(flags) for isa, flags in _X86_ISA_FLAGS.items()}


def runnable_isas(cpu_capability: str) -> tuple[str, ...]:
    """The ISAs whose kernels run on a host of ``cpu_capability`` (ATen's name), widest first."""
    return _RUNS_ON.get(cpu_capability.upper(), ("default",))
