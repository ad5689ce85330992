"""The definition of correct: the ops' math in plain PyTorch.

Two layers live here:

* ``dma_linear``, ``dma_linear_multi`` and ``gated_residual`` are differentiable formulas on
  user-shaped tensors. Tests take their float64 outputs and autograd gradients as the truth.
* ``*_forward`` / ``*_backward`` are the ``reference`` backend: the same math on the canonical
  2-D tensors every backend receives (see ``petal_kernels/_ops.py``), with explicit backward
  formulas that the compiled backends mirror.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from . import philox

GRANULARITIES = ("large", "middleX", "middleY", "small")


# --------------------------------------------------------------------------- formulas


def dma_linear(x, weight, bias, down, up, scale, gamma=None):
    """y = gamma * (x @ weight.T) + bias + ((x @ down.T) * scale) @ up.T"""
    base = x @ weight.T
    if gamma is not None:
        base = base * gamma
    if bias is not None:
        base = base + bias
    return base + ((x @ down.T) * scale) @ up.T


def dma_linear_multi(x, weights, biases, down, ups, scales, gammas=None):
    gammas = [None] * len(weights) if gammas is None else gammas
    return tuple(
        dma_linear(x, w, b, down, u, s, g)
        for w, b, u, s, g in zip(weights, biases, ups, scales, gammas)
    )


def gate(granularity, x, h2, gate_logits=None, gate_weight=None, gate_bias=None, gate_vector=None):
    """The VL-PET gate G, broadcastable against ``h2``."""
    if granularity == "large":
        return torch.sigmoid(gate_logits)
    if granularity == "middleX":
        return torch.sigmoid((x + h2) @ gate_weight + gate_bias).unsqueeze(-1)
    if granularity == "middleY":
        return 1 + gate_vector
    if granularity == "small":
        d = x.shape[-1]
        s = x @ gate_weight[:d] + h2 @ gate_weight[d:] + gate_bias  # (B, T)
        return torch.sigmoid(s).mean(dim=-1).reshape(-1, 1, 1)
    raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")


def gated_residual(
    x, h, u, granularity, adapter_scale=1.0, gate_scale=1.0, gate_logits=None,
    gate_weight=None, gate_bias=None, gate_vector=None, dropout_mask=None, dropout_p=0.0,
    dropout_seed=None,
):
    h2 = h + adapter_scale * u
    g = gate(granularity, x, h2, gate_logits, gate_weight, gate_bias, gate_vector)
    delta = g * h2
    dropout_mask = _mask(x, dropout_mask, dropout_p, dropout_seed)
    if dropout_mask is not None:
        delta = delta * dropout_mask
    return x + gate_scale * delta


def _mask(x, dropout_mask, dropout_p, dropout_seed):
    """The caller's mask, or the ``philox`` mask of ``dropout_seed`` when ``dropout_p > 0``."""
    if not dropout_p:
        return dropout_mask
    return philox.dropout_mask(int(dropout_seed), dropout_p, x.shape, x.dtype, x.device)


def gelu_new(x: Tensor) -> Tensor:
    """φ of VL-PET (the tanh approximation, HF's ``gelu_new``)."""
    return F.gelu(x, approximate="tanh")


# --------------------------------------------------------------------------- backend: dma_linear


def _empty(ref: Tensor) -> Tensor:
    return ref.new_empty(0)


def dma_linear_forward(x, weights, biases, down, ups, scales, gammas):
    """Canonical forward for J projections sharing ``x`` (M, K).

    Returns ``(ys, t, bases)``: ``ys[j]`` (M, N_j); ``t = x @ down.T`` (M, R), saved for backward;
    ``bases[j] = x @ weights[j].T`` when ``gammas[j]`` is given (``d_gamma`` needs it), else empty.
    """
    t = x @ down.T
    ys, bases = [], []
    for w, b, u, s, g in zip(weights, biases, ups, scales, gammas):
        base = x @ w.T
        y = base * g if g is not None else base
        if b is not None:
            y = y + b
        ys.append(y + (t * s) @ u.T)
        bases.append(base if g is not None else _empty(x))
    return ys, t, bases


def dma_linear_backward(dys, x, weights, down, ups, scales, gammas, t, bases, needs):
    """Canonical backward. ``needs = (x, down, ups, scales, gammas)`` says which grads to compute.

    Returns ``(dx, d_down, d_ups, d_scales, d_gammas)``; a grad that is not needed is ``None``.
    ``d_scales[j]`` has the canonical shape of ``scales[j]`` ((R,) or (M, R)).
    """
    need_x, need_down, need_up, need_scale, need_gamma = needs
    dt = torch.zeros_like(t) if (need_x or need_down) else None
    dx = None
    d_ups, d_scales, d_gammas = [], [], []
    for dy, w, u, s, g, base in zip(dys, weights, ups, scales, gammas, bases):
        dz = dy @ u
        d_ups.append(dy.T @ (t * s) if need_up else None)
        if need_scale:
            ds = dz * t
            d_scales.append(ds.sum(0) if s.dim() == 1 else ds)
        else:
            d_scales.append(None)
        d_gammas.append((dy * base).sum(0) if (need_gamma and g is not None) else None)
        if dt is not None:
            dt += dz * s
        if need_x:
            gdy = dy * g if g is not None else dy
            dx = gdy @ w if dx is None else dx + gdy @ w
    d_down = dt.T @ x if need_down else None
    if need_x:
        dx = dx + dt @ down
    return dx, d_down, d_ups, d_scales, d_gammas


# --------------------------------------------------------------------------- backend: gated_residual


def _acc(t: Tensor) -> Tensor:
    """Gate reductions collapse many terms into one score per row or example and can cancel
    badly; they accumulate in float64 (float32 inputs) or float32 (half inputs)."""
    return t.double() if t.dtype in (torch.float32, torch.float64) else t.float()


def gated_residual_forward(
    x, h, u, granularity, adapter_scale, gate_scale, gate_logits, gate_weight, gate_bias,
    gate_vector, dropout_mask, dropout_p, dropout_seed, batch,
):
    """Canonical forward on (M, d) rows; ``batch`` examples of M // batch rows each ("small").
    Dropout is ``dropout_mask`` or, when ``dropout_p > 0``, the ``philox`` stream of ``dropout_seed``.

    Returns ``(out, stat)``: ``stat`` holds the pre-sigmoid gate scores the backward reuses,
    (M,) for middleX and small, empty otherwise.
    """
    d = x.shape[-1]
    h2 = h + adapter_scale * u
    stat = _empty(x)
    if granularity == "large":
        g = torch.sigmoid(gate_logits)
    elif granularity == "middleX":
        h2_acc = _acc(h) + adapter_scale * _acc(u)
        stat = ((_acc(x) + h2_acc) @ _acc(gate_weight) + _acc(gate_bias).reshape(())).to(x.dtype)
        g = torch.sigmoid(stat).unsqueeze(-1)
    elif granularity == "middleY":
        g = 1 + gate_vector
    else:
        w = _acc(gate_weight)
        stat = _acc(x) @ w[:d] + (_acc(h) + adapter_scale * _acc(u)) @ w[d:] + _acc(gate_bias).reshape(())
        rows = x.shape[0] // batch if batch else 0
        g_ex = torch.sigmoid(stat).reshape(batch, rows).mean(-1).to(x.dtype)
        stat = stat.to(x.dtype)
        g = g_ex.repeat_interleave(rows).unsqueeze(-1)
    delta = g * h2
    dropout_mask = _mask(x, dropout_mask, dropout_p, dropout_seed)
    if dropout_mask is not None:
        delta = delta * dropout_mask
    return x + gate_scale * delta, stat


def gated_residual_backward(
    dout, x, h, u, granularity, adapter_scale, gate_scale, gate_logits, gate_weight, gate_bias,
    gate_vector, dropout_mask, dropout_p, dropout_seed, batch, stat,
):
    """Returns ``(dx, dh, du, d_logits, d_weight, d_bias, d_vector)``; unused gate grads are None."""
    d = x.shape[-1]
    h2 = h + adapter_scale * u
    h2_acc = _acc(h) + adapter_scale * _acc(u)  # the gate reductions read h2 unrounded
    e = dout * gate_scale
    dropout_mask = _mask(x, dropout_mask, dropout_p, dropout_seed)
    if dropout_mask is not None:
        e = e * dropout_mask
    dx = dout.clone()
    d_logits = d_weight = d_bias = d_vector = None
    if granularity == "large":
        g = torch.sigmoid(gate_logits)
        dh2 = e * g
        d_logits = e * h2 * g * (1 - g)
    elif granularity == "middleX":
        sg = torch.sigmoid(_acc(stat))
        ds = (_acc(e) * h2_acc).sum(-1) * sg * (1 - sg)  # (M,)
        d_weight = (ds @ (_acc(x) + h2_acc)).to(x.dtype)
        d_bias = ds.sum().reshape(gate_bias.shape).to(x.dtype)
        sg, ds = sg.to(x.dtype), ds.to(x.dtype)
        dh2 = e * sg.unsqueeze(-1) + ds.unsqueeze(-1) * gate_weight
        dx = dx + ds.unsqueeze(-1) * gate_weight
    elif granularity == "middleY":
        dh2 = e * (1 + gate_vector)
        d_vector = (_acc(e) * h2_acc).sum(0).to(x.dtype)
    else:
        rows = x.shape[0] // batch if batch else 0
        sg = torch.sigmoid(_acc(stat))
        g_ex = sg.reshape(batch, rows).mean(-1)
        dg_ex = (_acc(e) * h2_acc).sum(-1).reshape(batch, rows).sum(-1)
        ds = (dg_ex / rows).repeat_interleave(rows) * sg * (1 - sg)  # (M,)
        d_weight = torch.cat([ds @ _acc(x), ds @ h2_acc]).to(x.dtype)
        d_bias = ds.sum().reshape(gate_bias.shape).to(x.dtype)
        g_ex, ds = g_ex.to(x.dtype), ds.to(x.dtype)
        dh2 = e * g_ex.repeat_interleave(rows).unsqueeze(-1) + ds.unsqueeze(-1) * gate_weight[d:]
        dx = dx + ds.unsqueeze(-1) * gate_weight[:d]
    return dx, dh2, adapter_scale * dh2, d_logits, d_weight, d_bias, d_vector
