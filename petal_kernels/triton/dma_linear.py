"""Triton kernels for ``dma_linear`` / ``dma_linear_multi`` (DESIGN §2.1), forward and backward.

Forward, per call (J projections sharing ``x``, up to three per launch):

* ``_rank_proj_kernel``: ``t = x @ down.T``, a skinny GEMM (M, R).
* ``_dma_fwd_kernel``: one launch over the concatenated N of all projections; each program owns a
  (BM, BN) tile of one ``y_j`` and computes ``gamma*(x @ W_jᵀ) + b_j + (t*s_j) @ up_jᵀ``, the rank-R
  term being a second ``tl.dot`` into the same accumulator in the epilogue. With ``gamma`` it also
  writes ``base = x @ W_jᵀ`` (saved for ``d_gamma``).

Backward:

* ``_dma_dz_kernel``: ``dz_j = dy_j @ up_j`` for every projection of a launch, with the epilogue
  ``dt = Σ_j dz_j * s_j`` (fp32) and ``d_scale_j = dz_j * t`` (per row) or its per-block column sums.
* ``_dma_dx_kernel``: ``dx = [g_1 dy_1 | … | g_J dy_J | dt] @ [W_1; …; W_J; down]``, one K-loop whose last
  segment runs over R.
* ``_row_reduce_kernel``: ``Aᵀ (B*S)`` reductions over rows, split over programs with fp32 partials
  summed by a deterministic second stage: ``d_up_j = dy_jᵀ (t*s_j)`` together with
  ``d_gamma_j = Σ_rows dy_j*base_j`` (one read of dy), and ``d_down = dtᵀ x``.

Assumptions to verify on a GPU (this file was checked under ``TRITON_INTERPRET=1`` and compiled for
sm_80/sm_90 without running there): the pointer selection by a runtime branch in ``_dma_fwd_kernel``
keeps the K-loop software-pipelined; fp32 inputs use the default tf32 ``tl.dot`` (DESIGN allows
5e-4); the autotune lists in ``autotune.py`` are untimed guesses for A100/H100.
Per-projection tensors (``W_j``, ``up_j``, ``dy_j``, ``base_j``, ``scale_j``) must be contiguous rows,
which the canonical inputs are; the single tensors get their row strides passed explicitly.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import autotune as at
from .numerics import cast, dot, emulate_bf16

SLOTS = 3  # projections per launch (q, k, v); more are handled in chunks of SLOTS


@triton.jit
def _pick(j: tl.constexpr, a0, a1, a2):
    if j == 0:
        out = a0
    elif j == 1:
        out = a1
    else:
        out = a2
    return out


# --------------------------------------------------------------------------- forward


@triton.autotune(configs=at.SKINNY_CONFIGS, key=["M_BUCKET", "K", "R"])
@triton.jit
def _rank_proj_kernel(
    x_ptr, down_ptr, t_ptr, M, K, R, stride_xm, stride_dr, stride_tm, M_BUCKET,
    BM: tl.constexpr, BK: tl.constexpr, BR: tl.constexpr, EMU_BF16: tl.constexpr,
):
    """t[M, R] = x[M, K] @ down[R, K]ᵀ."""
    pid_m = tl.program_id(0)
    pid_r = tl.program_id(1)
    rm = pid_m * BM + tl.arange(0, BM)
    rr = pid_r * BR + tl.arange(0, BR)
    rk = tl.arange(0, BK)
    m_mask = rm < M
    r_mask = rr < R
    x_ptrs = x_ptr + rm[:, None] * stride_xm + rk[None, :]
    d_ptrs = down_ptr + rr[None, :] * stride_dr + rk[:, None]
    acc = tl.zeros((BM, BR), dtype=tl.float32)
    for k0 in range(0, K, BK):
        k_mask = rk + k0 < K
        a = tl.load(x_ptrs, mask=m_mask[:, None] & k_mask[None, :], other=0.0)
        b = tl.load(d_ptrs, mask=k_mask[:, None] & r_mask[None, :], other=0.0)
        acc = dot(a, b, acc, EMU_BF16)
        x_ptrs += BK
        d_ptrs += BK
    t_ptrs = t_ptr + rm[:, None] * stride_tm + rr[None, :]
    tl.store(t_ptrs, cast(acc, t_ptr.dtype.element_ty, EMU_BF16), mask=m_mask[:, None] & r_mask[None, :])


@triton.autotune(configs=at.FWD_CONFIGS, key=["M_BUCKET", "N_TOTAL", "K", "R", "HAS_BIAS", "HAS_GAMMA"])
@triton.jit(do_not_specialize=["N0", "N1", "N2", "ss0", "ss1", "ss2"])
def _dma_fwd_kernel(
    x_ptr, t_ptr,
    w0, w1, w2, b0, b1, b2, u0, u1, u2, s0, s1, s2, g0, g1, g2, y0, y1, y2, base0, base1, base2,
    M, K, R, N0, N1, N2, ss0, ss1, ss2, stride_xm, stride_tm, M_BUCKET, N_TOTAL,
    HAS_BIAS: tl.constexpr, HAS_GAMMA: tl.constexpr, EMU_BF16: tl.constexpr, BR: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr,
):
    """y_j = gamma_j*(x @ W_jᵀ) + b_j + (t*s_j) @ up_jᵀ over the concatenated N of slots 0..2.

    ``ss_j`` is the row stride of ``s_j``: its stride(0) for a per-row (M, R) scale, 0 for one (R,) vector.
    Unused slots have N_j = 0.
    """
    dtype = x_ptr.dtype.element_ty
    pid = tl.program_id(0)
    nb0 = tl.cdiv(N0, BN)
    nb1 = tl.cdiv(N1, BN)
    nb2 = tl.cdiv(N2, BN)
    num_pid_m = tl.cdiv(M, BM)
    num_pid_n = nb0 + nb1 + nb2
    group = GROUP_M * num_pid_n
    first_m = (pid // group) * GROUP_M
    group_m = min(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % group) % group_m
    pid_n = (pid % group) // group_m

    if pid_n < nb0:
        w = w0
        b = b0
        u = u0
        s = s0
        ss = ss0
        g = g0
        y = y0
        base = base0
        N = N0
        pn = pid_n
    elif pid_n < nb0 + nb1:
        w = w1
        b = b1
        u = u1
        s = s1
        ss = ss1
        g = g1
        y = y1
        base = base1
        N = N1
        pn = pid_n - nb0
    else:
        w = w2
        b = b2
        u = u2
        s = s2
        ss = ss2
        g = g2
        y = y2
        base = base2
        N = N2
        pn = pid_n - nb0 - nb1

    rm = pid_m * BM + tl.arange(0, BM)
    rn = pn * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    m_mask = rm < M
    n_mask = rn < N
    x_ptrs = x_ptr + rm[:, None] * stride_xm + rk[None, :]
    w_ptrs = w + rn[None, :] * K + rk[:, None]  # (BK, BN) tile of W_jᵀ
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, K, BK):
        k_mask = rk + k0 < K
        a = tl.load(x_ptrs, mask=m_mask[:, None] & k_mask[None, :], other=0.0)
        bt = tl.load(w_ptrs, mask=k_mask[:, None] & n_mask[None, :], other=0.0)
        acc = dot(a, bt, acc, EMU_BF16)
        x_ptrs += BK
        w_ptrs += BK

    mn_mask = m_mask[:, None] & n_mask[None, :]
    if HAS_GAMMA:
        tl.store(base + rm[:, None] * N + rn[None, :], cast(acc, dtype, EMU_BF16), mask=mn_mask)
        gam = tl.load(g + rn, mask=n_mask, other=0.0).to(tl.float32)
        acc = acc * gam[None, :]
    if HAS_BIAS:
        acc += tl.load(b + rn, mask=n_mask, other=0.0).to(tl.float32)[None, :]

    rr = tl.arange(0, BR)
    for r0 in range(0, R, BR):
        r_mask = rr + r0 < R
        mr_mask = m_mask[:, None] & r_mask[None, :]
        tt = tl.load(t_ptr + rm[:, None] * stride_tm + (r0 + rr)[None, :], mask=mr_mask, other=0.0)
        sc = tl.load(s + rm[:, None] * ss + (r0 + rr)[None, :], mask=mr_mask, other=0.0)
        z = cast(tt.to(tl.float32) * sc.to(tl.float32), dtype, EMU_BF16)
        ut = tl.load(u + rn[None, :] * R + (r0 + rr)[:, None],
                     mask=r_mask[:, None] & n_mask[None, :], other=0.0)
        acc = dot(z, ut, acc, EMU_BF16)
    tl.store(y + rm[:, None] * N + rn[None, :], cast(acc, dtype, EMU_BF16), mask=mn_mask)


# --------------------------------------------------------------------------- backward


@triton.autotune(configs=at.DZ_CONFIGS, key=["M_BUCKET", "N_TOTAL", "R", "J", "NEED_DT", "NEED_SCALE"])
@triton.jit
def _dma_dz_kernel(
    dy0, dy1, dy2, u0, u1, u2, s0, s1, s2, ds0, ds1, ds2, t_ptr, dt_ptr,
    M, R, N0, N1, N2, ss0, ss1, ss2, stride_tm, stride_dtm, M_BUCKET, N_TOTAL,
    J: tl.constexpr, NEED_DT: tl.constexpr, NEED_SCALE: tl.constexpr, SCALE_ROWS: tl.constexpr,
    EMU_BF16: tl.constexpr, BM: tl.constexpr, BR: tl.constexpr, BK: tl.constexpr,
):
    """dz_j = dy_j @ up_j; dt = Σ_j dz_j*s_j; d_scale_j = dz_j*t (bit j of SCALE_ROWS) or its column
    sums over this program's BM rows, written to row pid_m of a (cdiv(M, BM), R) fp32 partial."""
    pid_m = tl.program_id(0)
    pid_r = tl.program_id(1)
    rm = pid_m * BM + tl.arange(0, BM)
    rr = pid_r * BR + tl.arange(0, BR)
    rk = tl.arange(0, BK)
    m_mask = rm < M
    r_mask = rr < R
    mr_mask = m_mask[:, None] & r_mask[None, :]
    if NEED_SCALE:
        tt = tl.load(t_ptr + rm[:, None] * stride_tm + rr[None, :], mask=mr_mask, other=0.0)
        tt = tt.to(tl.float32)
    dt_acc = tl.zeros((BM, BR), dtype=tl.float32)
    for j in tl.static_range(J):
        dy = _pick(j, dy0, dy1, dy2)
        u = _pick(j, u0, u1, u2)
        N = _pick(j, N0, N1, N2)
        dz = tl.zeros((BM, BR), dtype=tl.float32)
        for n0 in range(0, N, BK):
            n_mask = rk + n0 < N
            a = tl.load(dy + rm[:, None] * N + (n0 + rk)[None, :],
                        mask=m_mask[:, None] & n_mask[None, :], other=0.0)
            b = tl.load(u + (n0 + rk)[:, None] * R + rr[None, :],
                        mask=n_mask[:, None] & r_mask[None, :], other=0.0)
            dz = dot(a, b, dz, EMU_BF16)
        if NEED_SCALE:
            ds_ptr = _pick(j, ds0, ds1, ds2)
            ds = dz * tt
            if (SCALE_ROWS >> j) & 1:
                tl.store(ds_ptr + rm[:, None] * R + rr[None, :], cast(ds, ds_ptr.dtype.element_ty, EMU_BF16),
                         mask=mr_mask)
            else:
                tl.store(ds_ptr + pid_m * R + rr, tl.sum(ds, axis=0), mask=r_mask)
        if NEED_DT:
            s = _pick(j, s0, s1, s2)
            ss = _pick(j, ss0, ss1, ss2)
            sc = tl.load(s + rm[:, None] * ss + rr[None, :], mask=mr_mask, other=0.0)
            dt_acc += dz * sc.to(tl.float32)
    if NEED_DT:
        tl.store(dt_ptr + rm[:, None] * stride_dtm + rr[None, :], dt_acc, mask=mr_mask)


@triton.autotune(configs=at.GEMM_CONFIGS, key=["M_BUCKET", "N_TOTAL", "K", "R", "J", "HAS_GAMMA"])
@triton.jit
def _dma_dx_kernel(
    dy0, dy1, dy2, w0, w1, w2, g0, g1, g2, dt_ptr, down_ptr, dx_ptr,
    M, K, R, N0, N1, N2, stride_dtm, stride_dr, stride_dxm, M_BUCKET, N_TOTAL,
    J: tl.constexpr, HAS_GAMMA: tl.constexpr, HAS_DT: tl.constexpr, EMU_BF16: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr,
):
    """dx[M, K] = Σ_j (gamma_j*dy_j) @ W_j + dt @ down: the reduction runs over N_0, …, N_{J-1}, then R."""
    dtype = w0.dtype.element_ty
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BM)
    num_pid_n = tl.cdiv(K, BN)
    group = GROUP_M * num_pid_n
    first_m = (pid // group) * GROUP_M
    group_m = min(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % group) % group_m
    pid_n = (pid % group) // group_m
    rm = pid_m * BM + tl.arange(0, BM)
    rc = pid_n * BN + tl.arange(0, BN)  # columns of dx: the K axis
    rk = tl.arange(0, BK)
    m_mask = rm < M
    c_mask = rc < K
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for j in tl.static_range(J):
        dy = _pick(j, dy0, dy1, dy2)
        w = _pick(j, w0, w1, w2)
        g = _pick(j, g0, g1, g2)
        N = _pick(j, N0, N1, N2)
        for n0 in range(0, N, BK):
            n_mask = rk + n0 < N
            a = tl.load(dy + rm[:, None] * N + (n0 + rk)[None, :],
                        mask=m_mask[:, None] & n_mask[None, :], other=0.0)
            if HAS_GAMMA:
                gam = tl.load(g + n0 + rk, mask=n_mask, other=0.0).to(tl.float32)
                a = cast(a.to(tl.float32) * gam[None, :], dtype, EMU_BF16)
            b = tl.load(w + (n0 + rk)[:, None] * K + rc[None, :],
                        mask=n_mask[:, None] & c_mask[None, :], other=0.0)
            acc = dot(a, b, acc, EMU_BF16)
    if HAS_DT:
        for r0 in range(0, R, BK):
            r_mask = rk + r0 < R
            a = tl.load(dt_ptr + rm[:, None] * stride_dtm + (r0 + rk)[None, :],
                        mask=m_mask[:, None] & r_mask[None, :], other=0.0)
            b = tl.load(down_ptr + (r0 + rk)[:, None] * stride_dr + rc[None, :],
                        mask=r_mask[:, None] & c_mask[None, :], other=0.0)
            acc = dot(cast(a, dtype, EMU_BF16), b, acc, EMU_BF16)
    tl.store(dx_ptr + rm[:, None] * stride_dxm + rc[None, :], cast(acc, dx_ptr.dtype.element_ty, EMU_BF16),
             mask=m_mask[:, None] & c_mask[None, :])


@triton.autotune(configs=at.ROW_REDUCTION_CONFIGS, key=["M_BUCKET", "P", "Q", "NEED_C", "HAS_GAMMA"])
@triton.jit
def _row_reduce_kernel(
    a_ptr, b_ptr, s_ptr, base_ptr, c_ptr, gp_ptr, M, P, Q, ss, rows_per_split,
    stride_am, stride_bm, M_BUCKET,
    NEED_C: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_GAMMA: tl.constexpr, EMU_BF16: tl.constexpr,
    BP: tl.constexpr, BQ: tl.constexpr, BM: tl.constexpr,
):
    """Partial ``c[split] = A[rows]ᵀ (B[rows] * S[rows])`` over this split's rows; with HAS_GAMMA the
    programs of the first Q block also write ``gp[split] = Σ_rows A*base`` (same layout as A)."""
    dtype = b_ptr.dtype.element_ty
    pid_p = tl.program_id(0)
    pid_q = tl.program_id(1)
    pid_s = tl.program_id(2)
    rp = pid_p * BP + tl.arange(0, BP)
    rq = pid_q * BQ + tl.arange(0, BQ)
    p_mask = rp < P
    q_mask = rq < Q
    m_lo = pid_s * rows_per_split
    m_hi = min(M, m_lo + rows_per_split)
    acc = tl.zeros((BP, BQ), dtype=tl.float32)
    gacc = tl.zeros((BP,), dtype=tl.float32)
    for m0 in range(m_lo, m_hi, BM):
        rm = m0 + tl.arange(0, BM)
        m_mask = rm < m_hi
        pm_mask = p_mask[:, None] & m_mask[None, :]
        at_ = tl.load(a_ptr + rm[None, :] * stride_am + rp[:, None], mask=pm_mask, other=0.0)
        if NEED_C:
            mq_mask = m_mask[:, None] & q_mask[None, :]
            b = tl.load(b_ptr + rm[:, None] * stride_bm + rq[None, :], mask=mq_mask, other=0.0)
            if HAS_SCALE:
                sc = tl.load(s_ptr + rm[:, None] * ss + rq[None, :], mask=mq_mask, other=0.0)
                b = cast(b.to(tl.float32) * sc.to(tl.float32), dtype, EMU_BF16)
            acc = dot(cast(at_, dtype, EMU_BF16), b, acc, EMU_BF16)
        if HAS_GAMMA:
            if pid_q == 0:
                bt = tl.load(base_ptr + rm[None, :] * stride_am + rp[:, None], mask=pm_mask, other=0.0)
                gacc += tl.sum(at_.to(tl.float32) * bt.to(tl.float32), axis=1)
    if NEED_C:
        c_ptrs = c_ptr + pid_s * P * Q + rp[:, None] * Q + rq[None, :]
        tl.store(c_ptrs, acc, mask=p_mask[:, None] & q_mask[None, :])
    if HAS_GAMMA:
        if pid_q == 0:
            tl.store(gp_ptr + pid_s * P + rp, gacc, mask=p_mask)


# --------------------------------------------------------------------------- launch wrappers


def _chunks(n: int):
    return [range(i, min(i + SLOTS, n)) for i in range(0, n, SLOTS)]


def _slots(items: list, fill):
    """Pad a per-projection list to SLOTS entries with ``fill`` (unused slots get N_j = 0)."""
    return list(items) + [fill] * (SLOTS - len(items))


def _skinny_block_m(M: int) -> int:
    # fixed by the wrapper (not autotuned): the d_scale partials have cdiv(M, BM) rows
    if at.INTERPRET:
        return 32
    return 128 if M >= 8192 else 64


def _splits(M: int, P: int, Q: int, device: torch.device) -> tuple[int, int]:
    """Row splits of a reduction over M: enough programs to fill the device, >= 64 rows each."""
    tiles = triton.cdiv(P, 64) * triton.cdiv(Q, 64)
    want = max(1, min(at.target_programs(device) // tiles, triton.cdiv(M, 64)))
    rows = triton.cdiv(triton.cdiv(M, want), 16) * 16
    return triton.cdiv(M, rows), rows


def rank_projection(x: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    """t = x @ down.T in x's dtype (fp32 accumulation)."""
    M, K = x.shape
    R = down.shape[0]
    t = x.new_empty(M, R)
    BR = at.rank_block(R)

    def grid(meta):
        return triton.cdiv(M, meta["BM"]), triton.cdiv(R, BR)

    _rank_proj_kernel[grid](x, down, t, M, K, R, x.stride(0), down.stride(0), t.stride(0),
                            at.bucket(M), BR=BR, EMU_BF16=emulate_bf16(x.dtype))
    return t


def forward(x, weights, biases, down, ups, scales, gammas):
    """The canonical ``dma_linear_forward`` on fp16/bf16/fp32 tensors (see ``reference``)."""
    M, K = x.shape
    R = down.shape[0]
    J = len(weights)
    t = rank_projection(x, down)
    has_bias = any(b is not None for b in biases)
    has_gamma = any(g is not None for g in gammas)
    # a launch has one HAS_BIAS / HAS_GAMMA: the rare mixed call gets zeros / ones for the missing ones
    biases_k = [x.new_zeros(w.shape[0]) if b is None else b for b, w in zip(biases, weights)] \
        if has_bias else [x] * J
    gammas_k = [x.new_ones(w.shape[0]) if g is None else g for g, w in zip(gammas, weights)] \
        if has_gamma else [x] * J
    ys = [x.new_empty(M, w.shape[0]) for w in weights]
    bases = [x.new_empty(M, w.shape[0]) if has_gamma else x for w in weights]
    BR = at.rank_block(R)
    for idx in _chunks(J):
        def pick(items, idx=idx):
            return _slots([items[j] for j in idx], items[idx[0]])

        Ns = _slots([weights[j].shape[0] for j in idx], 0)
        ss = _slots([scales[j].stride(0) if scales[j].dim() == 2 else 0 for j in idx], 0)

        def grid(meta, Ns=Ns):
            return (triton.cdiv(M, meta["BM"]) * sum(triton.cdiv(n, meta["BN"]) for n in Ns),)

        _dma_fwd_kernel[grid](
            x, t, *pick(weights), *pick(biases_k), *pick(ups), *pick(scales), *pick(gammas_k), *pick(ys),
            *pick(bases),
            M, K, R, *Ns, *ss, x.stride(0), t.stride(0), at.bucket(M), sum(Ns),
            HAS_BIAS=has_bias, HAS_GAMMA=has_gamma, EMU_BF16=emulate_bf16(x.dtype), BR=BR,
        )
    bases = [b if g is not None else x.new_empty(0) for b, g in zip(bases, gammas)]
    return ys, t, bases


def _dz(dys, ups, scales, t, idx, need_dt, need_scale):
    """One launch of ``_dma_dz_kernel`` for the projections ``idx``: (dt fp32 or None, d_scales)."""
    M, R = t.shape
    BM, BR = _skinny_block_m(M), at.rank_block(R)
    rows_scale = [scales[j].dim() == 2 for j in idx]
    ds = [t.new_empty(M, R) if rows else torch.empty(triton.cdiv(M, BM), R, device=t.device,
                                                      dtype=torch.float32)
          for rows in rows_scale] if need_scale else [t] * len(idx)
    dt = torch.empty(M, R, device=t.device, dtype=torch.float32) if need_dt else t

    def pick(items):
        return _slots([items[j] for j in idx], items[idx[0]])

    Ns = _slots([dys[j].shape[1] for j in idx], 0)
    ss = _slots([scales[j].stride(0) if scales[j].dim() == 2 else 0 for j in idx], 0)
    _dma_dz_kernel[(triton.cdiv(M, BM), triton.cdiv(R, BR))](
        *pick(dys), *pick(ups), *pick(scales), *_slots(ds, ds[0]), t, dt,
        M, R, *Ns, *ss, t.stride(0), dt.stride(0), at.bucket(M), sum(Ns),
        J=len(idx), NEED_DT=need_dt, NEED_SCALE=need_scale,
        SCALE_ROWS=sum(1 << i for i, rows in enumerate(rows_scale) if rows),
        EMU_BF16=emulate_bf16(t.dtype), BM=BM, BR=BR,
    )
    if need_scale:
        ds = [d if rows else d.sum(0).to(t.dtype) for d, rows in zip(ds, rows_scale)]
    return (dt if need_dt else None), (ds if need_scale else [None] * len(idx))


def _dx(dys, weights, gammas, dt, down, idx, out):
    M, K = out.shape
    R = down.shape[0]
    has_gamma = any(g is not None for g in gammas)
    gammas = [dys[0].new_ones(w.shape[0]) if g is None else g for g, w in zip(gammas, weights)]

    def pick(items):
        return _slots([items[j] for j in idx], items[idx[0]])

    Ns = _slots([dys[j].shape[1] for j in idx], 0)
    has_dt = dt is not None
    dt_arg = dt if has_dt else out

    def grid(meta):
        return (triton.cdiv(M, meta["BM"]) * triton.cdiv(K, meta["BN"]),)

    _dma_dx_kernel[grid](
        *pick(dys), *pick(weights), *pick(gammas), dt_arg, down, out,
        M, K, R, *Ns, dt_arg.stride(0), down.stride(0), out.stride(0), at.bucket(M), sum(Ns),
        J=len(idx), HAS_GAMMA=has_gamma, HAS_DT=has_dt, EMU_BF16=emulate_bf16(down.dtype),
    )


def row_reduce(a, b, scale=None, base=None, need_c=True):
    """``(aᵀ (b*scale), Σ_rows a*base)`` in b's dtype; either may be skipped (None)."""
    M, P = a.shape
    Q = b.shape[1]
    splits, rows = _splits(M, P, Q, a.device)
    c = torch.empty(splits, P, Q, device=a.device, dtype=torch.float32) if need_c else a
    gp = torch.empty(splits, P, device=a.device, dtype=torch.float32) if base is not None else a
    ss = 0 if scale is None or scale.dim() == 1 else scale.stride(0)

    def grid(meta):
        return triton.cdiv(P, meta["BP"]), triton.cdiv(Q, meta["BQ"]) if need_c else 1, splits

    _row_reduce_kernel[grid](
        a, b, b if scale is None else scale, a if base is None else base, c, gp, M, P, Q, ss, rows,
        a.stride(0), b.stride(0), at.bucket(M),
        NEED_C=need_c, HAS_SCALE=scale is not None, HAS_GAMMA=base is not None,
        EMU_BF16=emulate_bf16(b.dtype),
    )
    c = c.sum(0).to(b.dtype) if need_c else None
    g = gp.sum(0).to(b.dtype) if base is not None else None
    return c, g


def backward(dys, x, weights, down, ups, scales, gammas, t, bases, needs):
    """The canonical ``dma_linear_backward`` on fp16/bf16/fp32 tensors (see ``reference``)."""
    need_x, need_down, need_up, need_scale, need_gamma = needs
    M, K = x.shape
    J = len(weights)
    need_dt = need_x or need_down
    dt, d_scales = None, [None] * J
    if need_dt or need_scale:
        for idx in _chunks(J):
            dt_c, ds_c = _dz(dys, ups, scales, t, idx, need_dt, need_scale)
            dt = dt_c if dt is None else dt + dt_c
            for j, d in zip(idx, ds_c):
                d_scales[j] = d
    dx = None
    if need_x:
        chunks = _chunks(J)
        if len(chunks) == 1:
            dx = x.new_empty(M, K)
            _dx(dys, weights, gammas, dt, down, chunks[0], dx)
        else:  # more than SLOTS projections: fp32 partials per chunk, dt in the first
            parts = [torch.empty(M, K, device=x.device, dtype=torch.float32) for _ in chunks]
            for i, (idx, part) in enumerate(zip(chunks, parts)):
                _dx(dys, weights, gammas, dt if i == 0 else None, down, idx, part)
            dx = torch.stack(parts).sum(0).to(x.dtype)
    d_ups, d_gammas = [None] * J, [None] * J
    for j in range(J):
        want_gamma = need_gamma and gammas[j] is not None
        if need_up or want_gamma:
            d_ups[j], d_gammas[j] = row_reduce(dys[j], t, scales[j], bases[j] if want_gamma else None,
                                               need_c=need_up)
    d_down = row_reduce(dt, x)[0] if need_down else None
    return dx, d_down, d_ups, d_scales, d_gammas
