"""Builds the compiled backends of petal_kernels.

* ``petal_kernels._C``: the C++ CPU kernels (csrc/cpu, OpenMP) and the C++ autograd ops over them
  (csrc/autograd), always, unless skipped; in a CUDA build it also carries the CUDA kernels (csrc/cuda).

Environment switches (as flash-attention's):
  PETAL_SKIP_EXT=1     build no extension (petal_kernels falls back to the reference backend)
  PETAL_FORCE_CUDA=1   build the CUDA kernels even when torch.cuda.is_available() is False
                       (needs a CUDA toolkit and a CUDA build of torch)
  PETAL_NO_CUDA=1      never build the CUDA kernels
  PETAL_CUDA_ARCHS     e.g. "80;90" (default: TORCH_CUDA_ARCH_LIST or "80;90")
  CUDA_HOME            the CUDA toolkit root, when torch's guess (from nvcc on PATH) is wrong
  PETAL_CPU_ISA        generic | avx2 | avx512: the x86-64 vector ISA of the CPU kernels (default: the
                       one torch uses on the build machine, torch.backends.cpu.get_cpu_capability())
  MAX_JOBS             parallel compile jobs (ninja)
"""

import glob
import os
import platform
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name: str) -> bool:
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def _openmp_flags():
    if sys.platform == "darwin":
        return [], []
    if sys.platform == "win32":
        return ["/openmp"], []
    return ["-fopenmp"], ["-fopenmp"]


_CPU_ISA_FLAGS = {  # as torch.compile's C++ code for the same at::vec capability
    "avx2": ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"],
    "avx512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c",
               "-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512"],
}


def _cpu_vector_flags(torch):
    """at::vec::Vectorized kernels for the widest ISA torch itself runs on this machine."""
    if sys.platform == "win32" or platform.machine().lower() not in ("x86_64", "amd64"):
        return []
    isa = os.environ.get("PETAL_CPU_ISA") or torch.backends.cpu.get_cpu_capability()
    return _CPU_ISA_FLAGS.get(isa.lower(), [])


def _cuda_wanted(torch) -> bool:
    from torch.utils.cpp_extension import CUDA_HOME

    if _flag("PETAL_NO_CUDA") or torch.version.cuda is None or CUDA_HOME is None:
        return False
    if not (_flag("PETAL_FORCE_CUDA") or torch.cuda.is_available()):
        return False
    if not os.path.exists(os.path.join(CUDA_HOME, "include", "cuda_runtime.h")):
        # e.g. nvcc on PATH is a wrapper script in /usr/local/bin, so torch guessed CUDA_HOME=/usr/local
        raise RuntimeError(
            f"CUDA_HOME={CUDA_HOME} has no include/cuda_runtime.h: set CUDA_HOME to the CUDA toolkit root "
            "(e.g. /usr/local/cuda), or PETAL_NO_CUDA=1 to build the CPU kernels only")
    return True


def extensions():
    if _flag("PETAL_SKIP_EXT"):
        return [], {}
    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    include = [os.path.join(ROOT, "csrc", "include")]
    omp_compile, omp_link = _openmp_flags()
    # No -std: torch.utils.cpp_extension adds the standard its headers need (C++20 from torch 2.14).
    cxx = ["-O3", *omp_compile, *_cpu_vector_flags(torch)]
    # csrc/autograd: device-neutral C++ autograd ops over the petal_C kernels (CPU and CUDA builds alike)
    sources = sorted(glob.glob(os.path.join("csrc", "cpu", "*.cpp"))
                     + glob.glob(os.path.join("csrc", "autograd", "*.cpp")))
    if _cuda_wanted(torch):
        archs = os.environ.get("PETAL_CUDA_ARCHS") or os.environ.get("TORCH_CUDA_ARCH_LIST") or "80;90"
        gencode = []
        for arch in archs.replace(" ", ";").split(";"):
            arch = arch.replace(".", "").replace("+PTX", "")
            if arch:
                gencode += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cpp")))
        ext = CUDAExtension(
            "petal_kernels._C",
            sources,
            include_dirs=include,
            define_macros=[("PETAL_WITH_CUDA", "1")],
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "-std=c++17", *gencode]},
            extra_link_args=omp_link,
        )
    else:
        ext = CppExtension(
            "petal_kernels._C",
            sources,
            include_dirs=include,
            extra_compile_args={"cxx": cxx},
            extra_link_args=omp_link,
        )
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
