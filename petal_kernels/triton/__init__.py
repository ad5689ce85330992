"""The ``triton`` backend: Triton kernels for the canonical ops of ``petal_kernels.reference``.

Runs on CUDA tensors, and on CPU tensors when ``TRITON_INTERPRET=1`` was set before this package
was imported (``triton.jit`` reads it when it decorates the kernels). float16, bfloat16 and float32 run
the kernels with fp32 accumulation; float64 (the test dtype, not a GPU training dtype) runs the
reference math. Kernels: ``dma_linear.py`` and ``gated_residual.py``; launch configurations:
``autotune.py``.
"""

from __future__ import annotations

import contextlib

import torch
import triton  # noqa: F401 - an ImportError here tells _backend this backend is unavailable

from .. import reference
from . import autotune, dma_linear, gated_residual

__all__ = [
    "dma_linear_backward", "dma_linear_forward", "gated_residual_backward", "gated_residual_forward",
    "is_available", "unavailable_reason",
]


def is_available() -> bool:
    return True  # this module imported, so triton did


def unavailable_reason() -> str:
    return ""


def _use_reference(x: torch.Tensor) -> bool:
    if x.device.type != "cuda" and not autotune.INTERPRET:
        raise RuntimeError(
            f"the triton backend got tensors on {x.device}; CPU tensors need TRITON_INTERPRET=1 in the "
            "environment before petal_kernels.triton is imported"
        )
    return x.dtype == torch.float64


@contextlib.contextmanager
def _on_device(x: torch.Tensor):
    """Launch on x's GPU, whatever the current device is."""
    if x.device.type == "cuda":
        with torch.cuda.device(x.device):
            yield
    else:
        yield


def dma_linear_forward(x, weights, biases, down, ups, scales, gammas):
    if _use_reference(x):
        return reference.dma_linear_forward(x, weights, biases, down, ups, scales, gammas)
    with _on_device(x):
        return dma_linear.forward(x, weights, biases, down, ups, scales, gammas)


def dma_linear_backward(dys, x, weights, down, ups, scales, gammas, t, bases, needs):
    if _use_reference(x):
        return reference.dma_linear_backward(dys, x, weights, down, ups, scales, gammas, t, bases, needs)
    with _on_device(x):
        return dma_linear.backward(dys, x, weights, down, ups, scales, gammas, t, bases, needs)


def gated_residual_forward(x, h, u, granularity, adapter_scale, gate_scale, gate_logits, gate_weight,
                           gate_bias, gate_vector, dropout_mask, batch):
    args = (x, h, u, granularity, adapter_scale, gate_scale, gate_logits, gate_weight, gate_bias,
            gate_vector, dropout_mask, batch)
    if _use_reference(x):
        return reference.gated_residual_forward(*args)
    with _on_device(x):
        return gated_residual.forward(*args)


def gated_residual_backward(dout, x, h, u, granularity, adapter_scale, gate_scale, gate_logits,
                            gate_weight, gate_bias, gate_vector, dropout_mask, batch, stat):
    args = (dout, x, h, u, granularity, adapter_scale, gate_scale, gate_logits, gate_weight, gate_bias,
            gate_vector, dropout_mask, batch, stat)
    if _use_reference(x):
        return reference.gated_residual_backward(*args)
    with _on_device(x):
        return gated_residual.backward(*args)
