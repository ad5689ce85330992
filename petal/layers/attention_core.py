"""Multi-head attention ``softmax(q kᵀ·scaling + mask) @ v`` with dropout on the probabilities, in fewer
passes than ``transformers``' eager path or SDPA's math path (which CPU training takes whenever the
attention dropout is non-zero).

The scaling is applied to q (the shorter side in cross-attention: a GEMM's ``alpha`` would scale the
key-sized gradient in the backward), the mask is added in place, and the dropout's ``1/(1-p)`` is in
the keep mask's values, so neither product's backward has an extra pass. The math equals
``eager_attention_forward`` / SDPA (same dropout rate at the same place) up to float rounding.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .fast_dropout import keep_mask


def additive_mask(mask: Optional[Tensor], dtype: torch.dtype) -> tuple[bool, Optional[Tensor]]:
    """(supported, additive mask) for an attention mask as ``transformers`` hands it over: ``None``,
    an additive float mask (eager), or a boolean keep mask (SDPA, turned into 0 / -inf as SDPA does).

    A boolean mask with a fully masked query row is not supported: SDPA zeroes such rows, a plain
    softmax would not. Checking for one needs the mask's values on the host, so off the CPU boolean
    masks are left to ``transformers``.
    """
    if mask is None:
        return True, None
    if not isinstance(mask, Tensor) or mask.dim() != 4:
        return False, None
    if mask.dtype == torch.bool:
        # the fully-masked-row test would synchronise a GPU with the host: transformers' path there
        if mask.device.type != "cpu" or not bool(mask.any(dim=-1).all()):
            return False, None
        additive = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
        return True, additive.masked_fill_(~mask, float("-inf"))
    if mask.is_floating_point():
        return True, mask.to(dtype)
    return False, None


def attention(q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor], scaling: float,
              dropout: float) -> Tensor:
    """``q`` (B, H, Lq, D), ``k``/``v`` (B, H, Lk, D); ``mask`` None or additive, broadcastable to
    (B, H, Lq, Lk); ``dropout`` the probability rate (0 in eval). Returns the output (B, Lq, H·D)."""
    B, H, Lq, D = q.shape
    Lk = k.shape[-2]
    q3 = q.reshape(B * H, Lq, D) * scaling
    k3, v3 = k.reshape(B * H, Lk, D), v.reshape(B * H, Lk, D)
    scores = torch.bmm(q3, k3.transpose(1, 2))
    if mask is not None:
        scores.view(B, H, Lq, Lk).add_(mask)
    probs = torch.softmax(scores, dim=-1)
    if dropout > 0:
        probs = probs * keep_mask(probs, dropout, 1.0 / (1 - dropout))
    out = torch.bmm(probs, v3)
    return out.view(B, H, Lq, D).transpose(1, 2).reshape(B, Lq, H * D)


__all__ = ["additive_mask", "attention"]
