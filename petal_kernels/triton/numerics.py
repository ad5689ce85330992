"""``tl.dot`` and down-casts as the kernels use them, with work-arounds for the interpreter's bfloat16.

Triton 3.9's interpreter mishandles bfloat16 in two ways a GPU does not: ``tl.dot`` on bf16 operands
returns garbage, and ``.to(tl.bfloat16)`` truncates instead of rounding to nearest even. Kernels take
a ``EMU_BF16`` constexpr, true only under the interpreter with bf16 data (``emulate_bf16``); then dots
run on fp32 copies of the operands (bf16 products are exact in fp32, so the result is what a GPU's
bf16 MMA with fp32 accumulation computes) and down-casts round to nearest even by hand. On a GPU the
flag is false and these helpers are plain ``tl.dot`` / ``.to``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .autotune import INTERPRET


def emulate_bf16(dtype: torch.dtype) -> bool:
    return INTERPRET and dtype == torch.bfloat16


@triton.jit
def dot(a, b, acc, EMU_BF16: tl.constexpr):
    if EMU_BF16:
        out = tl.dot(a.to(tl.float32), b.to(tl.float32), acc)
    else:
        out = tl.dot(a, b, acc)
    return out


@triton.jit
def cast(v, dtype: tl.constexpr, EMU_BF16: tl.constexpr):
    """``v.to(dtype)`` with round-to-nearest-even (what the GPU does) also under the interpreter."""
    if EMU_BF16 and dtype == tl.bfloat16:
        bits = v.to(tl.float32).to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000  # finite values only
        out = bits.to(tl.float32, bitcast=True).to(dtype)  # exact: the low 16 bits are zero
    else:
        out = v.to(dtype)
    return out
