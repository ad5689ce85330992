"""The VL-PET up-projection fused with the gated residual: ``u`` never reaches memory (forward only).

    out = gated_residual(x, h, a @ up_weight.T + up_bias, granularity, ...)

``a`` (M, D_a) is the adapter's hidden activation (after φ), ``up_weight`` (d, D_a). The kernel
computes (BM, BN) tiles of ``u`` with ``tl.dot`` and applies the gate in the epilogue, so the
unfused write + read of ``u`` (2·M·d elements) disappears:

* ``large`` / ``middleY``: one tile per program, one pass.
* ``middleX``: a program owns BM whole rows and sweeps their column tiles twice, first for the row
  score, then for the output; the second sweep recomputes the u tiles (a GEMM over the adapter width,
  cheap next to the memory traffic it saves) and re-reads x and h from L2.
* ``small``: a scoring launch (the same sweep) writes fp32 row scores; the example means of their
  sigmoids (B numbers) come from one torch op; the output launch reads them.

float64 and CPU tensors without the interpreter take the unfused path (``u`` by one matmul, then
``petal_kernels.gated_residual``). No autograd: this is for inference and evaluation; training goes
through ``petal_kernels.gated_residual`` with ``u`` materialised.

To verify on a GPU: that the fused kernel beats matmul + gated_residual at T5/Q-Former widths, and
the L2 hit rate of the middleX second sweep at large BM.
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from . import autotune as at
from . import gated_residual as gr
from .numerics import cast, dot, emulate_bf16

K_LARGE, K_MIDDLE_X, K_MIDDLE_Y, K_SMALL = (tl.constexpr(c) for c in (gr.LARGE, gr.MIDDLE_X, gr.MIDDLE_Y,
                                                                       gr.SMALL))
ONE_PASS, STAT, APPLY = 0, 1, 2
K_STAT, K_APPLY = tl.constexpr(STAT), tl.constexpr(APPLY)


@triton.jit
def _rows_tile(a_ptr, wu_ptr, bu_ptr, x_ptr, h_ptr, rm, rn, M, D, KA, stride_am, stride_m, adapter_scale,
               HAS_UP_BIAS: tl.constexpr, EMU_BF16: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
               BK: tl.constexpr):
    """x and h2 = h + adapter_scale * (a @ up_weightᵀ + up_bias) on the (rm, rn) tile, fp32."""
    rk = tl.arange(0, BK)
    m_mask = rm < M
    n_mask = rn < D
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    a_ptrs = a_ptr + rm[:, None] * stride_am + rk[None, :]
    w_ptrs = wu_ptr + rn[None, :] * KA + rk[:, None]  # (BK, BN) tile of up_weightᵀ
    for k0 in range(0, KA, BK):
        k_mask = rk + k0 < KA
        a = tl.load(a_ptrs, mask=m_mask[:, None] & k_mask[None, :], other=0.0)
        wt = tl.load(w_ptrs, mask=k_mask[:, None] & n_mask[None, :], other=0.0)
        acc = dot(a, wt, acc, EMU_BF16)
        a_ptrs += BK
        w_ptrs += BK
    if HAS_UP_BIAS:
        acc += tl.load(bu_ptr + rn, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    # u is rounded to the dtype, as the unfused GEMM would store it
    u = cast(acc, x_ptr.dtype.element_ty, EMU_BF16).to(tl.float32)
    offs = rm[:, None] * stride_m + rn[None, :]
    m2 = m_mask[:, None] & n_mask[None, :]
    x = tl.load(x_ptr + offs, mask=m2, other=0.0).to(tl.float32)
    h2 = tl.load(h_ptr + offs, mask=m2, other=0.0).to(tl.float32) + adapter_scale * u
    return x, h2


@triton.autotune(configs=at.FUSED_UP_CONFIGS, key=["M_BUCKET", "D", "KA", "GRAN", "PHASE", "HAS_MASK"])
@triton.jit
def _gr_up_kernel(
    a_ptr, wu_ptr, bu_ptr, x_ptr, h_ptr, lg_ptr, w_ptr, b_ptr, v_ptr, g_ptr, mask_ptr, out_ptr, stat_ptr,
    M, D, KA, T, stride_am, stride_m, adapter_scale, gate_scale, M_BUCKET,
    GRAN: tl.constexpr, PHASE: tl.constexpr, HAS_UP_BIAS: tl.constexpr, HAS_MASK: tl.constexpr,
    EMU_BF16: tl.constexpr, BN: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr,
):
    """large / middleY: grid (row blocks, column blocks), one tile each. middleX: grid (row blocks,),
    a first sweep over the row's column tiles for the score, a second one for the output (u is
    recomputed, never stored). small: phase STAT sweeps for the fp32 row scores, phase APPLY reads
    the example means g[row // T] and writes the output tile."""
    dtype = x_ptr.dtype.element_ty
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BM + tl.arange(0, BM)
    m_mask = rm < M
    cols = tl.arange(0, BN)
    if GRAN == K_MIDDLE_X or PHASE == K_STAT:
        s = tl.zeros((BM,), dtype=tl.float32)
        for n0 in range(0, D, BN):
            rn = n0 + cols
            x, h2 = _rows_tile(a_ptr, wu_ptr, bu_ptr, x_ptr, h_ptr, rm, rn, M, D, KA, stride_am, stride_m,
                               adapter_scale, HAS_UP_BIAS, EMU_BF16, BM, BN, BK)
            w1 = tl.load(w_ptr + rn, mask=rn < D, other=0.0).to(tl.float32)
            if GRAN == K_MIDDLE_X:
                s += tl.sum((x + h2) * w1[None, :], axis=1)
            else:
                w2 = tl.load(w_ptr + D + rn, mask=rn < D, other=0.0).to(tl.float32)
                s += tl.sum(x * w1[None, :] + h2 * w2[None, :], axis=1)
        s += tl.load(b_ptr).to(tl.float32)
        if PHASE == K_STAT:
            tl.store(stat_ptr + rm, s, mask=m_mask)
    if PHASE != K_STAT:
        if GRAN == K_MIDDLE_X:
            n_lo = 0
            n_hi = D
        else:
            n_lo = pid_n * BN
            n_hi = n_lo + BN
        for n0 in range(n_lo, n_hi, BN):
            rn = n0 + cols
            x, h2 = _rows_tile(a_ptr, wu_ptr, bu_ptr, x_ptr, h_ptr, rm, rn, M, D, KA, stride_am, stride_m,
                               adapter_scale, HAS_UP_BIAS, EMU_BF16, BM, BN, BK)
            offs = rm[:, None] * stride_m + rn[None, :]
            m2 = m_mask[:, None] & (rn < D)[None, :]
            if GRAN == K_LARGE:
                delta = tl.sigmoid(tl.load(lg_ptr + offs, mask=m2, other=0.0).to(tl.float32)) * h2
            elif GRAN == K_MIDDLE_X:
                delta = tl.sigmoid(s)[:, None] * h2
            elif GRAN == K_MIDDLE_Y:
                delta = (1.0 + tl.load(v_ptr + rn, mask=rn < D, other=0.0).to(tl.float32))[None, :] * h2
            else:
                delta = tl.load(g_ptr + rm // T, mask=m_mask, other=0.0)[:, None] * h2
            if HAS_MASK:
                delta = delta * tl.load(mask_ptr + offs, mask=m2, other=0.0).to(tl.float32)
            tl.store(out_ptr + offs, cast(x + gate_scale * delta, dtype, EMU_BF16), mask=m2)


def _check(x, h, a, up_weight, up_bias):
    if x.shape != h.shape:
        raise ValueError(f"h must have x's shape {tuple(x.shape)}, got {tuple(h.shape)}")
    d = x.shape[-1]
    if up_weight.dim() != 2 or up_weight.shape[0] != d:
        raise ValueError(f"up_weight must have shape ({d}, D_a) to match x's last dim, got "
                         f"{tuple(up_weight.shape)}")
    if a.shape != (*x.shape[:-1], up_weight.shape[1]):
        raise ValueError(f"a must have shape {(*x.shape[:-1], up_weight.shape[1])} (x's rows, up_weight's "
                         f"D_a), got {tuple(a.shape)}")
    if up_bias is not None and up_bias.shape != (d,):
        raise ValueError(f"up_bias must have shape ({d},), got {tuple(up_bias.shape)}")
    for name, t in (("h", h), ("a", a), ("up_weight", up_weight), ("up_bias", up_bias)):
        if t is not None and (t.dtype != x.dtype or t.device != x.device):
            raise TypeError(f"{name} is {t.dtype} on {t.device}, x is {x.dtype} on {x.device}")


def gated_residual_up(x, h, a, up_weight, up_bias, granularity, adapter_scale=1.0, gate_scale=1.0,
                      gate_logits=None, gate_weight=None, gate_bias=None, gate_vector=None,
                      dropout_mask=None):
    """``gated_residual(x, h, a @ up_weight.T + up_bias, granularity, ...)`` without materialising u.

    Shapes as for ``petal_kernels.gated_residual`` (``x``, ``h``: (*, d); ``small`` needs (B, T, d)), plus
    ``a`` (*, D_a), ``up_weight`` (d, D_a), ``up_bias`` (d,) or None. Forward only (no autograd).
    """
    from .. import _checks

    tensors = (x, h, a, up_weight, up_bias, gate_logits, gate_weight, gate_bias, gate_vector)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        raise RuntimeError("gated_residual_up is forward only (no autograd); call it under torch.no_grad() "
                           "or use petal_kernels.gated_residual with u = a @ up_weight.T + up_bias")
    _check(x, h, a, up_weight, up_bias)
    d = x.shape[-1]
    rows = x.numel() // d if d else 0
    if granularity not in gr.GRAN_CODE:
        raise ValueError(f"granularity must be one of {tuple(gr.GRAN_CODE)}, got {granularity!r}")
    runs_here = x.device.type == "cuda" or at.INTERPRET
    if rows == 0 or x.dtype == torch.float64 or not runs_here:
        u = torch.nn.functional.linear(a, up_weight, up_bias)
        from .. import gated_residual

        return gated_residual(x, h, u, granularity, adapter_scale, gate_scale, gate_logits, gate_weight,
                              gate_bias, gate_vector, dropout_mask)
    _checks.gated_residual(x, h, h, granularity, adapter_scale, gate_scale, gate_logits, gate_weight,
                           gate_bias, gate_vector, dropout_mask)

    def flat(t, width):
        return None if t is None else t.reshape(rows, width).contiguous()

    x2, h2, a2 = flat(x, d), flat(h, d), flat(a, up_weight.shape[1])
    logits, mask = flat(gate_logits, d), flat(dropout_mask, d)
    w = None if gate_weight is None else gate_weight.reshape(-1).contiguous()
    b = None if gate_bias is None else gate_bias.reshape(-1).contiguous()
    v = None if gate_vector is None else gate_vector.reshape(-1).contiguous()
    wu = up_weight.contiguous()
    out = torch.empty_like(x2)
    gran = gr.GRAN_CODE[granularity]
    BN = min(triton.next_power_of_2(d), at.FUSED_UP_BN)
    f32 = dict(device=x.device, dtype=torch.float32)
    stat = torch.empty(rows, **f32) if gran == gr.SMALL else None
    g_ex = torch.empty(0, **f32)
    T = x.shape[-2] if gran == gr.SMALL else 1

    def launch(phase):
        sweeps = gran == gr.MIDDLE_X or phase == STAT  # a program sweeps its rows' column tiles

        def grid(meta):
            return triton.cdiv(rows, meta["BM"]), 1 if sweeps else triton.cdiv(d, BN)

        _gr_up_kernel[grid](
            a2, wu, _or(up_bias, wu), x2, h2, _or(logits, x2), _or(w, x2), _or(b, x2), _or(v, x2),
            g_ex if g_ex.numel() else x2, _or(mask, x2), out, _or(stat, x2),
            rows, d, wu.shape[1], T, a2.stride(0), x2.stride(0), float(adapter_scale), float(gate_scale),
            at.bucket(rows), GRAN=gran, PHASE=phase, HAS_UP_BIAS=up_bias is not None,
            HAS_MASK=mask is not None, EMU_BF16=emulate_bf16(x.dtype), BN=BN,
        )

    with torch.cuda.device(x.device) if x.device.type == "cuda" else contextlib.nullcontext():
        if gran == gr.SMALL:
            launch(STAT)
            g_ex = torch.sigmoid(stat).reshape(-1, T).mean(1)  # (B,): one tiny launch, no sync
            launch(APPLY)
        else:
            launch(ONE_PASS)
    return out.reshape(x.shape)


def _or(t, fallback):
    return fallback if t is None else t
