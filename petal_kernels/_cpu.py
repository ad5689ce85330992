"""The ``cpu`` backend: the compiled CPU kernels (csrc/cpu; loaded by _extension.py) behind the canonical API.

The four functions only adapt the canonical signatures of ``petal_kernels.reference`` to the
``torch.ops.petal_C`` schemas (listed in csrc/library.cpp) and turn the 0-element tensors the
kernels return for gradients nobody asked for into ``None``. Nothing here is device specific: the
same ``torch.ops.petal_C`` calls reach the CUDA kernels for CUDA tensors, so a CUDA backend can
re-export these functions next to its own ``is_available``.
"""

from __future__ import annotations

import torch

from . import _extension

_not_built: str | None = None


def _ops():
    return torch.ops.petal_C


def is_available() -> bool:
    """True when the compiled extension for this torch loaded; False when none is built at all. A build
    for another torch, or one that does not load, raises ``_extension.Mismatch``: never a silent fallback."""
    global _not_built
    try:
        _extension.load()
    except _extension.NotBuilt as e:
        _not_built = str(e)
        return False
    return True


def unavailable_reason() -> str:
    return "" if is_available() else str(_not_built)


# --------------------------------------------------------------------------- dma_linear


def dma_linear_forward(x, weights, biases, down, ups, scales, gammas):
    ys, t, bases = _ops().dma_linear_forward(
        x, list(weights), list(biases), down, list(ups), list(scales), list(gammas))
    return list(ys), t, list(bases)


def dma_linear_backward(dys, x, weights, down, ups, scales, gammas, t, bases, needs):
    need_x, need_down, need_up, need_scale, need_gamma = (bool(n) for n in needs)
    gammas = list(gammas)
    dx, d_down, d_ups, d_scales, d_gammas = _ops().dma_linear_backward(
        list(dys), x, list(weights), down, list(ups), list(scales), gammas, t, list(bases),
        [need_x, need_down, need_up, need_scale, need_gamma])
    return (
        dx if need_x else None,
        d_down if need_down else None,
        [g if need_up else None for g in d_ups],
        [g if need_scale else None for g in d_scales],
        [g if (need_gamma and gamma is not None) else None for g, gamma in zip(d_gammas, gammas)],
    )


# --------------------------------------------------------------------------- gated_residual


def _int64(seed: int) -> int:
    """The seed's 64 bits as the signed int the schema's ``int`` holds."""
    seed &= (1 << 64) - 1
    return seed - (1 << 64) if seed >= 1 << 63 else seed


def gated_residual_forward(
    x, h, u, granularity, adapter_scale, gate_scale, gate_logits, gate_weight, gate_bias,
    gate_vector, dropout_mask, dropout_p, dropout_seed, batch,
):
    out, stat = _ops().gated_residual_forward(
        x, h, u, granularity, float(adapter_scale), float(gate_scale), gate_logits, gate_weight,
        gate_bias, gate_vector, dropout_mask, float(dropout_p), _int64(dropout_seed), int(batch))
    return out, stat


def gated_residual_backward(
    dout, x, h, u, granularity, adapter_scale, gate_scale, gate_logits, gate_weight, gate_bias,
    gate_vector, dropout_mask, dropout_p, dropout_seed, batch, stat,
):
    dx, dh, du, d_logits, d_weight, d_bias, d_vector = _ops().gated_residual_backward(
        dout, x, h, u, granularity, float(adapter_scale), float(gate_scale), gate_logits, gate_weight,
        gate_bias, gate_vector, dropout_mask, float(dropout_p), _int64(dropout_seed), int(batch), stat)
    row_gate = granularity in ("middleX", "small")
    return (
        dx, dh, du,
        d_logits if granularity == "large" else None,
        d_weight if row_gate else None,
        d_bias if row_gate else None,
        d_vector if granularity == "middleY" else None,
    )
