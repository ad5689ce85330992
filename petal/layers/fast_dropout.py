"""Dropout keep masks from 32 random bits per element, cheaper than ``bernoulli_`` on the CPU.

``torch.empty_like(x).bernoulli_(1 - p)`` costs several ns per element on the CPU; one 64-bit
``random_`` draw gives two 32-bit uniforms. An element is kept when its uniform ``u`` in
[-2³¹, 2³¹) is ``>= round(p·2³²) - 2³¹``: the keep probability is ``1 - p`` to within 2⁻³³ (a float32
``bernoulli_`` compares against a 24-bit uniform). The generator is the device's default one, so
``torch.manual_seed`` reproduces the masks.
"""

from __future__ import annotations

import torch
from torch import Tensor

_INT64_MIN = -(2 ** 63)


def keep_mask(like: Tensor, p: float, value: float = 1.0) -> Tensor:
    """A tensor shaped like ``like`` (its dtype and device) holding ``value`` with probability ``1-p``
    and 0 otherwise (``0 <= p < 1``): 1 where the caller applies the ``1/(1-p)`` scale elsewhere,
    ``1/(1-p)`` for the scaled mask."""
    if not 0 <= p < 1:
        raise ValueError(f"p must be in [0, 1), got {p!r}")
    n = like.numel()
    bits = torch.empty((n + 1) // 2, dtype=torch.int64, device=like.device).random_(_INT64_MIN, None)
    u = bits.view(torch.int32)[:n].view(like.shape)
    threshold = round(p * 2 ** 32) - 2 ** 31
    if threshold >= 2 ** 31:  # p within 2⁻³³ of 1: nothing is kept
        return torch.zeros_like(like)
    mask = (u >= threshold).to(like.dtype)  # a Python int: compared in int32, no host-to-device copy
    return mask if value == 1 else mask.mul_(value)


__all__ = ["keep_mask"]
