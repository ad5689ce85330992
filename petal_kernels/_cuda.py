"""The ``cuda`` backend: the CUDA C++ kernels of ``petal_kernels._C`` (csrc/cuda), for CUDA tensors.

The ``petal_C`` op schemas are device-neutral: ``torch.ops.petal_C.*`` dispatches on the tensors'
device to the CPU or the CUDA kernels. So the adapter from the canonical backend signatures to those
ops is the CPU backend's (``petal_kernels._cpu``), reused as is; this module only says whether the
CUDA kernels exist in this process.
"""

from __future__ import annotations

import torch

from . import _cpu
from ._cpu import (  # noqa: F401  (the four canonical functions of a backend)
    dma_linear_backward,
    dma_linear_forward,
    gated_residual_backward,
    gated_residual_forward,
)

OPS = ("dma_linear_forward", "dma_linear_backward", "gated_residual_forward", "gated_residual_backward")


def _missing_kernels() -> list[str]:
    return [op for op in OPS if not hasattr(torch.ops.petal_C, op)
            or not torch._C._dispatch_has_kernel_for_dispatch_key(f"petal_C::{op}", "CUDA")]


def unavailable_reason() -> str:
    """Why ``is_available()`` is False ("" when it is True)."""
    if not torch.cuda.is_available():
        return "torch.cuda.is_available() is False (no CUDA device or a CPU-only build of torch)"
    if not _cpu.is_available():  # loads the extension, which registers the kernels
        return _cpu.unavailable_reason()
    missing = _missing_kernels()
    if missing:
        return (
            f"petal_kernels._C has no CUDA kernels for {', '.join(missing)}: it was built without CUDA "
            "(building them needs a CUDA toolkit and a CUDA build of torch; reinstall with "
            "`PETAL_FORCE_CUDA=1 pip install --no-build-isolation .`)"
        )
    return ""


def is_available() -> bool:
    return torch.cuda.is_available() and _cpu.is_available() and not _missing_kernels()
