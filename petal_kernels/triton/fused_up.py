"""The VL-PET up-projection fused with the gated residual: ``u`` never reaches memory (forward only).

    out = gated_residual(x, h, a @ up_weight.T + up_bias, granularity, ...)

``a`` (M, D_a) is the adapter's hidden activation (after φ), ``up_weight`` (d, D_a). One kernel
computes a (BM, BN) tile of ``u`` with ``tl.dot`` and applies the gate in the epilogue, so the
unfused write + read of ``u`` (2·M·d elements) disappears. ``"middleX"`` needs the whole row for its
score, so its tiles span the row (d up to ``MAX_ROW_TILE``). The unfused path (``u`` by one matmul,
then ``petal_kernels.gated_residual``) serves the rest: wider middleX rows, ``"small"`` (its
per-example mean needs every row of the example before any output), float64, and CPU tensors
without the interpreter. No autograd: this is for inference and evaluation; training goes through
``petal_kernels.gated_residual`` with ``u`` materialised.

To verify on a GPU: that the middleX whole-row tile (16 x 1024 fp32 accumulator at d = 1024, 8 warps)
does not spill, and that the fused kernel beats matmul + gated_residual at T5/Q-Former widths.
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from . import autotune as at
from . import gated_residual as gr
from .numerics import cast, dot, emulate_bf16

MAX_ROW_TILE = 1024  # widest d whose full row a middleX tile holds (16 x d fp32 accumulator)
K_LARGE, K_MIDDLE_X, K_MIDDLE_Y = tl.constexpr(gr.LARGE), tl.constexpr(gr.MIDDLE_X), tl.constexpr(gr.MIDDLE_Y)


@triton.autotune(configs=at.FUSED_UP_CONFIGS, key=["M_BUCKET", "D", "KA", "GRAN", "HAS_MASK"],
                 prune_configs_by={"early_config_prune": at.prune_fused_up_configs})
@triton.jit
def _gr_up_kernel(
    a_ptr, wu_ptr, bu_ptr, x_ptr, h_ptr, lg_ptr, w_ptr, b_ptr, v_ptr, mask_ptr, out_ptr,
    M, D, KA, stride_am, stride_m, adapter_scale, gate_scale, M_BUCKET,
    GRAN: tl.constexpr, HAS_UP_BIAS: tl.constexpr, HAS_MASK: tl.constexpr, EMU_BF16: tl.constexpr,
    BN: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
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
    dtype = x_ptr.dtype.element_ty
    if HAS_UP_BIAS:
        acc += tl.load(bu_ptr + rn, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    # u is rounded to the dtype as the unfused GEMM would store it
    u = cast(acc, dtype, EMU_BF16).to(tl.float32)
    offs = rm[:, None] * stride_m + rn[None, :]
    m2 = m_mask[:, None] & n_mask[None, :]
    x = tl.load(x_ptr + offs, mask=m2, other=0.0).to(tl.float32)
    h2 = tl.load(h_ptr + offs, mask=m2, other=0.0).to(tl.float32) + adapter_scale * u
    if GRAN == K_LARGE:
        delta = tl.sigmoid(tl.load(lg_ptr + offs, mask=m2, other=0.0).to(tl.float32)) * h2
    elif GRAN == K_MIDDLE_X:  # BN >= D: the tile holds whole rows
        w = tl.load(w_ptr + rn, mask=n_mask, other=0.0).to(tl.float32)
        s = tl.sum((x + h2) * w[None, :], axis=1) + tl.load(b_ptr).to(tl.float32)
        delta = tl.sigmoid(s)[:, None] * h2
    else:
        delta = (1.0 + tl.load(v_ptr + rn, mask=n_mask, other=0.0).to(tl.float32))[None, :] * h2
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
    unfused = granularity == "small" or (granularity == "middleX" and d > MAX_ROW_TILE)
    runs_here = x.device.type == "cuda" or at.INTERPRET
    if unfused or rows == 0 or x.dtype == torch.float64 or not runs_here:
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
    BN = triton.next_power_of_2(d) if gran == gr.MIDDLE_X else min(triton.next_power_of_2(d), at.FUSED_UP_BN)

    def grid(meta):
        return triton.cdiv(rows, meta["BM"]), triton.cdiv(d, BN)

    with torch.cuda.device(x.device) if x.device.type == "cuda" else contextlib.nullcontext():
        _gr_up_kernel[grid](
            a2, wu, up_bias if up_bias is not None else wu, x2, h2, logits if logits is not None else x2,
            w if w is not None else x2, b if b is not None else x2, v if v is not None else x2,
            mask if mask is not None else x2, out,
            rows, d, wu.shape[1], a2.stride(0), x2.stride(0), float(adapter_scale), float(gate_scale),
            at.bucket(rows), GRAN=gran, HAS_UP_BIAS=up_bias is not None, HAS_MASK=mask is not None,
            EMU_BF16=emulate_bf16(x.dtype), BN=BN,
        )
    return out.reshape(x.shape)
