"""Loads the compiled extension built for the running torch (modules: petal_kernels/_build_spec.py).

The modules live in ``petal_kernels/_ext/<torch tag>/``. Loading imports the core module ``_C`` (operator
schemas, C++ autograd ops, CUDA kernels) and the CPU kernels of the widest ISA the host runs, by
``torch.backends.cpu.get_cpu_capability()`` (which honours ``ATEN_CPU_CAPABILITY``, e.g. ``default`` or
``avx2`` to force narrower kernels).

Two failures differ: nothing built at all (``PETAL_SKIP_EXT=1`` at install) is :class:`NotBuilt`, after
which ops fall back to the reference backend with a warning; a build for another torch, or one that does
not import, is :class:`Mismatch`, an error at the first op call that names both torch versions and the
command that rebuilds, never a silent slow path.
"""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path

import torch

from . import _build_spec as spec

PACKAGE_DIR = Path(__file__).resolve().parent
EXT_DIR = PACKAGE_DIR / spec.EXT_DIR


class NotBuilt(ImportError):
    """No compiled extension exists for any torch."""


class Mismatch(RuntimeError):
    """The compiled extension exists but not for this torch, or it fails to load."""


@dataclasses.dataclass(frozen=True)
class Loaded:
    torch_version: str
    directory: Path
    cpu_isa: str  # ISA of the CPU kernels that run: "avx512", "avx2" or "default"
    host_capability: str  # torch.backends.cpu.get_cpu_capability()


_loaded: Loaded | None = None
_error: Exception | None = None


def load() -> Loaded:
    """The loaded extension (imported on the first call); raises :class:`NotBuilt` or :class:`Mismatch`."""
    global _loaded, _error
    if _loaded is None and _error is None:
        try:
            _loaded = _import()
        except (NotBuilt, Mismatch) as e:
            _error = e
    if _error is not None:
        raise _error
    return _loaded


def rebuild_command() -> str:
    """How to build the extension for the running torch, for this install's kind."""
    root = PACKAGE_DIR.parent
    if (root / "setup.py").is_file() and (root / "csrc").is_dir():  # a source tree (editable install)
        return f"pip install --no-build-isolation -e {root}"
    return "pip install --force-reinstall --no-deps <the petal source you installed from>"


def _built_tags() -> list[str]:
    if not EXT_DIR.is_dir():
        return []
    return sorted(d.name for d in EXT_DIR.iterdir() if any(d.glob(f"{spec.CORE}.*")))


def _import() -> Loaded:
    version = str(torch.__version__)
    tag = spec.torch_tag(version)
    built = _built_tags()
    if tag not in built:
        if not built:
            raise NotBuilt("the compiled extension of petal_kernels is not built (installed with "
                           "PETAL_SKIP_EXT=1, or a source tree never built); build it with "
                           f"`{rebuild_command()}`")
        raise Mismatch(
            f"petal_kernels' compiled extension was built for another torch ({', '.join(built)} in "
            f"{EXT_DIR}) "
            f"but torch {version} runs here. Rebuild it for this torch with `{rebuild_command()}`, or set "
            "PETAL_BACKEND=reference to run the slow reference kernels instead.")
    capability = torch.backends.cpu.get_cpu_capability()
    try:
        importlib.import_module(spec.module_name(version, spec.CORE))
        from ._ops import register_compiled_fakes  # here: _ops imports the backends, which import this

        register_compiled_fakes()
        for isa in spec.runnable_isas(capability):
            if any((EXT_DIR / tag).glob(f"_cpu_{isa}.*")):
                importlib.import_module(spec.module_name(version, f"_cpu_{isa}"))
                return Loaded(version, EXT_DIR / tag, isa, capability)
    except ImportError as e:  # e.g. an undefined symbol: built against another build of this torch version
        raise Mismatch(f"petal_kernels' compiled extension in {EXT_DIR / tag} does not load with torch "
                       f"{version} ({type(e).__name__}: {e}). Rebuild it with `{rebuild_command()}`, or set "
                       "PETAL_BACKEND=reference to run the slow reference kernels instead.") from e
    raise Mismatch(f"{EXT_DIR / tag} has no CPU kernel module this host runs (CPU capability {capability}); "
                   f"rebuild it with `{rebuild_command()}`")
