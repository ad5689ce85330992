"""The ``torch.library`` custom ops (namespace ``petal``): canonicalisation, autograd and fake impls.

Every backend sees canonical tensors: rows flattened to 2-D and contiguous, ``scale`` as ``(R,)``
or ``(M, R)``, ``gate_bias`` as ``(1,)``. Zero-row calls never reach a backend.

Ops (all return auxiliary tensors the backward reuses; the public wrappers drop them):

* ``petal::dma_linear(x, weight, bias?, down, up, scale, gamma?) -> (y, t, base)``
* ``petal::dma_linear_multi(x, weights[], biases?[], down, ups[], scales[], gammas?[]) -> (ys[], t, bases[])``
* ``petal::dma_linear_backward(...)``
* ``petal::gated_residual(x, h, u, granularity, adapter_scale, gate_scale, gate_logits?, gate_weight?,
  gate_bias?, gate_vector?, dropout_mask?, dropout_p, dropout_seed?) -> (out, stat)``; ``dropout_seed`` is a
  0-dim int64 CPU tensor (see ``petal_kernels.philox``), read only when ``dropout_p > 0``
* ``petal::gated_residual_backward(...)``

Eager ``gated_residual`` calls on the compiled backends run the C++ autograd op over the same kernels
instead (bottom of this file).
"""

from __future__ import annotations

import functools
import math
from typing import Optional

import torch
from torch import Tensor

from . import _backend, reference

Opt = Optional[Tensor]


def _rows(t: Tensor) -> int:
    return math.prod(t.shape[:-1])


def _backend_for(x: Tensor, rows: int):
    return reference if rows == 0 else _backend.select(x.device)


def _grads_like(inputs: list, grads: list):
    """custom_op treats a list input holding a None as one leaf: its grad must be None."""
    return None if any(v is None for v in inputs) else grads


# --------------------------------------------------------------------------- dma_linear


def _canon_scale(scale: Tensor, lead: tuple, rows: int) -> Tensor:
    R = scale.shape[-1]
    if scale.numel() == R and R > 0 and (scale.dim() == 1 or all(s == 1 for s in scale.shape[:-1])):
        return scale.reshape(R).contiguous()
    return scale.expand(*lead, R).reshape(rows, R).contiguous()


def _canon_scales(scales, lead, rows, R):
    out = []
    for s in scales:
        if s.shape[-1] != R:  # (…, 1): one value per row, broadcast over R
            s = s.expand(*s.shape[:-1], R)
        out.append(_canon_scale(s, lead, rows))
    return out


def _dma_forward(x, weights, biases, down, ups, scales, gammas):
    K, R, lead, rows = x.shape[-1], down.shape[0], tuple(x.shape[:-1]), _rows(x)
    backend = _backend_for(x, rows)
    ys, t, bases = backend.dma_linear_forward(
        x.reshape(rows, K).contiguous(),
        [w.contiguous() for w in weights],
        [None if b is None else b.contiguous() for b in biases],
        down.contiguous(),
        [u.contiguous() for u in ups],
        _canon_scales(scales, lead, rows, R),
        [None if g is None else g.contiguous() for g in gammas],
    )
    return [y.reshape(*lead, y.shape[-1]) for y in ys], t, list(bases)


@torch.library.custom_op("petal::dma_linear_multi", mutates_args=())
def dma_linear_multi_op(
    x: Tensor, weights: list[Tensor], biases: list[Opt], down: Tensor, ups: list[Tensor],
    scales: list[Tensor], gammas: list[Opt],
) -> tuple[list[Tensor], Tensor, list[Tensor]]:
    return _dma_forward(x, weights, biases, down, ups, scales, gammas)


@torch.library.custom_op("petal::dma_linear", mutates_args=())
def dma_linear_op(
    x: Tensor, weight: Tensor, bias: Opt, down: Tensor, up: Tensor, scale: Tensor, gamma: Opt,
) -> tuple[Tensor, Tensor, Tensor]:
    ys, t, bases = _dma_forward(x, [weight], [bias], down, [up], [scale], [gamma])
    return ys[0], t, bases[0]


def _dma_fake(x, weights, gammas, R):
    rows = _rows(x)
    ys = [x.new_empty(*x.shape[:-1], w.shape[0]) for w in weights]
    bases = [x.new_empty(rows, w.shape[0]) if g is not None else x.new_empty(0)
             for w, g in zip(weights, gammas)]
    return ys, x.new_empty(rows, R), bases


@dma_linear_multi_op.register_fake
def _(x, weights, biases, down, ups, scales, gammas):
    return _dma_fake(x, weights, gammas, down.shape[0])


@dma_linear_op.register_fake
def _(x, weight, bias, down, up, scale, gamma):
    ys, t, bases = _dma_fake(x, [weight], [gamma], down.shape[0])
    return ys[0], t, bases[0]


@torch.library.custom_op("petal::dma_linear_backward", mutates_args=())
def dma_linear_backward_op(
    dys: list[Tensor], x: Tensor, weights: list[Tensor], down: Tensor, ups: list[Tensor],
    scales: list[Tensor], gammas: list[Opt], t: Tensor, bases: list[Tensor], needs: list[bool],
) -> tuple[Tensor, Tensor, list[Tensor], list[Tensor], list[Tensor]]:
    K, R, lead, rows = x.shape[-1], down.shape[0], tuple(x.shape[:-1]), _rows(x)
    backend = _backend_for(x, rows)
    canon = _canon_scales(scales, lead, rows, R)
    dx, d_down, d_ups, d_scales, d_gammas = backend.dma_linear_backward(
        [dy.reshape(rows, dy.shape[-1]).contiguous() for dy in dys],
        x.reshape(rows, K).contiguous(),
        [w.contiguous() for w in weights],
        down.contiguous(),
        [u.contiguous() for u in ups],
        canon,
        [None if g is None else g.contiguous() for g in gammas],
        t,
        [None if g is None else b for g, b in zip(gammas, bases)],
        tuple(needs),
    )
    def empty():  # outputs must not alias each other: a fresh one each time
        return x.new_empty(0)

    dx = empty() if dx is None else dx.reshape(x.shape)
    d_down = empty() if d_down is None else d_down
    d_ups = [empty() if g is None else g for g in d_ups]
    d_scales = [
        empty() if g is None else
        (g.reshape(*[1] * (s.dim() - 1), R) if c.dim() == 1 else g.reshape(*lead, R)).sum_to_size(s.shape)
        for g, c, s in zip(d_scales, canon, scales)
    ]
    d_gammas = [empty() if g is None else g for g in d_gammas]
    return dx, d_down, d_ups, d_scales, d_gammas


@dma_linear_backward_op.register_fake
def _dma_backward_fake(dys, x, weights, down, ups, scales, gammas, t, bases, needs):
    need_x, need_down, need_up, need_scale, need_gamma = needs

    def like(t, need):
        return t.new_empty(t.shape) if (need and t is not None) else x.new_empty(0)

    return (
        like(x, need_x),
        like(down, need_down),
        [like(u, need_up) for u in ups],
        [like(s, need_scale) for s in scales],
        [like(g, need_gamma) for g in gammas],
    )


def _dma_needs(x, down, ups, scales, gammas) -> list[bool]:
    return [
        x.requires_grad,
        down.requires_grad,
        any(u.requires_grad for u in ups),
        any(s.requires_grad for s in scales),
        any(g is not None and g.requires_grad for g in gammas),
    ]


def _dma_backward(ctx, dys):
    x, down, t, *rest = ctx.saved_tensors
    J = ctx.num_projections
    weights, ups, scales = rest[:J], rest[J:2 * J], rest[2 * J:3 * J]
    gammas = [g if has else None for g, has in zip(rest[3 * J:4 * J], ctx.has_gamma)]
    bases = list(rest[4 * J:5 * J])
    dys = [x.new_zeros(shape) if dy is None else dy for dy, shape in zip(dys, ctx.out_shapes)]
    dx, d_down, d_ups, d_scales, d_gammas = dma_linear_backward_op(
        dys, x, list(weights), down, list(ups), list(scales), gammas, t, bases, ctx.needs)
    need_x, need_down, need_up, need_scale, need_gamma = ctx.needs
    return (
        dx if need_x else None,
        d_down if need_down else None,
        [g if need_up else None for g in d_ups],
        [g if need_scale else None for g in d_scales],
        [g if (need_gamma and has) else None for g, has in zip(d_gammas, ctx.has_gamma)],
    )


def _dma_setup(ctx, x, weights, down, ups, scales, gammas, ys, t, bases):
    # t and the bases never receive a gradient: without this autograd would hand the backward an
    # (M, N) block of zeros per base (a fresh multi-MB allocation and fill per projection per step)
    ctx.set_materialize_grads(False)
    ctx.num_projections = len(weights)
    ctx.has_gamma = [g is not None for g in gammas]
    ctx.needs = _dma_needs(x, down, ups, scales, gammas)
    ctx.out_shapes = [y.shape for y in ys]
    ctx.save_for_backward(
        x, down, t, *weights, *ups, *scales,
        *[g if g is not None else t.new_empty(0) for g in gammas], *bases,
    )


def _multi_setup(ctx, inputs, output):
    x, weights, biases, down, ups, scales, gammas = inputs
    ys, t, bases = output
    _dma_setup(ctx, x, weights, down, ups, scales, gammas, ys, t, bases)


def _multi_backward(ctx, dys, _dt, _dbases):
    dx, d_down, d_ups, d_scales, d_gammas = _dma_backward(ctx, list(dys))
    J = ctx.num_projections
    gammas_in = [None if not has else True for has in ctx.has_gamma]
    return (dx, [None] * J, ctx.biases_like, d_down, d_ups, d_scales, _grads_like(gammas_in, d_gammas))


def _multi_setup_full(ctx, inputs, output):
    _multi_setup(ctx, inputs, output)
    ctx.biases_like = _grads_like(list(inputs[2]), [None] * len(inputs[2]))


dma_linear_multi_op.register_autograd(_multi_backward, setup_context=_multi_setup_full)


def _single_setup(ctx, inputs, output):
    x, weight, bias, down, up, scale, gamma = inputs
    y, t, base = output
    _dma_setup(ctx, x, [weight], down, [up], [scale], [gamma], [y], t, [base])


def _single_backward(ctx, dy, _dt, _dbase):
    dx, d_down, d_ups, d_scales, d_gammas = _dma_backward(ctx, [dy])
    return dx, None, None, d_down, d_ups[0], d_scales[0], d_gammas[0]


dma_linear_op.register_autograd(_single_backward, setup_context=_single_setup)


# --------------------------------------------------------------------------- gated_residual


def _gate_canon(x, gate_logits, gate_weight, gate_bias, gate_vector, dropout_mask):
    d, rows = x.shape[-1], _rows(x)

    def flat(t):
        return None if t is None else t.reshape(rows, d).contiguous()

    def vec(t):
        return None if t is None else t.reshape(-1).contiguous()

    return flat(gate_logits), vec(gate_weight), vec(gate_bias), vec(gate_vector), flat(dropout_mask)


def _dx_is_dout(granularity: str) -> bool:
    """Gates that do not read x: dL/dx is dout itself, returned by the autograd formula (a custom op's
    outputs may not alias its inputs, so the backward op returns an empty dx instead of a copy)."""
    return granularity in ("large", "middleY")


def _du_is_dh(adapter_scale: float) -> bool:
    return adapter_scale == 1.0


def _dropout(dropout_p: float, dropout_seed: Tensor | None) -> tuple[float, int]:
    """(p, seed) of in-kernel dropout for the canonical backends; p = 0 turns it off."""
    if dropout_p == 0.0 or dropout_seed is None:
        return 0.0, 0
    return float(dropout_p), int(dropout_seed)


def _batch(x: Tensor, granularity: str) -> int:
    return x.shape[0] if granularity == "small" else 0


@torch.library.custom_op("petal::gated_residual", mutates_args=())
def gated_residual_op(
    x: Tensor, h: Tensor, u: Tensor, granularity: str, adapter_scale: float, gate_scale: float,
    gate_logits: Opt, gate_weight: Opt, gate_bias: Opt, gate_vector: Opt, dropout_mask: Opt,
    dropout_p: float = 0.0, dropout_seed: Opt = None,
) -> tuple[Tensor, Tensor]:
    d, rows = x.shape[-1], _rows(x)
    backend = _backend_for(x, rows)
    out, stat = backend.gated_residual_forward(
        x.reshape(rows, d).contiguous(), h.reshape(rows, d).contiguous(),
        u.reshape(rows, d).contiguous(), granularity, float(adapter_scale), float(gate_scale),
        *_gate_canon(x, gate_logits, gate_weight, gate_bias, gate_vector, dropout_mask),
        *_dropout(dropout_p, dropout_seed), _batch(x, granularity),
    )
    return out.reshape(x.shape), stat


@gated_residual_op.register_fake
def _gated_forward_fake(x, h, u, granularity, adapter_scale, gate_scale, gate_logits, gate_weight, gate_bias,
                        gate_vector, dropout_mask, dropout_p=0.0, dropout_seed=None):
    stat_rows = _rows(x) if granularity in ("middleX", "small") else 0
    return x.new_empty(x.shape), x.new_empty(stat_rows)


@torch.library.custom_op("petal::gated_residual_backward", mutates_args=())
def gated_residual_backward_op(
    dout: Tensor, x: Tensor, h: Tensor, u: Tensor, granularity: str, adapter_scale: float,
    gate_scale: float, gate_logits: Opt, gate_weight: Opt, gate_bias: Opt, gate_vector: Opt,
    dropout_mask: Opt, dropout_p: float, dropout_seed: Opt, stat: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    d, rows = x.shape[-1], _rows(x)
    backend = _backend_for(x, rows)
    grads = backend.gated_residual_backward(
        dout.reshape(rows, d).contiguous(), x.reshape(rows, d).contiguous(),
        h.reshape(rows, d).contiguous(), u.reshape(rows, d).contiguous(), granularity,
        float(adapter_scale), float(gate_scale),
        *_gate_canon(x, gate_logits, gate_weight, gate_bias, gate_vector, dropout_mask),
        *_dropout(dropout_p, dropout_seed), _batch(x, granularity), stat,
    )
    dx, dh, du, d_logits, d_weight, d_bias, d_vector = grads
    if _dx_is_dout(granularity):
        dx = None
    if _du_is_dh(adapter_scale):
        du = None

    def out(g, shape):
        return x.new_empty(0) if g is None else g.reshape(shape)

    return (
        out(dx, x.shape), dh.reshape(x.shape), out(du, x.shape),
        out(d_logits, x.shape),
        out(d_weight, (-1,)),
        out(d_bias, () if gate_bias is None else gate_bias.shape),
        out(d_vector, (-1,)),
    )


@gated_residual_backward_op.register_fake
def _gated_backward_fake(dout, x, h, u, granularity, adapter_scale, gate_scale, gate_logits, gate_weight,
                         gate_bias, gate_vector, dropout_mask, dropout_p, dropout_seed, stat):
    def like(t):
        return x.new_empty(0) if t is None else t.new_empty(t.shape)

    return (x.new_empty(0) if _dx_is_dout(granularity) else x.new_empty(x.shape), x.new_empty(x.shape),
            x.new_empty(0) if _du_is_dh(adapter_scale) else x.new_empty(x.shape), like(gate_logits),
            like(gate_weight), like(gate_bias), like(gate_vector))


_GATE_INPUTS = ("gate_logits", "gate_weight", "gate_bias", "gate_vector", "dropout_mask")


def _gated_setup(ctx, inputs, output):
    x, h, u, granularity, adapter_scale, gate_scale, *gates, dropout_p, dropout_seed = inputs
    ctx.args = (granularity, adapter_scale, gate_scale)
    ctx.dropout = (dropout_p, dropout_seed)
    ctx.present = [g is not None for g in gates]
    ctx.needs = [g is not None and g.requires_grad for g in gates[:4]]
    ctx.save_for_backward(x, h, u, output[1], *[g for g in gates if g is not None])


def _gated_backward(ctx, dout, _dstat):
    x, h, u, stat, *present = ctx.saved_tensors
    it = iter(present)
    gates = [next(it) if has else None for has in ctx.present]
    dx, dh, du, *d_gates = gated_residual_backward_op(dout, x, h, u, *ctx.args, *gates, *ctx.dropout, stat)
    granularity, adapter_scale, _ = ctx.args
    if _dx_is_dout(granularity):
        dx = dout
    if _du_is_dh(adapter_scale):
        du = dh
    d_gates = [dg if need else None for need, dg in zip(ctx.needs, d_gates)]
    return (dx, dh, du, None, None, None, *d_gates, None, None, None)


gated_residual_op.register_autograd(_gated_backward, setup_context=_gated_setup)


# --------------------------------------------------------------------------- the compiled kernels' fakes


def register_compiled_fakes() -> None:
    """Fake (meta) impls of the petal_C kernel ops (csrc/library.cpp), once the extension defined them:
    the canonical-tensor case of the fakes above. They let FakeTensor, torch.library.opcheck and
    torch.compile trace petal_C::gated_residual_autograd down to the kernels."""
    fake = torch.library.register_fake
    fake("petal_C::dma_linear_forward")(
        lambda x, weights, biases, down, ups, scales, gammas: _dma_fake(x, weights, gammas, down.shape[0]))
    fake("petal_C::dma_linear_backward")(_dma_backward_fake)
    fake("petal_C::gated_residual_forward")(
        lambda *args: _gated_forward_fake(*args[:13]))  # the last argument, batch, shapes nothing
    fake("petal_C::gated_residual_backward")(
        lambda *args: _gated_backward_fake(*args[:14], args[15]))  # drop batch (args[14])


# --------------------------------------------------------------------------- eager calls
# One path per call, chosen from the arguments' types and the modes before anything runs (never a retry):
# a plain eager gated_residual on a compiled backend (cpu, cuda) runs the C++ autograd op
# petal_C::gated_residual_autograd (csrc/autograd), the same kernels without the registered op's Python
# round trips (~0.19 ms less per forward+backward at a few rows, docs/notes/GATED_CPU.md), and validates its
# arguments itself with the documented errors; every other call is checked in Python and runs the registered
# op above, which is also what torch.compile, functorch transforms, tensor subclasses and modes see.

_PLAIN = (Tensor, torch.nn.Parameter)
_NUMBERS = (float, int)


def dma_linear(x, weight, bias, down, up, scale, gamma):
    return dma_linear_op(x, weight, bias, down, up, scale, gamma)[0]


def dma_linear_multi(x, weights, biases, down, ups, scales, gammas):
    if any(g is None for g in gammas) and not all(g is None for g in gammas):
        # a Tensor?[] holding a None gets no gradients through torch.library: use ones instead
        gammas = [x.new_ones(w.shape[0]) if g is None else g for g, w in zip(gammas, weights)]
    return tuple(dma_linear_multi_op(x, weights, biases, down, ups, scales, gammas)[0])


def gated_residual(x, h, u, granularity, adapter_scale, gate_scale, gate_logits, gate_weight, gate_bias,
                   gate_vector, dropout_mask, dropout_p, dropout_seed):
    """The checked arguments of ``petal::gated_residual``; returns ``out``."""
    return gated_residual_op(x, h, u, granularity, adapter_scale, gate_scale, gate_logits, gate_weight,
                             gate_bias, gate_vector, dropout_mask, dropout_p, dropout_seed)[0]


def cpp_gated_residual_serves(x, h, u, granularity, adapter_scale, gate_scale, gate_logits, gate_weight,
                              gate_bias, gate_vector, dropout_mask, dropout_p, dropout_seed) -> bool:
    """Whether the public call runs petal_C::gated_residual_autograd: plain eager mode (no tracing,
    transform or mode), arguments of the types its schema holds (plain tensors, Python numbers, an int64
    seed), at least one row, and a compiled backend for x's device."""
    if type(granularity) is not str:
        return False
    for t in (x, h, u):
        if type(t) not in _PLAIN:
            return False
    for t in (gate_logits, gate_weight, gate_bias, gate_vector, dropout_mask):
        if t is not None and type(t) not in _PLAIN:
            return False
    for number in (adapter_scale, gate_scale, dropout_p):
        if type(number) not in _NUMBERS:
            return False
    if dropout_seed is not None and not (type(dropout_seed) is int and -2 ** 63 <= dropout_seed < 2 ** 63):
        return False  # seed tensors and 64-bit unsigned seeds: converted by the checked path
    if torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active():
        return False
    if torch._C._is_torch_function_mode_enabled() or torch._C._len_torch_dispatch_stack() > 0:
        return False
    return x.numel() > 0 and _backend.compiled_runs(x) and _cpp_autograd_registered()


@functools.cache
def _cpp_autograd_registered() -> bool:
    return hasattr(torch.ops.petal_C, "gated_residual_autograd")
