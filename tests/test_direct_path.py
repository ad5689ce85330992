"""The direct eager path of the public ops (an autograd.Function over the same forward/backward
functions) against the registered ``torch.library`` ops, and when each one is taken."""

from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode

import petal_kernels as pk
from petal_kernels import _ops
from tests.helpers import CPU_BACKENDS
from tests.test_dma_linear import _multi, _multi_inputs
from tests.test_dma_linear import make_inputs as dma_inputs
from tests.test_gated_residual import make_inputs as gated_inputs
from tests.test_op_errors import GATE_BAD, gate_args

needs_cpu = pytest.mark.skipif("cpu" not in CPU_BACKENDS, reason="needs the compiled extension")


def _run(fn, inputs):
    """(outputs, grads) of ``fn(**inputs)`` on float32 copies of the inputs, with fixed seeds."""
    leaves = {k: v.detach().float().requires_grad_(v.requires_grad) if isinstance(v, torch.Tensor)
              else v for k, v in inputs.items()}
    names = [k for k, v in leaves.items() if isinstance(v, torch.Tensor) and v.requires_grad]
    torch.manual_seed(7)  # in-kernel dropout draws its seed from the generator
    out = fn(**leaves)
    outs = out if isinstance(out, tuple) else (out,)
    gen = torch.Generator().manual_seed(3)
    grads = torch.autograd.grad(outs, [leaves[n] for n in names],
                                [torch.randn(o.shape, generator=gen) for o in outs], allow_unused=True)
    return outs, dict(zip(names, grads))


def _run_both(fn, inputs, monkeypatch):
    """(outputs, grads) of ``fn(**inputs)`` on the direct path and on the registered op."""
    results = []
    for direct in (True, False):
        monkeypatch.setattr(_ops, "DIRECT", direct)
        results.append(_run(fn, inputs))
    return results


def _assert_same(direct, op):
    (outs_d, grads_d), (outs_o, grads_o) = direct, op
    for a, b in zip(outs_d, outs_o, strict=True):
        assert torch.equal(a, b)
    assert grads_d.keys() == grads_o.keys()
    for name in grads_d:
        a, b = grads_d[name], grads_o[name]
        assert (a is None) == (b is None), name
        if a is not None:
            assert torch.equal(a, b), name


@pytest.mark.parametrize("backend_name", CPU_BACKENDS)
@pytest.mark.parametrize("case", [("3d-per-row", (3, 5), "row", False, True),
                                  ("gamma-static", (7,), "vector", True, False)])
def test_dma_linear_direct_equals_the_registered_op(backend_name, case, monkeypatch):
    _, lead, kind, gamma, bias = case
    inputs = dma_inputs(lead, 12, 10, 4, kind, gamma, bias, False)
    with pk.use_backend(backend_name):
        _assert_same(*_run_both(pk.dma_linear, inputs, monkeypatch))


@pytest.mark.parametrize("backend_name", CPU_BACKENDS)
def test_dma_linear_multi_direct_equals_the_registered_op(backend_name, monkeypatch):
    inputs = _multi_inputs((4, 3), 14, 5, (8, 8, 6), ("vector", "row", "vector"), (True, True, True))
    with pk.use_backend(backend_name):
        _assert_same(*_run_both(_multi(pk.dma_linear_multi), inputs, monkeypatch))


@pytest.mark.parametrize("backend_name", CPU_BACKENDS)
@pytest.mark.parametrize("granularity", pk.GRANULARITIES)
@pytest.mark.parametrize("dropout", ["mask", "in-kernel"])
def test_gated_residual_direct_equals_the_registered_op(backend_name, granularity, dropout, monkeypatch):
    inputs = gated_inputs(granularity, (2, 5, 12), mask=dropout == "mask")
    if dropout == "in-kernel":
        inputs["dropout_p"] = 0.3
    with pk.use_backend(backend_name):
        _assert_same(*_run_both(pk.gated_residual, inputs, monkeypatch))


def test_eager_calls_take_the_direct_path():
    i = dma_inputs((4,), 6, 5, 2, "vector", False, True, False)
    y = pk.dma_linear(i["x"], i["weight"], i["bias"], i["down"], i["up"], i["scale"], i["gamma"])
    assert type(y.grad_fn).__name__ == "_DMALinearDirectBackward"
    g = gated_inputs("middleY", (2, 3, 4), mask=False)
    with pk.use_backend("reference"):
        out = pk.gated_residual(**g)
    assert type(out.grad_fn).__name__ == "_GatedResidualDirectBackward"


@needs_cpu
def test_eager_gated_residual_on_the_compiled_kernels_takes_the_cpp_autograd_op():
    g = gated_inputs("middleY", (2, 3, 4), mask=False)
    out = pk.gated_residual(**g)
    assert out.grad_fn.name() == "torch::autograd::CppNode<petal_C::GatedResidualAutograd>"
    empty = gated_inputs("middleY", (0, 3, 4), mask=False)  # zero rows: the Python path's early exit
    assert pk.gated_residual(**empty).shape == (0, 3, 4)


@needs_cpu
@pytest.mark.parametrize("granularity", pk.GRANULARITIES)
@pytest.mark.parametrize("trainable", [("x",), ("h", "u"), ("gates",), ("u", "gates")])
def test_cpp_autograd_op_gives_exactly_the_requested_gradients(granularity, trainable, monkeypatch):
    """Any subset of the operands may require grad; the C++ op returns the same gradients as the
    registered op for those and none for the others."""
    inputs = gated_inputs(granularity, (2, 5, 12), mask=True, scales=(1.0, 0.4))
    gates = ("gate_logits", "gate_weight", "gate_bias", "gate_vector")
    for name, value in inputs.items():
        if isinstance(value, torch.Tensor):
            wanted = name in trainable or (name in gates and "gates" in trainable)
            value.requires_grad_(wanted and name != "dropout_mask")
    direct, op = _run_both(pk.gated_residual, inputs, monkeypatch)
    _assert_same(direct, op)
    assert set(direct[1]) == {n for n, v in inputs.items() if isinstance(v, torch.Tensor) and v.requires_grad}


@needs_cpu
def test_cpp_autograd_op_refuses_double_backward():
    i = gated_inputs("middleX", (2, 3, 4), mask=False)
    out = pk.gated_residual(**i)
    assert "GatedResidualAutograd" in out.grad_fn.name()
    with pytest.raises(RuntimeError, match="create_graph"):
        torch.autograd.grad(out.sum(), i["x"], create_graph=True)


class _Recording(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


def test_modes_subclasses_and_transforms_take_the_registered_op():
    x = torch.randn(3, 4)
    assert _ops._direct(x, None, torch.nn.Parameter(torch.randn(2)))
    with _Recording():
        assert not _ops._direct(x)
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        fake = mode.from_tensor(x)
        assert not _ops._direct(fake)
    seen = []
    torch.func.vmap(lambda row: seen.append(_ops._direct(row)) or row)(x)
    assert seen == [False]


def test_inference_mode_and_no_grad_use_the_direct_path_without_a_graph():
    i = dma_inputs((4,), 6, 5, 2, "vector", True, True, False)
    args = (i["x"], i["weight"], i["bias"], i["down"], i["up"], i["scale"], i["gamma"])
    want = pk.dma_linear(*args).detach()
    with torch.inference_mode():
        got = pk.dma_linear(*args)
    assert got.grad_fn is None and torch.equal(got, want)
    with torch.no_grad():
        assert pk.dma_linear(*args).grad_fn is None


@pytest.mark.parametrize("backend_name", CPU_BACKENDS)
def test_dma_linear_multi_mixed_gammas_on_both_paths(backend_name, monkeypatch):
    """Only the registered op needs ones in place of a missing gamma (a Tensor?[] holding a None gets
    no gradients through torch.library); the direct path keeps the None and may fold that projection's
    update into its weight, so the two agree to float32 rounding, not bit for bit."""
    inputs = _multi_inputs((4, 6), 20, 6, (12, 12, 9), ("vector", "vector", "row"), (True, False, True))
    with pk.use_backend(backend_name):
        (outs_d, grads_d), (outs_o, grads_o) = _run_both(_multi(pk.dma_linear_multi), inputs, monkeypatch)
    for a, b in zip(outs_d, outs_o, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert grads_d.keys() == grads_o.keys()
    assert grads_d["gamma0"] is not None and grads_d["gamma2"] is not None
    for name in grads_d:
        torch.testing.assert_close(grads_d[name], grads_o[name], rtol=1e-4, atol=1e-4, msg=name)


@needs_cpu
@pytest.mark.parametrize("reentrant", [False, True])
def test_cpp_autograd_op_under_chained_activation_checkpoints(reentrant):
    """Unpacking a saved input inside the C++ backward recomputes the checkpointed region before it;
    that recomputation must record autograd (it once ran with the autograd keys excluded and saved
    nothing but the op's own inputs: torch.utils.checkpoint then failed on the count)."""
    from torch.utils.checkpoint import checkpoint

    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, requires_grad=True)
    frozen, gate = torch.nn.Linear(8, 8).requires_grad_(False), torch.nn.Linear(8, 8)

    def block(y):
        h = frozen(y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True)))
        return pk.gated_residual(y, h, gate(h), "large", 1.0, 0.5, gate_logits=gate(y), dropout_p=0.2)

    grads = []
    for checkpointed in (False, True):
        torch.manual_seed(1)
        y = x
        for _ in range(2):
            y = checkpoint(block, y, use_reentrant=reentrant) if checkpointed else block(y)
        assert checkpointed and reentrant or "GatedResidualAutograd" in y.grad_fn.name()
        x.grad = gate.weight.grad = gate.bias.grad = None
        y.square().sum().backward()  # reentrant checkpoints refuse torch.autograd.grad
        grads.append((x.grad, gate.weight.grad, gate.bias.grad))
    for a, b in zip(*grads, strict=True):  # the same dropout; the gate grads' two blocks add in either order
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# Calls the C++ op's own checks must refuse: each passes the kernels' size checks after a reshape.
_RESHAPEABLE_BAD = [
    ("h transposed leading dims", "middleX", {"h": torch.randn(3, 2, 4)}),
    ("gate_vector as a row", "middleY", {"gate_vector": torch.randn(1, 4)}),
    ("gate_logits transposed", "large", {"gate_logits": torch.randn(3, 2, 4)}),
    ("mask transposed", "middleX", {"dropout_mask": torch.ones(3, 2, 4)}),
    ("gate on another device", "middleY", {"gate_vector": torch.randn(4, device="meta")}),
]


@needs_cpu
@pytest.mark.parametrize("label,args,exc,match", GATE_BAD, ids=[c[0] for c in GATE_BAD])
def test_cpp_op_refuses_every_call_the_checks_refuse(label, args, exc, match):
    """The public call runs petal_C::gated_residual_autograd without the Python checks, which run only
    when it refuses: it must refuse at least what they do (the scale's Python type is checked before)."""
    if label in ("scale type", "bool scale"):
        pytest.skip("the scales' Python types are checked before the op is called")
    with pytest.raises((RuntimeError, TypeError, ValueError)):
        torch.ops.petal_C.gated_residual_autograd(**_op_args(args))


@needs_cpu
@pytest.mark.parametrize("label,granularity,over", _RESHAPEABLE_BAD, ids=[c[0] for c in _RESHAPEABLE_BAD])
def test_reshapeable_bad_shapes_get_the_documented_error(label, granularity, over):
    args = {**gate_args(granularity), **over}
    with pytest.raises((RuntimeError, ValueError)):
        torch.ops.petal_C.gated_residual_autograd(**_op_args(args))
    with pytest.raises(ValueError, match=next(iter(over))):
        pk.gated_residual(**args)


def _op_args(args: dict) -> dict:
    gates = ("gate_logits", "gate_weight", "gate_bias", "gate_vector", "dropout_mask")
    return {"adapter_scale": 1.0, "gate_scale": 1.0, "dropout_p": 0.0, "dropout_seed": None,
            **{g: None for g in gates}, **args}


@needs_cpu
@pytest.mark.parametrize("seed", [None, 12345, -7, 2 ** 63 - 1])
def test_public_call_skips_the_python_checks_and_equals_the_checked_path(seed, monkeypatch):
    inputs = gated_inputs("small", (2, 5, 12), mask=False)
    inputs["dropout_p"], inputs["dropout_seed"] = 0.25, seed
    checked = _run_both(pk.gated_residual, inputs, monkeypatch)[1]  # DIRECT off: checks + registered op
    monkeypatch.setattr(_ops, "DIRECT", True)

    def refuse(*args, **kwargs):
        raise AssertionError("the Python checks ran for a valid call")

    monkeypatch.setattr(pk._checks, "gated_residual", refuse)
    monkeypatch.setattr(pk, "autocast_args", refuse)
    fast = _run(pk.gated_residual, inputs)  # the C++ op draws its seed as philox.draw_seed does
    assert "GatedResidualAutograd" in fast[0][0].grad_fn.name()
    _assert_same(fast, checked)


@needs_cpu
def test_a_refused_call_with_dropout_leaves_the_generator_untouched():
    args = {**gate_args("middleX"), "h": torch.randn(3, 2, 4), "dropout_p": 0.3}
    state = torch.get_rng_state()
    with pytest.raises(ValueError, match="h must have shape"):
        pk.gated_residual(**args)
    assert torch.equal(torch.get_rng_state(), state)


@needs_cpu
@pytest.mark.parametrize("granularity", pk.GRANULARITIES)
def test_cpp_op_autocasts_as_the_python_path(granularity, monkeypatch):
    """Under torch.autocast the C++ op casts the floating operands as petal_kernels._autocast does."""
    inputs = gated_inputs(granularity, (2, 3, 8), mask=False)
    outs = []
    for direct in (True, False):
        monkeypatch.setattr(_ops, "DIRECT", direct)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = pk.gated_residual(**inputs)
        assert out.dtype == torch.bfloat16
        assert direct == ("GatedResidualAutograd" in out.grad_fn.name())
        grads = torch.autograd.grad(out.float().sum(), inputs["x"])
        outs.append((out, grads[0]))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
