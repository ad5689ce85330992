"""The eager path of each public op, chosen before anything runs (never a retry): ``gated_residual`` on the
compiled backends runs the C++ autograd op petal_C::gated_residual_autograd, every other call the registered
``torch.library`` op; both compute the same bits and raise the same documented errors."""

from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode

import petal_kernels as pk
from petal_kernels import _ops
from tests.helpers import CPU_BACKENDS
from tests.test_dma_linear import make_inputs as dma_inputs
from tests.test_gated_residual import make_inputs as gated_inputs
from tests.test_op_errors import GATE_BAD, gate_args

needs_cpu = pytest.mark.skipif("cpu" not in CPU_BACKENDS, reason="needs the compiled extension")
CPP_NODE = "torch::autograd::CppNode<petal_C::GatedResidualAutograd>"


def _run(fn, inputs):
    """(outputs, grads) of ``fn(**inputs)`` on float32 copies of the inputs, with fixed seeds."""
    leaves = {k: v.detach().float().requires_grad_(v.requires_grad) if isinstance(v, torch.Tensor)
              else v for k, v in inputs.items()}
    names = [k for k, v in leaves.items() if isinstance(v, torch.Tensor) and v.requires_grad]
    torch.manual_seed(7)  # in-kernel dropout draws its seed from the generator
    out = fn(**leaves)
    gen = torch.Generator().manual_seed(3)
    grads = torch.autograd.grad(out, [leaves[n] for n in names], torch.randn(out.shape, generator=gen),
                                allow_unused=True)
    return out, dict(zip(names, grads))


def _run_both(inputs, monkeypatch):
    """(outputs, grads) of the public gated_residual on the C++ op and on the registered op."""
    cpp = _run(pk.gated_residual, inputs)
    assert cpp[0].grad_fn.name() == CPP_NODE
    monkeypatch.setattr(_ops, "cpp_gated_residual_serves", lambda *args: False)
    op = _run(pk.gated_residual, inputs)
    assert op[0].grad_fn.name() != CPP_NODE
    return cpp, op


def _assert_same(a, b):
    (out_a, grads_a), (out_b, grads_b) = a, b
    assert torch.equal(out_a, out_b)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        assert (grads_a[name] is None) == (grads_b[name] is None), name
        if grads_a[name] is not None:
            assert torch.equal(grads_a[name], grads_b[name]), name


@needs_cpu
@pytest.mark.parametrize("granularity", pk.GRANULARITIES)
@pytest.mark.parametrize("dropout", ["mask", "in-kernel", "seeded"])
def test_cpp_autograd_op_equals_the_registered_op(granularity, dropout, monkeypatch):
    inputs = gated_inputs(granularity, (2, 5, 12), mask=dropout == "mask")
    if dropout != "mask":
        inputs["dropout_p"] = 0.3
    if dropout == "seeded":
        inputs["dropout_seed"] = -7
    _assert_same(*_run_both(inputs, monkeypatch))


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
    cpp, op = _run_both(inputs, monkeypatch)
    _assert_same(cpp, op)
    assert set(cpp[1]) == {n for n, v in inputs.items() if isinstance(v, torch.Tensor) and v.requires_grad}


def test_dma_ops_and_the_reference_backend_take_the_registered_op():
    i = dma_inputs((4,), 6, 5, 2, "vector", False, True, False)
    y = pk.dma_linear(i["x"], i["weight"], i["bias"], i["down"], i["up"], i["scale"], i["gamma"])
    assert y.grad_fn.name() == "GeneratedBackwardFor_petal_dma_linear_defaultBackward"
    g = gated_inputs("middleY", (2, 3, 4), mask=False)
    with pk.use_backend("reference"):
        assert not _ops.cpp_gated_residual_serves(*_public_args(g))
        out = pk.gated_residual(**g)
        assert out.grad_fn.name() == "GeneratedBackwardFor_petal_gated_residual_defaultBackward"


@needs_cpu
def test_what_the_cpp_op_serves():
    g = gated_inputs("middleY", (2, 3, 4), mask=False)
    assert _ops.cpp_gated_residual_serves(*_public_args(g))
    assert pk.gated_residual(**g).grad_fn.name() == CPP_NODE
    for over in ({"x": torch.randn(0, 3, 4)}, {"dropout_seed": torch.tensor(3)}, {"dropout_seed": 2 ** 63},
                 {"gate_scale": "0.3"}, {"adapter_scale": True}, {"gate_vector": [0.0] * 4}):
        assert not _ops.cpp_gated_residual_serves(*_public_args({**g, **over})), over
    empty = gated_inputs("middleY", (0, 3, 4), mask=False)
    assert pk.gated_residual(**empty).shape == (0, 3, 4)
    with _Recording():
        assert not _ops.cpp_gated_residual_serves(*_public_args(g))
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        fake = {k: mode.from_tensor(v) if isinstance(v, torch.Tensor) else v for k, v in g.items()}
        assert not _ops.cpp_gated_residual_serves(*_public_args(fake))
    seen = []
    torch.func.vmap(lambda x: seen.append(_ops.cpp_gated_residual_serves(*_public_args({**g, "x": x}))) or x)(
        g["x"])
    assert seen == [False]


def _public_args(inputs: dict) -> tuple:
    args = {"adapter_scale": 1.0, "gate_scale": 1.0, "gate_logits": None, "gate_weight": None,
            "gate_bias": None, "gate_vector": None, "dropout_mask": None,
            "dropout_p": 0.0, "dropout_seed": None, **inputs}
    return tuple(args[k] for k in ("x", "h", "u", "granularity", "adapter_scale", "gate_scale", "gate_logits",
                                   "gate_weight", "gate_bias", "gate_vector", "dropout_mask", "dropout_p",
                                   "dropout_seed"))


class _Recording(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


@needs_cpu
def test_cpp_autograd_op_refuses_double_backward():
    i = gated_inputs("middleX", (2, 3, 4), mask=False)
    out = pk.gated_residual(**i)
    assert out.grad_fn.name() == CPP_NODE
    with pytest.raises(RuntimeError, match="create_graph"):
        torch.autograd.grad(out.sum(), i["x"], create_graph=True)


def test_inference_mode_and_no_grad_build_no_graph():
    i = dma_inputs((4,), 6, 5, 2, "vector", True, True, False)
    args = (i["x"], i["weight"], i["bias"], i["down"], i["up"], i["scale"], i["gamma"])
    want = pk.dma_linear(*args).detach()
    with torch.inference_mode():
        got = pk.dma_linear(*args)
    assert got.grad_fn is None and torch.equal(got, want)
    g = gated_inputs("large", (2, 3, 4), mask=False)
    with torch.no_grad():
        assert pk.dma_linear(*args).grad_fn is None and pk.gated_residual(**g).grad_fn is None


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
        assert checkpointed and reentrant or y.grad_fn.name() == CPP_NODE
        x.grad = gate.weight.grad = gate.bias.grad = None
        y.square().sum().backward()  # reentrant checkpoints refuse torch.autograd.grad
        grads.append((x.grad, gate.weight.grad, gate.bias.grad))
    for a, b in zip(*grads, strict=True):  # the same dropout; the gate grads' two blocks add in either order
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# Calls that pass the kernels' size checks after a reshape: the C++ op's own checks must refuse them.
_RESHAPEABLE_BAD = [
    ("h transposed leading dims", "middleX", {"h": torch.randn(3, 2, 4)}),
    ("gate_vector as a row", "middleY", {"gate_vector": torch.randn(1, 4)}),
    ("gate_logits transposed", "large", {"gate_logits": torch.randn(3, 2, 4)}),
    ("mask transposed", "middleX", {"dropout_mask": torch.ones(3, 2, 4)}),
    ("gate on another device", "middleY", {"gate_vector": torch.randn(4, device="meta")}),
    ("p out of range", "middleY", {"dropout_p": 1.5}),
    ("mask and p", "middleY", {"dropout_p": 0.25, "dropout_mask": torch.ones(2, 3, 4)}),
]
_BAD = [(label, args) for label, args, _, _ in GATE_BAD] + [
    (label, {**gate_args(granularity), **over}) for label, granularity, over in _RESHAPEABLE_BAD]


@needs_cpu
@pytest.mark.parametrize("label,args", _BAD, ids=[c[0] for c in _BAD])
def test_both_paths_raise_the_same_documented_error(label, args, monkeypatch):
    """The C++ op validates the calls it serves as petal_kernels._checks does: the same exception type and
    message, raised once (the Python checks never run after it)."""
    def checked(**kwargs):
        with pytest.raises((TypeError, ValueError)) as info:
            pk.gated_residual(**kwargs)
        return type(info.value), str(info.value)

    python_checks = pk._checks.gated_residual
    calls = []
    monkeypatch.setattr(pk._checks, "gated_residual", lambda *a: calls.append(a) or python_checks(*a))
    first = checked(**args)
    cpp_served = not calls
    monkeypatch.setattr(_ops, "cpp_gated_residual_serves", lambda *a: False)
    second = checked(**args)
    assert len(calls) == 1 + (not cpp_served)
    assert first == second
    if label not in ("scale type", "bool scale"):  # Python number types: the checked path's call
        assert cpp_served, label


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
    for cpp in (True, False):
        if not cpp:
            monkeypatch.setattr(_ops, "cpp_gated_residual_serves", lambda *a: False)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = pk.gated_residual(**inputs)
        assert out.dtype == torch.bfloat16
        assert cpp == (out.grad_fn.name() == CPP_NODE)
        grads = torch.autograd.grad(out.float().sum(), inputs["x"])
        outs.append((out, grads[0]))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
