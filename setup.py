"""Builds the compiled backends of petal_kernels: the modules of petal_kernels/_build_spec.py, under
petal_kernels/_ext/<torch tag>/ (one directory per torch version, so builds for two torch versions never
overwrite each other), against the torch of the build environment. pyproject.toml's build backend
(build_backend/petal_build.py) makes that the torch of the environment being installed into.

* ``_C``: the operator schemas and the C++ autograd ops (csrc/library.cpp, csrc/autograd), built for the
  baseline ISA; in a CUDA build it also carries the CUDA kernels (csrc/cuda).
* ``_cpu_default``, ``_cpu_avx2``, ``_cpu_avx512`` (x86-64; elsewhere ``_cpu_default`` only): the CPU kernels
  (csrc/cpu, OpenMP, at::vec) compiled once per vector ISA; petal_kernels imports the widest one the host
  runs, so a wheel built on any x86-64 machine runs on every other.

Environment switches (as flash-attention's):
  PETAL_SKIP_EXT=1     build no extension (petal_kernels falls back to the reference backend)
  PETAL_FORCE_CUDA=1   build the CUDA kernels even when torch.cuda.is_available() is False
                       (needs a CUDA toolkit and a CUDA build of torch)
  PETAL_NO_CUDA=1      never build the CUDA kernels
  PETAL_CUDA_ARCHS     e.g. "80;90" (default: TORCH_CUDA_ARCH_LIST or "80;90")
  CUDA_HOME            the CUDA toolkit root, when torch's guess (from nvcc on PATH) is wrong
  MAX_JOBS             parallel compile jobs (ninja)
"""

import glob
import importlib.util
import os
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _load_spec():
    path = os.path.join(ROOT, "petal_kernels", "_build_spec.py")
    spec = importlib.util.spec_from_file_location("petal_build_spec", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SPEC = _load_spec()


def _flag(name: str) -> bool:
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def _openmp_flags():
    if sys.platform == "darwin":
        return [], []
    if sys.platform == "win32":
        return ["/openmp"], []
    return ["-fopenmp"], ["-fopenmp"]


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


def _build_ext_class():
    from torch.utils.cpp_extension import BuildExtension

    class BuildPerModule(BuildExtension):
        """Objects of each module in a directory of its own: the CPU kernel modules compile the same sources
        with different flags, and builds for different torch versions share nothing."""

        def build_extension(self, ext):
            temp = self.build_temp
            self.build_temp = os.path.join(temp, ext.name)
            try:
                super().build_extension(ext)
            finally:
                self.build_temp = temp

        def copy_extensions_to_source(self):  # setuptools copies in place but makes no directory
            for ext in self.extensions:
                os.makedirs(os.path.dirname(self.get_ext_filename(self.get_ext_fullname(ext.name))),
                            exist_ok=True)
            super().copy_extensions_to_source()

    return BuildPerModule.with_options(use_ninja=True)


def extensions():
    if _flag("PETAL_SKIP_EXT") or _flag("PETAL_METADATA_ONLY"):  # the second: set by build_backend/
        return [], {}
    import torch
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    include = [os.path.join(ROOT, "csrc", "include")]
    omp_compile, omp_link = _openmp_flags()
    # No -std: torch.utils.cpp_extension adds the standard its headers need (C++20 from torch 2.14).
    cxx = ["-O3", *omp_compile]
    hidden = [] if sys.platform == "win32" else ["-fvisibility=hidden"]
    core_sources = list(SPEC.CORE_SOURCES)
    core_name = SPEC.module_name(torch.__version__, SPEC.CORE)
    if _cuda_wanted(torch):
        archs = os.environ.get("PETAL_CUDA_ARCHS") or os.environ.get("TORCH_CUDA_ARCH_LIST") or "80;90"
        gencode = []
        for arch in archs.replace(" ", ";").split(";"):
            arch = arch.replace(".", "").replace("+PTX", "")
            if arch:
                gencode += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
        core_sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
        core_sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cpp")))
        core = CUDAExtension(
            core_name,
            core_sources,
            include_dirs=include,
            define_macros=[("PETAL_WITH_CUDA", "1")],
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "-std=c++17", *gencode]},
            extra_link_args=omp_link,
        )
    else:
        core = CppExtension(core_name, core_sources, include_dirs=include, extra_compile_args={"cxx": cxx},
                            extra_link_args=omp_link)
    cpu = [
        CppExtension(
            SPEC.module_name(torch.__version__, f"_cpu_{isa}"),
            list(SPEC.CPU_SOURCES),
            include_dirs=include,
            extra_compile_args={"cxx": [*cxx, *hidden, *flags]},
            extra_link_args=omp_link,
        )
        for isa, flags in SPEC.cpu_isas().items()
    ]
    return [core, *cpu], {"build_ext": _build_ext_class()}


ext_modules, cmdclass = extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
