"""Triton kernels for ``gated_residual`` (DESIGN §2.2), the VL-PET gate epilogue, forward and backward.

The rows are split into ``B`` examples of ``T`` rows (``B = batch`` for ``"small"``, else one example of
all M rows); the grid is ``(B, CH)`` and program ``(b, c)`` walks rows ``c*BLOCK_M, (c+CH)*BLOCK_M, …``
of example ``b`` with tiles of BLOCK_M full rows (the width padded to a power of two), so row
reductions (``middleX``, ``small``) happen in registers.

* ``_gr_fwd_kernel``: one pass for ``large``/``middleX``/``middleY``. ``small`` needs the example's mean
  gate before any output: phase ``STAT`` writes the row scores, phase ``APPLY`` (each program first
  averages its example's T scores) writes ``out``.
* ``_gr_bwd_kernel``: one pass for ``large``/``middleX``/``middleY``; ``small`` first runs phase
  ``ROWDOT`` (``Σ_d e*h2`` per row), then ``MAIN`` sums its example's row dots. The gate scores are
  recomputed in fp32 from the rows the kernel reads anyway (``middleX``) or in ``ROWDOT`` (``small``)
  rather than read back from the saved ``stat``, which half-precision rounding makes inaccurate where
  the sigmoid saturates. Gradients of the gate
  parameters are per-program fp32 partials (B*CH of them, CH fixed by the wrapper, not by the config)
  summed by ``torch.sum`` afterwards: deterministic, no atomics.

GPU assumptions to verify: the row tiles ``autotune.prune_row_configs`` keeps (at most
``ROW_ELEMS_PER_THREAD`` padded elements per thread and tensor) do not spill; checked with ptxas for
sm_90 at d = 4096, not timed.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import philox
from . import autotune as at
from .numerics import cast, emulate_bf16

LARGE, MIDDLE_X, MIDDLE_Y, SMALL = range(4)
GRAN_CODE = {"large": LARGE, "middleX": MIDDLE_X, "middleY": MIDDLE_Y, "small": SMALL}
ONE_PASS, STAT, APPLY, ROWDOT, MAIN = range(5)
# the same codes for the kernels, which may only read globals that are tl.constexpr
K_LARGE, K_MIDDLE_X, K_MIDDLE_Y, K_SMALL = (tl.constexpr(i) for i in range(4))
K_STAT, K_APPLY, K_ROWDOT, K_MAIN = (tl.constexpr(i) for i in range(1, 5))
BLOCK_T = 128  # chunk of an example's per-row scores summed at the start of APPLY / MAIN


@triton.jit
def _example_mean(ptr, row0, T, BLOCK_T: tl.constexpr, SIGMOID: tl.constexpr):
    """mean over the example's T entries of ptr[row0:row0+T] (through a sigmoid if SIGMOID), fp32."""
    acc = tl.zeros((BLOCK_T,), dtype=tl.float32)
    for t0 in range(0, T, BLOCK_T):
        offs = t0 + tl.arange(0, BLOCK_T)
        v = tl.load(ptr + row0 + offs, mask=offs < T, other=0.0).to(tl.float32)
        if SIGMOID:
            v = tl.sigmoid(v)
        acc += tl.where(offs < T, v, 0.0)
    return tl.sum(acc, axis=0) / T


@triton.jit
def _dropout_keep(seed, idx, threshold):
    """Element ``idx`` (int64, row-major index) is kept by the Philox stream of ``seed``
    (csrc/include/petal/philox.h, petal_kernels/philox.py): bits >= threshold."""
    g = idx >> 2
    lo = (g & 0xFFFFFFFF).to(tl.uint32)
    hi = ((g >> 32) & 0xFFFFFFFF).to(tl.uint32)
    zero = lo * 0
    r0, r1, r2, r3 = tl.philox(seed, lo, hi, zero, zero)
    lane = idx & 3
    bits = tl.where(lane == 0, r0, tl.where(lane == 1, r1, tl.where(lane == 2, r2, r3)))
    return bits.to(tl.int64) >= threshold


@triton.jit
def _mask_values(mask_ptr, offs, m2, rows, cols, D, seed, threshold, keep_value,
                 HAS_MASK: tl.constexpr, HAS_DROP: tl.constexpr):
    """The dropout mask of a tile: the caller's (HAS_MASK) or the Philox stream's (HAS_DROP)."""
    if HAS_MASK:
        return tl.load(mask_ptr + offs, mask=m2, other=0.0).to(tl.float32)
    else:
        idx = rows[:, None].to(tl.int64) * D + cols[None, :]
        return tl.where(_dropout_keep(seed, idx, threshold), keep_value, 0.0)


@triton.autotune(configs=at.ROW_CONFIGS, key=["D", "M_BUCKET", "GRAN", "PHASE", "HAS_MASK", "HAS_DROP"],
                 prune_configs_by={"early_config_prune": at.prune_row_configs})
@triton.jit
def _gr_fwd_kernel(
    x_ptr, h_ptr, u_ptr, lg_ptr, w_ptr, b_ptr, v_ptr, mask_ptr, out_ptr, stat_ptr,
    T, D, stride_m, adapter_scale, gate_scale, M_BUCKET, seed, threshold, keep_value,
    GRAN: tl.constexpr, PHASE: tl.constexpr, HAS_MASK: tl.constexpr, HAS_DROP: tl.constexpr,
    EMU_BF16: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_M: tl.constexpr,
):
    ex = tl.program_id(0)
    c = tl.program_id(1)
    CH = tl.num_programs(1)
    row0 = ex * T
    cols = tl.arange(0, BLOCK_D)
    cmask = cols < D
    if GRAN == K_MIDDLE_X or GRAN == K_SMALL:
        w1 = tl.load(w_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
        bias = tl.load(b_ptr).to(tl.float32)
    if GRAN == K_SMALL:
        w2 = tl.load(w_ptr + D + cols, mask=cmask, other=0.0).to(tl.float32)
        if PHASE == K_APPLY:
            g_ex = _example_mean(stat_ptr, row0, T, BLOCK_T, True)
    if GRAN == K_MIDDLE_Y:
        g_vec = 1.0 + tl.load(v_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    for start in range(c * BLOCK_M, T, CH * BLOCK_M):
        local = start + tl.arange(0, BLOCK_M)
        rmask = local < T
        rows = row0 + local
        offs = rows[:, None] * stride_m + cols[None, :]
        m2 = rmask[:, None] & cmask[None, :]
        x = tl.load(x_ptr + offs, mask=m2, other=0.0).to(tl.float32)
        h = tl.load(h_ptr + offs, mask=m2, other=0.0).to(tl.float32)
        u = tl.load(u_ptr + offs, mask=m2, other=0.0).to(tl.float32)
        h2 = h + adapter_scale * u
        if PHASE == K_STAT:  # small, first pass: fp32 row scores
            s = tl.sum(x * w1[None, :] + h2 * w2[None, :], axis=1) + bias
            tl.store(stat_ptr + rows, s, mask=rmask)
        else:
            if GRAN == K_LARGE:
                lg = tl.load(lg_ptr + offs, mask=m2, other=0.0).to(tl.float32)
                delta = tl.sigmoid(lg) * h2
            elif GRAN == K_MIDDLE_X:
                s = tl.sum((x + h2) * w1[None, :], axis=1) + bias
                tl.store(stat_ptr + rows, cast(s, stat_ptr.dtype.element_ty, EMU_BF16), mask=rmask)
                delta = tl.sigmoid(s)[:, None] * h2
            elif GRAN == K_MIDDLE_Y:
                delta = g_vec[None, :] * h2
            else:
                delta = g_ex * h2
            if HAS_MASK or HAS_DROP:
                delta = delta * _mask_values(mask_ptr, offs, m2, rows, cols, D, seed, threshold, keep_value,
                                             HAS_MASK, HAS_DROP)
            out = x + gate_scale * delta
            tl.store(out_ptr + offs, cast(out, out_ptr.dtype.element_ty, EMU_BF16), mask=m2)


@triton.autotune(configs=at.ROW_CONFIGS,
                 key=["D", "M_BUCKET", "GRAN", "PHASE", "HAS_MASK", "HAS_DROP", "WRITE_DX", "WRITE_DU"],
                 prune_configs_by={"early_config_prune": at.prune_row_configs})
@triton.jit
def _gr_bwd_kernel(
    dout_ptr, x_ptr, h_ptr, u_ptr, lg_ptr, w_ptr, b_ptr, v_ptr, mask_ptr, stat_ptr, q_ptr,
    dx_ptr, dh_ptr, du_ptr, dlg_ptr, pw_ptr, pb_ptr, pv_ptr,
    T, D, stride_m, adapter_scale, gate_scale, M_BUCKET, seed, threshold, keep_value,
    GRAN: tl.constexpr, PHASE: tl.constexpr, HAS_MASK: tl.constexpr, HAS_DROP: tl.constexpr,
    WRITE_DX: tl.constexpr, WRITE_DU: tl.constexpr, EMU_BF16: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_M: tl.constexpr,
):
    ex = tl.program_id(0)
    c = tl.program_id(1)
    CH = tl.num_programs(1)
    pid = ex * CH + c
    row0 = ex * T
    cols = tl.arange(0, BLOCK_D)
    cmask = cols < D
    if GRAN == K_MIDDLE_X or GRAN == K_SMALL:
        w1 = tl.load(w_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
        bias = tl.load(b_ptr).to(tl.float32)
    if GRAN == K_SMALL:
        w2 = tl.load(w_ptr + D + cols, mask=cmask, other=0.0).to(tl.float32)
        if PHASE == K_MAIN:
            g_ex = _example_mean(stat_ptr, row0, T, BLOCK_T, True)
            coef = _example_mean(q_ptr, row0, T, BLOCK_T, False)  # (Σ_rows Σ_d e*h2) / T
    if GRAN == K_MIDDLE_Y:
        g_vec = 1.0 + tl.load(v_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    acc_w1 = tl.zeros((BLOCK_D,), dtype=tl.float32)
    acc_w2 = tl.zeros((BLOCK_D,), dtype=tl.float32)
    acc_b = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for start in range(c * BLOCK_M, T, CH * BLOCK_M):
        local = start + tl.arange(0, BLOCK_M)
        rmask = local < T
        rows = row0 + local
        offs = rows[:, None] * stride_m + cols[None, :]
        m2 = rmask[:, None] & cmask[None, :]
        dout = tl.load(dout_ptr + offs, mask=m2, other=0.0).to(tl.float32)
        h = tl.load(h_ptr + offs, mask=m2, other=0.0).to(tl.float32)
        u = tl.load(u_ptr + offs, mask=m2, other=0.0).to(tl.float32)
        h2 = h + adapter_scale * u
        e = dout * gate_scale
        if HAS_MASK or HAS_DROP:
            e = e * _mask_values(mask_ptr, offs, m2, rows, cols, D, seed, threshold, keep_value,
                                 HAS_MASK, HAS_DROP)
        if PHASE == K_ROWDOT:  # small: row dots and fp32 scores (not the saved low-precision stat)
            tl.store(q_ptr + rows, tl.sum(e * h2, axis=1), mask=rmask)
            x = tl.load(x_ptr + offs, mask=m2, other=0.0).to(tl.float32)
            tl.store(stat_ptr + rows, tl.sum(x * w1[None, :] + h2 * w2[None, :], axis=1) + bias, mask=rmask)
        else:
            dx = dout
            if GRAN == K_LARGE:
                g = tl.sigmoid(tl.load(lg_ptr + offs, mask=m2, other=0.0).to(tl.float32))
                dh2 = e * g
                dlg = e * h2 * g * (1.0 - g)
                tl.store(dlg_ptr + offs, cast(dlg, dlg_ptr.dtype.element_ty, EMU_BF16), mask=m2)
            elif GRAN == K_MIDDLE_X:
                x = tl.load(x_ptr + offs, mask=m2, other=0.0).to(tl.float32)
                xh = x + h2
                sg = tl.sigmoid(tl.sum(xh * w1[None, :], axis=1) + bias)  # fp32 score, recomputed
                ds = tl.where(rmask, tl.sum(e * h2, axis=1) * sg * (1.0 - sg), 0.0)
                dh2 = e * sg[:, None] + ds[:, None] * w1[None, :]
                dx += ds[:, None] * w1[None, :]
                acc_w1 += tl.sum(ds[:, None] * xh, axis=0)
                acc_b += ds
            elif GRAN == K_MIDDLE_Y:
                dh2 = e * g_vec[None, :]
                acc_w1 += tl.sum(e * h2, axis=0)
            else:
                sg = tl.sigmoid(tl.load(stat_ptr + rows, mask=rmask, other=0.0).to(tl.float32))
                ds = tl.where(rmask, coef * sg * (1.0 - sg), 0.0)
                dh2 = e * g_ex + ds[:, None] * w2[None, :]
                dx += ds[:, None] * w1[None, :]
                x = tl.load(x_ptr + offs, mask=m2, other=0.0).to(tl.float32)
                acc_w1 += tl.sum(ds[:, None] * x, axis=0)
                acc_w2 += tl.sum(ds[:, None] * h2, axis=0)
                acc_b += ds
            dtype = dx_ptr.dtype.element_ty
            if WRITE_DX:
                tl.store(dx_ptr + offs, cast(dx, dtype, EMU_BF16), mask=m2)
            tl.store(dh_ptr + offs, cast(dh2, dtype, EMU_BF16), mask=m2)
            if WRITE_DU:
                tl.store(du_ptr + offs, cast(adapter_scale * dh2, dtype, EMU_BF16), mask=m2)
    if PHASE != K_ROWDOT:
        if GRAN == K_MIDDLE_X:
            tl.store(pw_ptr + pid * D + cols, acc_w1, mask=cmask)
            tl.store(pb_ptr + pid, tl.sum(acc_b, axis=0))
        elif GRAN == K_MIDDLE_Y:
            tl.store(pv_ptr + pid * D + cols, acc_w1, mask=cmask)
        elif GRAN == K_SMALL:
            tl.store(pw_ptr + pid * 2 * D + cols, acc_w1, mask=cmask)
            tl.store(pw_ptr + pid * 2 * D + D + cols, acc_w2, mask=cmask)
            tl.store(pb_ptr + pid, tl.sum(acc_b, axis=0))


# --------------------------------------------------------------------------- launch wrappers


def _layout(M: int, granularity: str, batch: int, device: torch.device) -> tuple[int, int, int]:
    """(B, T, CH): examples, rows per example, programs per example (fixed here, not by the config)."""
    B = batch if granularity == "small" else 1
    T = M // B
    CH = max(1, min(T, at.target_programs(device) // B))
    return B, T, CH


def _block_d(D: int) -> int:
    return triton.next_power_of_2(D)


def _dropout_args(x, dropout_p, dropout_seed) -> dict:
    """Kernel arguments of in-kernel dropout: the seed, the drop threshold and 1/(1-p) in x's dtype
    (the value a caller's mask would hold)."""
    if not dropout_p:
        return dict(seed=0, threshold=0, keep_value=1.0, HAS_DROP=False)
    keep = torch.tensor(philox.keep_scale(dropout_p), dtype=x.dtype).item()
    return dict(seed=int(dropout_seed), threshold=philox.threshold(dropout_p), keep_value=keep, HAS_DROP=True)


def forward(x, h, u, granularity, adapter_scale, gate_scale, gate_logits, gate_weight, gate_bias,
            gate_vector, dropout_mask, dropout_p, dropout_seed, batch):
    """The canonical ``gated_residual_forward`` on fp16/bf16/fp32 rows (see ``reference``)."""
    M, D = x.shape
    gran = GRAN_CODE[granularity]
    B, T, CH = _layout(M, granularity, batch, x.device)
    out = torch.empty_like(x)
    stat = x.new_empty(M) if gran == MIDDLE_X else x.new_empty(0)
    stat32 = torch.empty(M, device=x.device, dtype=torch.float32) if gran == SMALL else None

    def launch(phase, stat_buf):
        _gr_fwd_kernel[(B, CH)](
            x, h, u, _or(gate_logits, x), _or(gate_weight, x), _or(gate_bias, x),
            _or(gate_vector, x), _or(dropout_mask, x), out, stat_buf,
            T, D, x.stride(0), float(adapter_scale), float(gate_scale), at.bucket(M), **drop,
            GRAN=gran, PHASE=phase, HAS_MASK=dropout_mask is not None, EMU_BF16=emulate_bf16(x.dtype),
            BLOCK_D=_block_d(D), BLOCK_T=BLOCK_T,
        )

    drop = _dropout_args(x, dropout_p, dropout_seed)
    if gran == SMALL:
        launch(STAT, stat32)
        launch(APPLY, stat32)
        stat = stat32.to(x.dtype)
    else:
        launch(ONE_PASS, stat if gran == MIDDLE_X else x)
    return out, stat


def backward(dout, x, h, u, granularity, adapter_scale, gate_scale, gate_logits, gate_weight,
             gate_bias, gate_vector, dropout_mask, dropout_p, dropout_seed, batch, stat):
    """The canonical ``gated_residual_backward`` (see ``reference``). dx = dout (large, middleY) and
    du = dh (adapter_scale 1) are not written: those are None, the op layer hands the tensors through."""
    M, D = x.shape
    gran = GRAN_CODE[granularity]
    B, T, CH = _layout(M, granularity, batch, x.device)
    f32 = dict(device=x.device, dtype=torch.float32)
    write_dx, write_du = gran in (MIDDLE_X, SMALL), adapter_scale != 1.0
    dh = torch.empty_like(x)
    dx = torch.empty_like(x) if write_dx else None
    du = torch.empty_like(x) if write_du else None
    d_logits = torch.empty_like(x) if gran == LARGE else None
    width = {MIDDLE_X: D, SMALL: 2 * D}.get(gran)
    pw = torch.empty(B * CH, width, **f32) if width else None
    pb = torch.empty(B * CH, **f32) if width else None
    pv = torch.empty(B * CH, D, **f32) if gran == MIDDLE_Y else None
    q = torch.empty(M, **f32) if gran == SMALL else None
    s32 = torch.empty(M, **f32) if gran == SMALL else None  # the saved ``stat`` is not needed

    def launch(phase):
        _gr_bwd_kernel[(B, CH)](
            dout, x, h, u, _or(gate_logits, x), _or(gate_weight, x), _or(gate_bias, x), _or(gate_vector, x),
            _or(dropout_mask, x), _or(s32, x), _or(q, x),
            _or(dx, dh), dh, _or(du, dh), _or(d_logits, x), _or(pw, x), _or(pb, x), _or(pv, x),
            T, D, x.stride(0), float(adapter_scale), float(gate_scale), at.bucket(M), **drop,
            GRAN=gran, PHASE=phase, HAS_MASK=dropout_mask is not None, WRITE_DX=write_dx, WRITE_DU=write_du,
            EMU_BF16=emulate_bf16(x.dtype), BLOCK_D=_block_d(D), BLOCK_T=BLOCK_T,
        )

    drop = _dropout_args(x, dropout_p, dropout_seed)

    if gran == SMALL:
        launch(ROWDOT)
        launch(MAIN)
    else:
        launch(ONE_PASS)
    d_weight = pw.sum(0).to(x.dtype) if width else None
    d_bias = pb.sum().reshape(gate_bias.shape).to(x.dtype) if width else None
    d_vector = pv.sum(0).to(x.dtype) if pv is not None else None
    return dx, dh, du, d_logits, d_weight, d_bias, d_vector


def _or(t, fallback):
    return fallback if t is None else t
