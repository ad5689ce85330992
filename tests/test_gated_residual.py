"""gated_residual: every backend and granularity against the float64 reference (DESIGN §2.2, §2.3)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import petal_kernels as pk
from petal_kernels import reference as ref
from tests.helpers import CPU_BACKENDS, compare, rel_err

SHAPES = {
    "odd": (3, 7, 19),
    "one-row": (1, 1, 8),
    "zero-rows": (2, 0, 6),
    "zero-batch": (0, 4, 6),
    "wide": (2, 5, 67),
}


def make_inputs(granularity, shape, mask=True, noncontig=False, seed=0, scales=(0.7, 0.3)):
    g = torch.Generator().manual_seed(seed)
    d = shape[-1]

    def rand(*s):
        return torch.randn(*s, generator=g, dtype=torch.float64).requires_grad_(True)

    x = torch.randn(d, *shape[:-1], generator=g, dtype=torch.float64).movedim(0, -1) if noncontig \
        else torch.randn(*shape, generator=g, dtype=torch.float64)
    inputs = {"x": x.requires_grad_(True), "h": rand(*shape), "u": rand(*shape),
              "granularity": granularity, "adapter_scale": scales[0], "gate_scale": scales[1]}
    if granularity == "large":
        inputs["gate_logits"] = rand(*shape)
    elif granularity == "middleX":
        inputs["gate_weight"], inputs["gate_bias"] = rand(d), rand(1)
    elif granularity == "middleY":
        inputs["gate_vector"] = rand(d)
    else:
        inputs["gate_weight"], inputs["gate_bias"] = rand(2 * d), rand(())
    if mask:
        keep = torch.rand(shape, generator=g) > 0.25
        inputs["dropout_mask"] = keep.double() / 0.75
    return inputs


def grad_names(inputs):
    return [k for k, v in inputs.items() if isinstance(v, torch.Tensor) and v.requires_grad]


@pytest.mark.parametrize("backend_name", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("granularity", pk.GRANULARITIES)
@pytest.mark.parametrize("shape", list(SHAPES))
def test_matches_reference(backend_name, dtype, granularity, shape):
    if backend_name == "triton" and dtype == torch.float64:
        pytest.skip("Triton kernels run in fp32/bf16/fp16")
    inputs = make_inputs(granularity, SHAPES[shape], mask=shape != "wide")
    compare(backend_name, dtype, pk.gated_residual, ref.gated_residual, inputs, grad_names(inputs))


@pytest.mark.parametrize("backend_name", CPU_BACKENDS)
@pytest.mark.parametrize("granularity", pk.GRANULARITIES)
def test_non_contiguous_and_2d(backend_name, granularity):
    inputs = make_inputs(granularity, (2, 6, 13), noncontig=True, seed=5)
    compare(backend_name, torch.float32, pk.gated_residual, ref.gated_residual, inputs, grad_names(inputs))
    if granularity != "small":  # small needs (B, T, d); the others take any leading dims
        flat = make_inputs(granularity, (9, 13), seed=6)
        compare(backend_name, torch.float32, pk.gated_residual, ref.gated_residual, flat, grad_names(flat))


@pytest.mark.parametrize("backend_name", [b for b in CPU_BACKENDS if b != "triton"])
@pytest.mark.parametrize("granularity", pk.GRANULARITIES)
@pytest.mark.parametrize("adapter_scale", [0.7, 1.0])  # 1.0: du is dh itself (not written by the op)
def test_gradcheck(backend_name, granularity, adapter_scale):
    inputs = make_inputs(granularity, (2, 3, 5), seed=2, scales=(adapter_scale, 0.3))
    names = grad_names(inputs)
    fixed = {k: v for k, v in inputs.items() if k not in names}
    with pk.use_backend(backend_name):
        assert torch.autograd.gradcheck(lambda *a: pk.gated_residual(**fixed, **dict(zip(names, a))),
                                        [inputs[n] for n in names])


def test_identity_gates_reduce_to_plain_residual():
    """middleY with g = 0 and no dropout is exactly x + gate_scale * (h + adapter_scale * u)."""
    i = make_inputs("middleY", (2, 3, 8), mask=False)
    with torch.no_grad():
        i["gate_vector"].zero_()
    out = pk.gated_residual(**i)
    expected = i["x"] + 0.3 * (i["h"] + 0.7 * i["u"])
    assert rel_err(out, expected) < 1e-12


def test_small_gate_is_per_example():
    """Changing example 1's rows must not change example 0's output under the 'small' gate."""
    i = make_inputs("small", (2, 4, 6), mask=False)
    out = pk.gated_residual(**i)
    with torch.no_grad():
        i["h"][1] += 10
    out2 = pk.gated_residual(**i)
    assert torch.equal(out[0], out2[0])
    assert not torch.allclose(out[1], out2[1])


def test_backward_returns_dout_and_dh_without_copies():
    """large/middleY: dL/dx is dout; adapter_scale 1: dL/du is dL/dh. The op hands those tensors
    through instead of writing copies (the grads still equal the reference's)."""
    i = make_inputs("large", (2, 3, 8), mask=False, scales=(1.0, 0.3))
    out = pk.gated_residual(**i)
    dout = torch.randn_like(out)
    dx, dh, du = torch.autograd.grad(out, [i["x"], i["h"], i["u"]], dout)
    assert dx.data_ptr() == dout.data_ptr() and du.data_ptr() == dh.data_ptr()
    r = ref.gated_residual(**i)
    rx, rh, ru = torch.autograd.grad(r, [i["x"], i["h"], i["u"]], dout)
    assert rel_err(dx, rx) < 1e-12 and rel_err(dh, rh) < 1e-12 and rel_err(du, ru) < 1e-12


class _Gate(torch.nn.Module):
    def __init__(self, granularity, d=8):
        super().__init__()
        self.granularity = granularity
        self.w = torch.nn.Parameter(torch.randn(2 * d if granularity == "small" else d))
        self.b = torch.nn.Parameter(torch.randn(1))
        self.v = torch.nn.Parameter(torch.randn(d))

    def forward(self, x, h, u):
        kw = {"large": {"gate_logits": h * 0.5},
              "middleX": {"gate_weight": self.w, "gate_bias": self.b},
              "middleY": {"gate_vector": self.v},
              "small": {"gate_weight": self.w, "gate_bias": self.b}}[self.granularity]
        return pk.gated_residual(x, h, u, self.granularity, 0.5, 0.3, **kw)


@pytest.mark.parametrize("granularity", pk.GRANULARITIES)
def test_torch_compile_fullgraph(granularity):
    torch._dynamo.reset()
    m = _Gate(granularity)
    x, h, u = (torch.randn(2, 3, 8, requires_grad=True) for _ in range(3))
    eager = m(x, h, u)
    (gx,) = torch.autograd.grad(eager.sum(), [x])
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    out = compiled(x, h, u)
    (cx,) = torch.autograd.grad(out.sum(), [x])
    assert rel_err(out, eager) < 1e-6 and rel_err(cx, gx) < 1e-6


# derandomize: CI checks the same examples every run (a new random case is found locally, not in CI)
@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(B=st.integers(0, 3), T=st.integers(0, 6), d=st.integers(1, 40),
       granularity=st.sampled_from(pk.GRANULARITIES), mask=st.booleans(), seed=st.integers(0, 2**16),
       # scales large enough that float32 does not underflow where float64 does not
       a_s=st.just(0.0) | st.floats(0.05, 2) | st.floats(-2, -0.05),
       g_s=st.floats(0.05, 2) | st.floats(-2, -0.05))
def test_fuzz_shapes(B, T, d, granularity, mask, seed, a_s, g_s):
    inputs = make_inputs(granularity, (B, T, d), mask=mask, seed=seed, scales=(a_s, g_s))
    for name in [b for b in CPU_BACKENDS if b != "triton"]:
        compare(name, torch.float32, pk.gated_residual, ref.gated_residual, inputs, grad_names(inputs))


@pytest.mark.parametrize("backend_name", CPU_BACKENDS)
def test_large_gate_sigmoid_over_the_whole_float_range(backend_name):
    """The float32 sigmoid of the large gate (a polynomial exp on the CPU) against float64: within 1e-6
    of each element over logits from -100 to 100, exact 0 and 1 at -inf and inf, NaN kept."""
    if backend_name == "triton":
        pytest.skip("the interpreter is too slow for 2**16 rows; the Triton sigmoid is tl.sigmoid")
    special = torch.tensor([0.0, -0.0, 87.0, -87.0, -87.5, 88.8, -88.8, 1e-40, float("inf"), float("-inf"),
                            float("nan"), 17.0, -17.0, -30.0])
    logits = torch.cat([torch.linspace(-100, 100, 2 ** 16 - special.numel()), special]).view(-1, 16)
    x, h, u = torch.zeros_like(logits), torch.ones_like(logits), torch.zeros_like(logits)
    with pk.use_backend(backend_name):
        gate = pk.gated_residual(x, h, u, "large", gate_logits=logits).double()
    want = torch.sigmoid(logits.double())
    finite = logits.isfinite()
    assert torch.all((gate - want).abs()[finite] <= 1e-6 * want[finite] + 1e-37)
    tail = gate.flatten()[-special.numel():]
    assert tail[8] == 1.0 and tail[9] == 0.0 and tail[10].isnan()
