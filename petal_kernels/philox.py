"""The counter-based dropout stream of ``gated_residual``, in PyTorch: the reference definition.

Element ``i`` of a call (its index in the row-major ``(rows, d)`` layout) is kept when
``Philox4x32-10(key=seed, counter=(lo32(i // 4), hi32(i // 4), 0, 0))[i % 4] >= floor(p * 2**32)``,
and a kept element is scaled by ``1 / (1 - p)``. The C++/CUDA kernels (csrc/include/petal/philox.h) and
the Triton kernels compute the same bits, so every backend drops the same elements for the same seed
and the backward regenerates the mask instead of saving it.

The arithmetic below stays inside int64 without overflow: 32x32-bit products are split into 16-bit
halves of the multiplier.
"""

from __future__ import annotations

import torch
from torch import Tensor

M0, M1 = 0xD2511F53, 0xCD9E8D57
W0, W1 = 0x9E3779B9, 0xBB67AE85
_MASK32 = 0xFFFFFFFF
SEED_BITS = 63  # seeds are drawn in [0, 2**63): non-negative int64, any 64-bit pattern is accepted


def threshold(p: float) -> int:
    """``floor(p * 2**32)``: an element whose 32 random bits are below it is dropped."""
    return min(int(p * 4294967296.0), _MASK32)


def keep_scale(p: float) -> float:
    return 1.0 / (1.0 - p)


def _mulhilo(a: Tensor, m: int) -> tuple[Tensor, Tensor]:
    """(hi, lo) 32-bit halves of ``a * m`` for uint32 values ``a`` held in int64 and a uint32 constant."""
    p_lo = a * (m & 0xFFFF)
    p_hi = a * (m >> 16)
    s = p_lo + ((p_hi & 0xFFFF) << 16)
    return ((p_hi >> 16) + (s >> 32)) & _MASK32, s & _MASK32


def philox4x32_10(counter: Tensor, seed: int) -> Tensor:
    """``(n, 4)`` int64 tensor of the four 32-bit outputs for each 64-bit counter in ``counter``."""
    seed &= (1 << 64) - 1
    c0, c1 = counter & _MASK32, (counter >> 32) & _MASK32
    c2 = c3 = torch.zeros_like(counter)
    k0, k1 = seed & _MASK32, seed >> 32
    for _ in range(10):
        hi0, lo0 = _mulhilo(c0, M0)
        hi1, lo1 = _mulhilo(c2, M1)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0, k1 = (k0 + W0) & _MASK32, (k1 + W1) & _MASK32
    return torch.stack([c0, c1, c2, c3], dim=-1)


def dropout_bits(seed: int, numel: int, device: torch.device | str = "cpu") -> Tensor:
    """The 32 random bits (int64 in [0, 2**32)) of elements ``0 .. numel-1``."""
    groups = torch.arange((numel + 3) // 4, dtype=torch.int64, device=device)
    return philox4x32_10(groups, seed).reshape(-1)[:numel]


def dropout_mask(seed: int, p: float, shape, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu") -> Tensor:
    """The mask ``gated_residual(..., dropout_p=p, dropout_seed=seed)`` applies to rows of ``shape``
    (its last dim is ``d``): ``1 / (1 - p)`` where kept, 0 where dropped, in ``dtype``."""
    shape = tuple(shape)
    numel = 1
    for s in shape:
        numel *= s
    keep = dropout_bits(seed, numel, device) >= threshold(p)
    return torch.where(keep, torch.tensor(keep_scale(p), dtype=dtype, device=device),
                       torch.zeros((), dtype=dtype, device=device)).reshape(shape)


def draw_seed() -> Tensor:
    """A fresh seed from PyTorch's default generator (so ``torch.manual_seed`` and activation
    checkpointing's RNG replay reproduce it), as a 0-dim int64 CPU tensor."""
    return torch.randint(0, 2 ** SEED_BITS - 1, (), dtype=torch.int64)


def seed_tensor(seed) -> Tensor:
    """``seed`` (an int of up to 64 bits, or a one-element int64 CPU tensor) as a 0-dim int64 tensor."""
    if isinstance(seed, Tensor):
        return seed.reshape(())
    seed = int(seed) & ((1 << 64) - 1)
    return torch.tensor(seed - (1 << 64) if seed >= 1 << 63 else seed, dtype=torch.int64)
