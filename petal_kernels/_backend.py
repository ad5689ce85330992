"""Which implementation runs an op: chosen per call by device, availability and ``PETAL_BACKEND``.

A backend is a module exposing ``dma_linear_forward``, ``dma_linear_backward``,
``gated_residual_forward`` and ``gated_residual_backward`` with the canonical signatures of
``petal_kernels.reference``.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import warnings
from types import ModuleType

import torch

BACKENDS = ("reference", "cpu", "triton", "cuda")
ENV_VAR = "PETAL_BACKEND"

_MODULES = {
    "reference": "petal_kernels.reference",
    "cpu": "petal_kernels._cpu",
    "triton": "petal_kernels.triton",
    "cuda": "petal_kernels._cuda",
}
_loaded: dict[str, ModuleType | None] = {}
_load_errors: dict[str, str] = {}
_forced: str | None = None  # process-wide: autograd may run backward on another thread
_warned_missing_ext = False


def _load(name: str) -> ModuleType | None:
    if name not in _loaded:
        try:
            module = importlib.import_module(_MODULES[name])
            ok = getattr(module, "is_available", lambda: True)()
            if not ok:
                _load_errors[name] = getattr(module, "unavailable_reason", lambda: "")()
            _loaded[name] = module if ok else None
        except ImportError as e:  # triton is not installed
            _load_errors[name] = f"{type(e).__name__}: {e}"
            _loaded[name] = None
    return _loaded[name]


def compiled_runs(x: torch.Tensor) -> bool:
    """Whether ``x``'s device runs on a compiled backend (cpu, cuda) of the extension, as selected."""
    if x.is_cpu:
        return requested() in (None, "cpu") and _load("cpu") is not None
    return x.is_cuda and backend_name(x.device) == "cuda"


def _triton_runs_on(device: torch.device) -> bool:
    return device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


def _supports(name: str, device: torch.device) -> bool:
    if name == "reference":
        return True
    if name == "cpu":
        return device.type == "cpu" and _load("cpu") is not None
    if name == "triton":
        return _triton_runs_on(device) and _load("triton") is not None
    if name == "cuda":
        return device.type == "cuda" and _load("cuda") is not None
    return False


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """The backends that can run tensors on ``device`` in this process."""
    device = torch.device(device)
    return [name for name in BACKENDS if _supports(name, device)]


def _default(device: torch.device) -> str:
    global _warned_missing_ext
    if device.type == "cuda":
        for name in ("triton", "cuda"):
            if _supports(name, device):
                return name
        return "reference"
    if device.type == "cpu":
        if _supports("cpu", device):
            return "cpu"
        if not _warned_missing_ext:  # nothing built at all; a build for another torch raised above
            _warned_missing_ext = True
            warnings.warn(
                f"petal_kernels: {_load_errors.get('cpu', 'the compiled extension is not available')}; "
                "using the slower 'reference' backend.",
                RuntimeWarning,
                stacklevel=4,
            )
    return "reference"


def requested() -> str | None:
    """The backend forced by ``use_backend`` or ``PETAL_BACKEND``, if any."""
    name = _forced or os.environ.get(ENV_VAR) or None
    if name is not None and name not in BACKENDS:
        raise ValueError(f"{ENV_VAR} must be one of {BACKENDS}, got {name!r}")
    return name


def backend_name(device: torch.device) -> str:
    name = requested()
    if name is None:
        return _default(device)
    if not _supports(name, device):
        why = _load_errors.get(name, "")
        raise RuntimeError(
            f"petal_kernels backend {name!r} cannot run tensors on device {device}"
            + (f": {why}" if why else "")
            + f". Available here: {available_backends(device)}"
        )
    return name


def select(device: torch.device) -> ModuleType:
    return _load(backend_name(device))


@contextlib.contextmanager
def use_backend(name: str | None):
    """Force a backend for the ops called inside the block (``None``: automatic selection).

    Process-wide rather than per thread, because autograd may run the backward on another thread.
    """
    global _forced
    if name is not None and name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    previous, _forced = _forced, name
    try:
        yield
    finally:
        _forced = previous
