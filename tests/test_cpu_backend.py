"""The compiled ``cpu`` backend (petal_kernels._C): properties the cross-backend suite does not pin down.

Parity at a moderately large shape, the bf16/fp16 rule of DESIGN §2.3, NaN/inf propagation (no
fast-math), what autograd saves, thread-count independence, ``needs`` skipping, and the raw
``torch.ops.petal_C`` schemas.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

import petal_kernels as pk
from petal_kernels import reference as ref
from tests.helpers import rel_err

pytestmark = pytest.mark.skipif("cpu" not in pk.available_backends("cpu"),
                                reason="petal_kernels._C is not built")

GATE_KWARGS = {
    "large": lambda rand, shape: {"gate_logits": rand(*shape)},
    "middleX": lambda rand, s: {"gate_weight": rand(s[-1]) / s[-1] ** 0.5, "gate_bias": rand(1)},
    "middleY": lambda rand, s: {"gate_vector": rand(s[-1])},
    "small": lambda rand, s: {"gate_weight": rand(2 * s[-1]) / s[-1] ** 0.5, "gate_bias": rand(1)},
}


@contextlib.contextmanager
def num_threads(n):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _gen(seed):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    return rand


def dma_inputs(M, K, N, R, J=3, gamma=False, row_scale=False, seed=0):
    rand = _gen(seed)
    return {
        "x": rand(M, K),
        "weights": [rand(N, K) / K ** 0.5 for _ in range(J)],
        "biases": [rand(N) for _ in range(J)],
        "down": rand(R, K) / K ** 0.5,
        "ups": [rand(N, R) / R ** 0.5 for _ in range(J)],
        "scales": [rand(M, R) if (row_scale and j == 1) else rand(R) for j in range(J)],
        "gammas": [1 + 0.1 * rand(N) for _ in range(J)] if gamma else None,
    }


def gate_inputs(granularity, shape, mask=True, seed=0):
    rand = _gen(seed)
    inputs = {"x": rand(*shape), "h": rand(*shape), "u": rand(*shape),
              **GATE_KWARGS[granularity](rand, shape)}
    if mask:
        keep = torch.rand(shape, generator=torch.Generator().manual_seed(seed)) > 0.2
        inputs["dropout_mask"] = keep.double() / 0.8
    return inputs


def _leaves(inputs, dtype, frozen=("weights", "biases", "dropout_mask")):
    """Cast to ``dtype``; every tensor not in ``frozen`` becomes a leaf that requires grad."""
    out = {}
    for k, v in inputs.items():
        if isinstance(v, list):
            out[k] = [t.to(dtype).requires_grad_(k not in frozen) for t in v]
        elif isinstance(v, torch.Tensor):
            out[k] = v.to(dtype).requires_grad_(k not in frozen)
        else:
            out[k] = v
    return out


def _grad_leaves(inputs):
    leaves = []
    for v in inputs.values():
        for t in (v if isinstance(v, list) else [v]):
            if isinstance(t, torch.Tensor) and t.requires_grad:
                leaves.append(t)
    return leaves


def run_dma(backend, inputs, dtype, seed=1):
    leaves = _leaves(inputs, dtype)
    with pk.use_backend(backend):
        ys = pk.dma_linear_multi(**leaves)
    g = torch.Generator().manual_seed(seed)
    cot = [torch.randn(y.shape, generator=g, dtype=torch.float64).to(dtype) for y in ys]
    with pk.use_backend(backend):
        grads = torch.autograd.grad(ys, _grad_leaves(leaves), cot)
    return list(ys) + list(grads)


def run_gate(backend, granularity, inputs, dtype, seed=1, scales=(0.7, 0.3)):
    leaves = _leaves(inputs, dtype)
    with pk.use_backend(backend):
        out = pk.gated_residual(granularity=granularity, adapter_scale=scales[0], gate_scale=scales[1],
                                **leaves)
    cot = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)
    with pk.use_backend(backend):
        grads = torch.autograd.grad(out, _grad_leaves(leaves), cot)
    return [out, *grads]


def _round_trip(inputs, dtype):
    """The inputs rounded to ``dtype`` and back: the float64 truth for a ``dtype`` run."""
    def cast(v):
        if isinstance(v, list):
            return [t.to(dtype).double() for t in v]
        return v.to(dtype).double() if isinstance(v, torch.Tensor) else v
    return {k: cast(v) for k, v in inputs.items()}


# --------------------------------------------------------------------------- parity, moderately large


DMA_VARIANTS = {  # name: (M, K, N, R, gamma and a per-row scale)
    "plain": (257, 768, 771, 64, False),
    "gamma+row-scale": (257, 768, 771, 64, True),
    "folded-update": (800, 256, 300, 64, False),  # K <= M: the update is folded into W + ΔW
}


@pytest.mark.parametrize("dtype,bound", [(torch.float64, 1e-12), (torch.float32, 1e-5)], ids=["f64", "f32"])
@pytest.mark.parametrize("variant", list(DMA_VARIANTS))
def test_dma_linear_multi_large_shape_matches_reference(dtype, bound, variant):
    M, K, N, R, extras = DMA_VARIANTS[variant]
    inputs = dma_inputs(M, K, N, R, gamma=extras, row_scale=extras)
    truth = run_dma("reference", _round_trip(inputs, dtype), torch.float64)
    got = run_dma("cpu", inputs, dtype)
    assert len(got) == len(truth)
    for i, (o, r) in enumerate(zip(got, truth)):
        err = rel_err(o, r)
        assert err <= bound, f"output/grad #{i}: relative error {err:.3g} > {bound:.1g}"


@pytest.mark.parametrize("dtype,bound", [(torch.float64, 1e-12), (torch.float32, 1e-5)], ids=["f64", "f32"])
@pytest.mark.parametrize("granularity", pk.GRANULARITIES)
def test_gated_residual_large_shape_matches_reference(dtype, bound, granularity):
    inputs = gate_inputs(granularity, (4, 65, 771))
    truth = run_gate("reference", granularity, _round_trip(inputs, dtype), torch.float64)
    got = run_gate("cpu", granularity, inputs, dtype)
    for i, (o, r) in enumerate(zip(got, truth)):
        err = rel_err(o, r)
        assert err <= bound, f"output/grad #{i}: relative error {err:.3g} > {bound:.1g}"


# --------------------------------------------------------------------------- reduced precision rule


def _within_twice_reference(got, base, truth, dtype):
    floor = torch.finfo(dtype).eps
    for i, (o, b, r) in enumerate(zip(got, base, truth)):
        bound = max(2 * rel_err(b, r), floor)
        err = rel_err(o, r)
        assert err <= bound, f"output/grad #{i}: {dtype} error {err:.3g} > 2x reference's ({bound:.3g})"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_dma_reduced_precision_within_twice_reference(dtype):
    inputs = dma_inputs(130, 200, 190, 24, gamma=True, row_scale=True)
    truth = run_dma("reference", _round_trip(inputs, dtype), torch.float64)
    _within_twice_reference(run_dma("cpu", inputs, dtype), run_dma("reference", inputs, dtype), truth, dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("granularity", pk.GRANULARITIES)
def test_gated_residual_reduced_precision_within_twice_reference(dtype, granularity):
    inputs = gate_inputs(granularity, (3, 40, 200))
    truth = run_gate("reference", granularity, _round_trip(inputs, dtype), torch.float64)
    base = run_gate("reference", granularity, inputs, dtype)
    _within_twice_reference(run_gate("cpu", granularity, inputs, dtype), base, truth, dtype)


# --------------------------------------------------------------------------- NaN / inf (no fast-math)


@pytest.mark.parametrize("granularity", pk.GRANULARITIES)
def test_nan_in_x_propagates_through_gated_residual(granularity):
    inputs = gate_inputs(granularity, (2, 8, 37), mask=False)
    inputs["x"][1, 3, 5] = float("nan")
    out, *grads = run_gate("cpu", granularity, inputs, torch.float32)
    assert torch.isnan(out[1, 3, 5])
    nan_rows = torch.isnan(out).any(-1)
    expected_rows = {"large": 1, "middleY": 1, "middleX": 1, "small": 8}[granularity]
    assert nan_rows.sum().item() == expected_rows, "NaN spread to rows it does not touch, or got lost"
    if granularity in ("middleX", "small"):
        assert torch.isnan(grads[3]).any(), "gate_weight grad lost the NaN"


def test_nan_in_gate_logits_and_infinite_logits():
    inputs = gate_inputs("large", (1, 4, 19), mask=False)
    inputs["gate_logits"][0, 0, 0] = float("nan")
    inputs["gate_logits"][0, 1] = float("inf")
    inputs["gate_logits"][0, 2] = -float("inf")
    out, dx, dh, du, d_logits = run_gate("cpu", "large", inputs, torch.float32, scales=(0.5, 0.25))
    x, h, u = (inputs[k].float() for k in ("x", "h", "u"))
    assert torch.isnan(out[0, 0, 0]) and torch.isnan(out).sum() == 1
    torch.testing.assert_close(out[0, 1], x[0, 1] + 0.25 * (h[0, 1] + 0.5 * u[0, 1]))  # G = 1
    assert torch.equal(out[0, 2], x[0, 2])  # G = 0
    assert torch.isnan(d_logits[0, 0, 0]) and torch.isnan(d_logits).sum() == 1


def test_nan_in_x_propagates_through_dma_linear():
    inputs = dma_inputs(9, 33, 17, 5, gamma=True)
    inputs["x"][4, 7] = float("nan")
    ys = run_dma("cpu", inputs, torch.float32)[:3]
    for y in ys:
        assert torch.isnan(y[4]).all() and not torch.isnan(y[torch.arange(9) != 4]).any()


# --------------------------------------------------------------------------- saved tensors


def _saved_non_inputs(fn, inputs):
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        fn()
    ids = {t.untyped_storage().data_ptr() for t in _all_tensors(inputs)}
    return [t for t in saved if t.numel() and t.untyped_storage().data_ptr() not in ids]


def _all_tensors(inputs):
    for v in inputs.values():
        for t in (v if isinstance(v, list) else [v]):
            if isinstance(t, torch.Tensor):
                yield t


@pytest.mark.parametrize("gamma", [False, True])
def test_dma_saves_only_r_wide_tensors_beyond_its_inputs(gamma):
    M, K, N, R = 40, 24, 20, 6
    leaves = _leaves(dma_inputs(M, K, N, R, gamma=gamma), torch.float32)

    def call():
        with pk.use_backend("cpu"):
            pk.dma_linear_multi(**leaves)

    extra = _saved_non_inputs(call, leaves)
    wide = [tuple(t.shape) for t in extra if t.numel() > M * R]
    assert wide == ([(M, N)] * 3 if gamma else []), f"unexpected (M, N)-sized saved tensors {wide}"
    assert [tuple(t.shape) for t in extra if t.numel() <= M * R] == [(M, R)]  # t, once for the 3 projections


@pytest.mark.parametrize("granularity", pk.GRANULARITIES)
def test_gated_residual_saves_no_row_tensor_beyond_its_inputs(granularity):
    leaves = _leaves(gate_inputs(granularity, (2, 8, 16)), torch.float32)

    def call():
        with pk.use_backend("cpu"):
            pk.gated_residual(granularity=granularity, **leaves)

    extra = _saved_non_inputs(call, leaves)
    assert [tuple(t.shape) for t in extra] == ([(16,)] if granularity in ("middleX", "small") else [])


# --------------------------------------------------------------------------- thread-count independence


@pytest.mark.parametrize("granularity", pk.GRANULARITIES)
def test_gated_residual_same_bits_for_one_and_two_threads(granularity):
    inputs = gate_inputs(granularity, (4, 50, 97))
    with num_threads(1):
        one = run_gate("cpu", granularity, inputs, torch.float32)
    with num_threads(2):
        two = run_gate("cpu", granularity, inputs, torch.float32)
    for i, (a, b) in enumerate(zip(one, two)):
        assert torch.equal(a, b), f"output/grad #{i} differs between 1 and 2 threads"


def test_dma_same_result_for_one_and_two_threads():
    inputs = dma_inputs(300, 96, 80, 16, gamma=True, row_scale=True)
    with num_threads(1):
        one = run_dma("cpu", inputs, torch.float32)
    with num_threads(2):
        two = run_dma("cpu", inputs, torch.float32)
    for i, (a, b) in enumerate(zip(one, two)):
        assert rel_err(a, b) <= 1e-6, f"output/grad #{i} depends on the thread count"


# --------------------------------------------------------------------------- the raw operators


def _canonical_dma(M=12, K=10, N=9, R=4, J=2, gamma=True, row_scale=True):
    raw = dma_inputs(M, K, N, R, J=J, gamma=gamma, row_scale=row_scale)
    inputs = _leaves(raw, torch.float32, frozen=("",))
    for v in inputs.values():
        for t in (v if isinstance(v, list) else [v]):
            if isinstance(t, torch.Tensor):
                t.requires_grad_(False)
    return inputs


def test_backward_needs_skip_unrequested_grads():
    a = _canonical_dma()
    ops = torch.ops.petal_C
    ys, t, bases = ops.dma_linear_forward(a["x"], a["weights"], a["biases"], a["down"], a["ups"], a["scales"],
                                          a["gammas"])
    dys = [torch.randn_like(y) for y in ys]
    args = (dys, a["x"], a["weights"], a["down"], a["ups"], a["scales"], a["gammas"], t, bases)
    dx, d_down, d_ups, d_scales, d_gammas = ops.dma_linear_backward(*args, [False, True, False, False, False])
    assert d_down.shape == a["down"].shape
    assert dx.numel() == 0 and all(g.numel() == 0 for g in [*d_ups, *d_scales, *d_gammas])
    full = ops.dma_linear_backward(*args, [True] * 5)
    torch.testing.assert_close(full[1], d_down, rtol=0, atol=0)
    expected = ref.dma_linear_backward(dys, *args[1:], (True,) * 5)
    for got, want in zip([full[0], full[1], *full[2], *full[3], *full[4]],
                         [expected[0], expected[1], *expected[2], *expected[3], *expected[4]]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("row_scale", [False, True], ids=["static-scales", "static-and-row-scales"])
@pytest.mark.parametrize("need", range(5), ids=["x", "down", "ups", "scales", "gammas"])
def test_backward_one_need_alone_equals_all_needs(need, row_scale):
    """Each gradient comes out the same, bit for bit, whichever other gradients are asked for (the
    static-scale projections take another route through the backward than the per-row ones)."""
    a = _canonical_dma(J=3, row_scale=row_scale)
    ops = torch.ops.petal_C
    ys, t, bases = ops.dma_linear_forward(a["x"], a["weights"], a["biases"], a["down"], a["ups"], a["scales"],
                                          a["gammas"])
    dys = [torch.randn_like(y) for y in ys]
    args = (dys, a["x"], a["weights"], a["down"], a["ups"], a["scales"], a["gammas"], t, bases)
    alone = ops.dma_linear_backward(*args, [i == need for i in range(5)])
    full = ops.dma_linear_backward(*args, [True] * 5)
    expected = ref.dma_linear_backward(dys, *args[1:], (True,) * 5)
    for i, (got, all_needs, want) in enumerate(zip(alone, full, expected)):
        got, all_needs, want = ([v] if i < 2 else v for v in (got, all_needs, want))
        for g, f, w in zip(got, all_needs, want):
            if i != need:
                assert g.numel() == 0
                continue
            torch.testing.assert_close(g, f, rtol=0, atol=0)
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


def test_operator_rejects_bad_shapes_without_crashing():
    x = torch.randn(6, 8)
    with pytest.raises(RuntimeError, match="h must be"):
        torch.ops.petal_C.gated_residual_forward(x, torch.randn(6, 7), x, "large", 1.0, 1.0, x, None, None,
                                                 None, None, 0.0, 0, 0)
    with pytest.raises(ValueError, match="granularity"):
        torch.ops.petal_C.gated_residual_forward(x, x, x, "huge", 1.0, 1.0, None, None, None, None, None,
                                                 0.0, 0, 0)
    with pytest.raises(RuntimeError, match="dropout_p must be in"):
        torch.ops.petal_C.gated_residual_forward(x, x, x, "middleY", 1.0, 1.0, None, None, None, x[0], None,
                                                 1.5, 0, 0)
    a = _canonical_dma(M=6, K=8)
    with pytest.raises(RuntimeError, match="ups"):
        torch.ops.petal_C.dma_linear_forward(x, a["weights"], a["biases"], a["down"],
                                             [u[:, :2] for u in a["ups"]], a["scales"], a["gammas"])


def test_schemas_are_registered_for_cpu():
    names = ("dma_linear_forward", "dma_linear_backward", "gated_residual_forward", "gated_residual_backward")
    for name in names:
        op = getattr(torch.ops.petal_C, name).default
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op.name(), "CPU"), name


@pytest.mark.parametrize("M,K,N,R", [(6, 0, 3, 2), (6, 4, 0, 2), (3, 4, 0, 2), (6, 4, 3, 0)])
def test_dma_empty_feature_dims_match_reference(M, K, N, R):
    inputs = dma_inputs(M, K, N, R, J=2)
    got = run_dma("cpu", inputs, torch.float64)
    want = run_dma("reference", inputs, torch.float64)
    for i, (o, r) in enumerate(zip(got, want)):
        assert o.shape == r.shape, f"output/grad #{i}: shape {tuple(o.shape)} != {tuple(r.shape)}"
        torch.testing.assert_close(o, r, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("granularity", pk.GRANULARITIES)
def test_gated_residual_zero_width_matches_reference(granularity):
    inputs = gate_inputs(granularity, (2, 3, 0))
    for o, r in zip(run_gate("cpu", granularity, inputs, torch.float64),
                    run_gate("reference", granularity, inputs, torch.float64)):
        torch.testing.assert_close(o, r, rtol=1e-12, atol=1e-12)
