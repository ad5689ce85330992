"""The ``triton`` backend: Triton kernels for the canonical ops of ``petal_kernels.reference``.

Runs on CUDA tensors, and on CPU tensors when ``TRITON_INTERPRET=1`` was set before this package
was imported (``triton.jit`` reads it when it decorates the kernels). float16, bfloat16 and float32
run the kernels with fp32 accumulation; float64 (the test dtype, not a GPU training dtype) and tensors
of 2**31 or more elements (beyond the kernels' int32 offsets) run the reference math.

Kernels: ``dma_linear.py``, ``gated_residual.py``; launch configurations: ``autotune.py``; compile
check for sm_80/sm_90 without a GPU: ``python -m petal_kernels.triton.compile_check``. Besides the
canonical functions: ``gated_residual_up``, the VL-PET up-projection fused with the gated residual
(forward only), so ``u`` never reaches memory.

The first call for each shape bucket autotunes (benchmarks the configs, which synchronises);
later calls launch without host synchronisation.
"""

from __future__ import annotations

import contextlib
import warnings

import torch
import triton  # noqa: F401 - an ImportError here tells _backend this backend is unavailable

from .. import reference
from . import autotune, dma_linear, gated_residual
from .fused_up import gated_residual_up

__all__ = [
    "dma_linear_backward", "dma_linear_forward", "gated_residual_backward", "gated_residual_forward",
    "gated_residual_up", "is_available", "unavailable_reason",
]


def is_available() -> bool:
    return True  # this module imported, so triton did


def unavailable_reason() -> str:
    return ""


INT32_ELEMS = 2 ** 31  # the kernels index with int32 offsets
_warned_large = False


def _use_reference(x: torch.Tensor, *others) -> bool:
    """float64, or a tensor too large for int32 offsets: run the reference math instead."""
    global _warned_large
    if x.device.type != "cuda" and not autotune.INTERPRET:
        raise RuntimeError(
            f"the triton backend got tensors on {x.device}; CPU tensors need TRITON_INTERPRET=1 in the "
            "environment before petal_kernels.triton is imported"
        )
    if x.dtype == torch.float64:
        return True
    flat = [x]
    for o in others:
        flat.extend(o if isinstance(o, (list, tuple)) else [o])
    if any(isinstance(t, torch.Tensor) and t.numel() >= INT32_ELEMS for t in flat):
        if not _warned_large:
            _warned_large = True
            warnings.warn("petal_kernels triton backend: a tensor has 2**31 or more elements, beyond "
                          "the kernels' int32 offsets; running the reference math for it", RuntimeWarning,
                          stacklevel=3)
        return True
    return False


@contextlib.contextmanager
def _on_device(x: torch.Tensor):
    """Launch on x's GPU, whatever the current device is."""
    if x.device.type == "cuda":
        with torch.cuda.device(x.device):
            yield
    else:
        yield


def dma_linear_forward(x, weights, biases, down, ups, scales, gammas):
    if _use_reference(x, weights, ups, scales):
        return reference.dma_linear_forward(x, weights, biases, down, ups, scales, gammas)
    with _on_device(x):
        return dma_linear.forward(x, weights, biases, down, ups, scales, gammas)


def dma_linear_backward(dys, x, weights, down, ups, scales, gammas, t, bases, needs):
    if _use_reference(x, dys, weights, bases):
        return reference.dma_linear_backward(dys, x, weights, down, ups, scales, gammas, t, bases, needs)
    with _on_device(x):
        return dma_linear.backward(dys, x, weights, down, ups, scales, gammas, t, bases, needs)


def gated_residual_forward(x, h, u, granularity, adapter_scale, gate_scale, gate_logits, gate_weight,
                           gate_bias, gate_vector, dropout_mask, dropout_p, dropout_seed, batch):
    args = (x, h, u, granularity, adapter_scale, gate_scale, gate_logits, gate_weight, gate_bias,
            gate_vector, dropout_mask, dropout_p, dropout_seed, batch)
    if _use_reference(x):
        return reference.gated_residual_forward(*args)
    with _on_device(x):
        return gated_residual.forward(*args)


def gated_residual_backward(dout, x, h, u, granularity, adapter_scale, gate_scale, gate_logits,
                            gate_weight, gate_bias, gate_vector, dropout_mask, dropout_p, dropout_seed, batch,
                            stat):
    args = (dout, x, h, u, granularity, adapter_scale, gate_scale, gate_logits, gate_weight, gate_bias,
            gate_vector, dropout_mask, dropout_p, dropout_seed, batch, stat)
    if _use_reference(x):
        return reference.gated_residual_backward(*args)
    with _on_device(x):
        return gated_residual.backward(*args)
