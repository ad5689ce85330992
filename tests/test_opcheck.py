"""``torch.library.opcheck`` of every op over lists of samples, in the style of pytorch/extension-cpp's tests:
the ``petal::*`` ops (public ops and their backward ops) on each backend that runs here (reference, cpu,
triton under TRITON_INTERPRET=1), with and without inputs that require grad, and the compiled ``petal_C::*``
ops (the kernels, and the C++ autograd op that eager ``gated_residual`` calls run).

opcheck checks the schema (no mutation or aliasing it does not declare), the autograd registration, the
fake (meta) impl against the real one, and an AOTAutograd trace with dynamic shapes against eager.
"""

from __future__ import annotations

import pytest
import torch

import petal_kernels as pk
from tests.helpers import CPU_BACKENDS

needs_cpu = pytest.mark.skipif("cpu" not in CPU_BACKENDS, reason="needs the compiled extension")
DTYPE = torch.float32  # every backend runs it (the Triton kernels have no float64)


def _make(*shape, grad=False, gen):
    return torch.randn(*shape, generator=gen, dtype=DTYPE).requires_grad_(grad)


def _gates(granularity, lead, d, grad, gen):
    if granularity == "large":
        return {"gate_logits": _make(*lead, d, grad=grad, gen=gen)}
    if granularity == "middleY":
        return {"gate_vector": _make(d, grad=grad, gen=gen)}
    width = d if granularity == "middleX" else 2 * d
    return {"gate_weight": _make(width, grad=grad, gen=gen), "gate_bias": _make(1, grad=grad, gen=gen)}


def sample_inputs_gated_residual(grad: bool) -> list[tuple]:
    """Arguments of petal::gated_residual: every granularity, a caller's mask or in-kernel dropout
    (seed tensor), adapter_scale 1 (dL/du is dL/dh) and not, 3-D and 2-D x, odd widths."""
    gen = torch.Generator().manual_seed(0)
    samples = []
    for i, granularity in enumerate(pk.GRANULARITIES):
        lead = (2, 3) if granularity == "small" or i % 2 else (5,)
        d = 7 + 2 * i
        x, h, u = (_make(*lead, d, grad=grad, gen=gen) for _ in range(3))
        g = _gates(granularity, lead, d, grad, gen)
        mask = (torch.rand(*lead, d, generator=gen) > 0.3).to(DTYPE) / 0.7 if i % 2 else None
        p, seed = (0.0, None) if i % 2 else (0.25, torch.tensor(1000 + i))
        samples.append((x, h, u, granularity, 1.0 if i < 2 else 0.6, 0.3, g.get("gate_logits"),
                        g.get("gate_weight"), g.get("gate_bias"), g.get("gate_vector"), mask, p, seed))
    return samples


def sample_inputs_gated_residual_backward() -> list[tuple]:
    """Arguments of petal::gated_residual_backward: dout, the forward's inputs and its saved stat."""
    samples = []
    for x, h, u, granularity, a, g, *rest in sample_inputs_gated_residual(grad=False):
        _, stat = torch.ops.petal.gated_residual(x, h, u, granularity, a, g, *rest)
        samples.append((torch.randn_like(x), x, h, u, granularity, a, g, *rest, stat))
    return samples


def sample_inputs_dma_linear(grad: bool) -> list[tuple]:
    """Arguments of petal::dma_linear: 3-D x with a per-row scale, gamma and bias; one row with a static
    scale and neither; a (…, 1) scale broadcast over R."""
    gen = torch.Generator().manual_seed(1)

    def case(lead, K, N, R, scale_shape, gamma, bias):
        return (_make(*lead, K, grad=grad, gen=gen), _make(N, K, gen=gen),
                _make(N, gen=gen) if bias else None, _make(R, K, grad=grad, gen=gen),
                _make(N, R, grad=grad, gen=gen),
                _make(*scale_shape, grad=grad, gen=gen), _make(N, grad=grad, gen=gen) if gamma else None)

    return [case((3, 4), 10, 9, 3, (3, 4, 3), True, True), case((1,), 12, 5, 4, (4,), False, False),
            case((6,), 8, 7, 2, (6, 1), True, False)]


def sample_inputs_dma_linear_multi(grad: bool) -> list[tuple]:
    """Arguments of petal::dma_linear_multi: J=2 with static and per-row scales and with gammas; J=3
    (q, k, v) without gammas."""
    gen = torch.Generator().manual_seed(2)
    samples = []
    for lead, K, R, Ns, gamma in (((6,), 9, 4, (5, 7), True), ((2, 3), 8, 3, (6, 6, 6), False)):
        rows = lead
        scales = [_make(R, grad=grad, gen=gen) if j % 2 == 0 else _make(*rows, R, grad=grad, gen=gen)
                  for j in range(len(Ns))]
        samples.append((_make(*lead, K, grad=grad, gen=gen), [_make(N, K, gen=gen) for N in Ns],
                        [_make(N, gen=gen) for N in Ns], _make(R, K, grad=grad, gen=gen),
                        [_make(N, R, grad=grad, gen=gen) for N in Ns], scales,
                        [_make(N, grad=grad, gen=gen) if gamma else None for N in Ns]))
    return samples


def sample_inputs_dma_linear_backward() -> list[tuple]:
    """Arguments of petal::dma_linear_backward: the forward's outputs, and each subset of the gradients
    (needs) that the autograd formula asks for."""
    samples = []
    needs_cases = ([True] * 5, [True, False, True, False, True], [False, True, False, True, False])
    for (x, weights, biases, down, ups, scales, gammas), needs in zip(
            sample_inputs_dma_linear_multi(grad=False), needs_cases):
        ys, t, bases = torch.ops.petal.dma_linear_multi(x, weights, biases, down, ups, scales, gammas)
        samples.append(([torch.randn_like(y) for y in ys], x, weights, down, ups, scales, gammas, t, bases,
                        needs))
    return samples


def _petal_cases():
    for grad in (False, True):
        tag = "grad" if grad else "no_grad"
        yield from ((f"gated_residual-{tag}-{i}", "gated_residual", s)
                    for i, s in enumerate(sample_inputs_gated_residual(grad)))
        yield from ((f"dma_linear-{tag}-{i}", "dma_linear", s)
                    for i, s in enumerate(sample_inputs_dma_linear(grad)))
        yield from ((f"dma_linear_multi-{tag}-{i}", "dma_linear_multi", s)
                    for i, s in enumerate(sample_inputs_dma_linear_multi(grad)))
    yield from ((f"gated_residual_backward-{i}", "gated_residual_backward", s)
                for i, s in enumerate(sample_inputs_gated_residual_backward()))
    yield from ((f"dma_linear_backward-{i}", "dma_linear_backward", s)
                for i, s in enumerate(sample_inputs_dma_linear_backward()))


PETAL_CASES = list(_petal_cases())


@pytest.mark.parametrize("backend_name", CPU_BACKENDS)
@pytest.mark.parametrize("label,op,args", PETAL_CASES, ids=[c[0] for c in PETAL_CASES])
def test_petal_op(backend_name, label, op, args):
    with pk.use_backend(backend_name):
        torch.library.opcheck(getattr(torch.ops.petal, op).default, args)


def _canonical_gated(sample):
    """A petal::gated_residual sample as the petal_C kernels take it: 2-D rows, flat gate parameters,
    an int seed and the batch of 'small'."""
    x, h, u, granularity, a, g, logits, weight, bias, vector, mask, p, seed = sample
    rows, d = x.numel() // x.shape[-1], x.shape[-1]

    def flat(t):
        return None if t is None else t.detach().reshape(rows, d).contiguous()

    def vec(t):
        return None if t is None else t.detach().reshape(-1).contiguous()

    return (flat(x), flat(h), flat(u), granularity, a, g, flat(logits), vec(weight), vec(bias), vec(vector),
            flat(mask), p, 0 if seed is None else int(seed), x.shape[0] if granularity == "small" else 0)


def _compiled_cases():
    for i, sample in enumerate(sample_inputs_gated_residual(grad=False)):
        canon = _canonical_gated(sample)
        yield f"gated_residual_forward-{i}", "gated_residual_forward", canon, None
        _, stat = torch.ops.petal_C.gated_residual_forward(*canon)
        yield f"gated_residual_backward-{i}", "gated_residual_backward", (torch.randn_like(canon[0]), *canon,
                                                                           stat), None
    for grad in (False, True):
        for i, (x, h, u, granularity, *rest, p, seed) in enumerate(sample_inputs_gated_residual(grad)):
            args = (x, h, u, granularity, *rest, p, None if seed is None else int(seed))
            # eager only (torch.compile takes petal::gated_residual): no dynamic-shape trace
            label = f"gated_residual_autograd-{'grad' if grad else 'no_grad'}-{i}"
            yield label, "gated_residual_autograd", args, ("test_schema", "test_autograd_registration",
                                                           "test_faketensor")
    for i, sample in enumerate(sample_inputs_dma_linear_multi(grad=False)):
        x, weights, biases, down, ups, scales, gammas = sample
        rows = x.numel() // x.shape[-1]
        canon = (x.reshape(rows, -1).contiguous(), weights, biases, down, ups,
                 [s if s.dim() == 1 else s.reshape(rows, -1).contiguous() for s in scales], gammas)
        yield f"dma_linear_forward-{i}", "dma_linear_forward", canon, None
        ys, t, bases = torch.ops.petal_C.dma_linear_forward(*canon)
        needs = [True, i == 0, True, True, True]
        yield (f"dma_linear_backward-{i}", "dma_linear_backward",
               ([torch.randn_like(y) for y in ys], canon[0], weights, down, ups, canon[5], gammas, t,
                [None if g is None else b for g, b in zip(gammas, bases)], needs), None)


COMPILED_CASES = list(_compiled_cases()) if "cpu" in CPU_BACKENDS else []


@needs_cpu
@pytest.mark.parametrize("label,op,args,utils", COMPILED_CASES, ids=[c[0] for c in COMPILED_CASES])
def test_compiled_op(label, op, args, utils):
    kwargs = {} if utils is None else {"test_utils": utils}
    torch.library.opcheck(getattr(torch.ops.petal_C, op).default, args, **kwargs)
