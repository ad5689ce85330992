"""dma_linear / dma_linear_multi: every backend against the float64 reference (DESIGN §2.1, §2.3)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import petal_kernels as pk
from petal_kernels import reference as ref
from tests.helpers import CPU_BACKENDS, compare, rel_err

DTYPES = [torch.float32, torch.bfloat16, torch.float64]

# (leading dims, K, N, R, scale kind, gamma, bias, non-contiguous)
CASES = {
    "odd-2d": ((37,), 29, 23, 7, "vector", True, True, False),
    "3d-per-row": ((3, 5), 19, 33, 9, "row", False, True, False),
    "broadcast-batch": ((2, 6), 24, 17, 5, "batch", True, False, False),
    "row-scalar": ((11,), 16, 20, 4, "row-scalar", False, False, False),
    "one-row": ((1,), 13, 9, 3, "vector", True, True, False),
    "zero-rows": ((0,), 12, 10, 4, "vector", True, True, False),
    "zero-rows-3d": ((2, 0), 12, 10, 4, "row", False, True, False),
    "non-contiguous": ((21,), 18, 15, 6, "vector", True, True, True),
    "non-contiguous-row": ((4, 5), 18, 15, 6, "row", False, True, True),
}


def make_inputs(lead, K, N, R, kind, gamma, bias, noncontig, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, grad=True):
        return torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_(grad)

    if noncontig:  # transposed storage: x and weight are strided views
        x = torch.randn(K, *lead, generator=g, dtype=torch.float64).movedim(0, -1).requires_grad_(True)
        weight = torch.randn(K, N, generator=g, dtype=torch.float64).T
    else:
        x, weight = rand(*lead, K), rand(N, K, grad=False)
    scale_shape = {
        "vector": (R,), "row": (*lead, R), "batch": (lead[0], 1, R), "row-scalar": (*lead, 1),
    }[kind]
    return {
        "x": x,
        "weight": weight,
        "bias": rand(N, grad=False) if bias else None,
        "down": rand(R, K),
        "up": rand(N, R),  # random, not zero: the update must be exercised
        "scale": rand(*scale_shape),
        "gamma": rand(N) if gamma else None,
    }


def grad_names(inputs):
    return [k for k in ("x", "down", "up", "scale", "gamma") if inputs[k] is not None]


@pytest.mark.parametrize("backend_name", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", list(CASES))
def test_dma_linear_matches_reference(backend_name, dtype, case):
    if backend_name == "triton" and dtype == torch.float64:
        pytest.skip("Triton kernels run in fp32/bf16/fp16")
    inputs = make_inputs(*CASES[case])
    compare(backend_name, dtype, pk.dma_linear, ref.dma_linear, inputs, grad_names(inputs))


def _multi_inputs(lead, K, R, Ns, kinds, gammas, seed=1):
    parts = [make_inputs(lead, K, N, R, kind, gam, j != 1, False, seed + j)
             for j, (N, kind, gam) in enumerate(zip(Ns, kinds, gammas))]
    inputs = {"x": parts[0]["x"], "down": parts[0]["down"]}
    for j, p in enumerate(parts):
        for k in ("weight", "bias", "up", "scale", "gamma"):
            inputs[f"{k}{j}"] = p[k]
    return inputs


def _multi(fn_multi):
    def run(x, down, **kw):
        J = len([k for k in kw if k.startswith("weight")])
        pick = lambda k: [kw[f"{k}{j}"] for j in range(J)]
        gammas = pick("gamma")
        return fn_multi(x, pick("weight"), pick("bias"), down, pick("up"), pick("scale"),
                        None if all(g is None for g in gammas) else gammas)
    return run


MULTI_CASES = {
    "qkv-odd": ((3, 7), 21, 5, (19, 19, 19), ("vector",) * 3, (False,) * 3),
    "per-row-and-gamma": ((13,), 16, 4, (8, 11, 6), ("row", "vector", "batch"), (True,) * 3),
    "mixed-gamma": ((9,), 12, 3, (7, 5), ("vector", "row"), (True, False)),
    "one-projection": ((5,), 10, 2, (3,), ("vector",), (False,)),
}


@pytest.mark.parametrize("backend_name", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", list(MULTI_CASES))
def test_dma_linear_multi_matches_reference(backend_name, dtype, case):
    lead, K, R, Ns, kinds, gammas = MULTI_CASES[case]
    if "batch" in kinds and len(lead) < 2:
        kinds = tuple("row" if k == "batch" else k for k in kinds)
    inputs = _multi_inputs(lead, K, R, Ns, kinds, gammas)
    names = [k for k, v in inputs.items() if v is not None and v.requires_grad]
    compare(backend_name, dtype, _multi(pk.dma_linear_multi), _multi(ref.dma_linear_multi), inputs, names)


@pytest.mark.parametrize("backend_name", CPU_BACKENDS)
def test_multi_equals_separate_calls(backend_name):
    """dma_linear_multi must equal J calls of dma_linear (same backend, float32)."""
    inputs = _multi_inputs((4, 6), 20, 6, (12, 12, 9), ("vector", "row", "vector"), (True, False, True))
    inputs = {k: (v.float().detach().requires_grad_(v.requires_grad) if v is not None else None)
              for k, v in inputs.items()}
    with pk.use_backend(backend_name):
        ys = _multi(pk.dma_linear_multi)(**inputs)
        for j, y in enumerate(ys):
            single = pk.dma_linear(inputs["x"], inputs[f"weight{j}"], inputs[f"bias{j}"], inputs["down"],
                                   inputs[f"up{j}"], inputs[f"scale{j}"], inputs[f"gamma{j}"])
            assert rel_err(y, single) <= 1e-6


@pytest.mark.parametrize("backend_name", CPU_BACKENDS)
def test_multi_with_unused_outputs(backend_name):
    """Outputs that never reach the loss hand the backward no gradient (None, not a block of zeros):
    the gradients equal those of the used projection alone."""
    inputs = _multi_inputs((3, 5), 12, 4, (8, 8, 6), ("vector", "row", "vector"), (True, True, False))
    inputs = {k: (v.float().detach().requires_grad_(v.requires_grad) if v is not None else None)
              for k, v in inputs.items()}
    names = [k for k, v in inputs.items() if v is not None and v.requires_grad]
    with pk.use_backend(backend_name):
        ys = _multi(pk.dma_linear_multi)(**inputs)
        got = torch.autograd.grad((ys[1] ** 2).sum(), [inputs[n] for n in names], allow_unused=True)
        single = pk.dma_linear(inputs["x"], inputs["weight1"], inputs["bias1"], inputs["down"],
                               inputs["up1"], inputs["scale1"], inputs["gamma1"])
        want = torch.autograd.grad((single ** 2).sum(), [inputs[n] for n in names], allow_unused=True)
    for name, g, w in zip(names, got, want):
        if w is None:  # parameters of the unused projections
            assert g is None or not g.any(), name
        else:
            assert rel_err(g, w) <= 1e-5, name


@pytest.mark.parametrize("backend_name", [b for b in CPU_BACKENDS if b != "triton"])
def test_gradcheck(backend_name):
    inputs = make_inputs((2, 3), 7, 5, 3, "batch", True, True, False)
    names = grad_names(inputs)
    fixed = {k: v for k, v in inputs.items() if k not in names}

    def fn(*args):
        return pk.dma_linear(**fixed, **dict(zip(names, args)))

    with pk.use_backend(backend_name):
        assert torch.autograd.gradcheck(fn, [inputs[n] for n in names])


def test_gradcheck_multi():
    inputs = _multi_inputs((5,), 6, 3, (4, 3), ("vector", "row"), (True, True))
    names = [k for k, v in inputs.items() if v is not None and v.requires_grad]
    fixed = {k: v for k, v in inputs.items() if k not in names}
    run = _multi(pk.dma_linear_multi)
    assert torch.autograd.gradcheck(lambda *a: run(**fixed, **dict(zip(names, a))),
                                    [inputs[n] for n in names])


def test_frozen_weight_gets_no_grad():
    """weight/bias that require grad are treated as frozen: no gradient is produced for them."""
    i = make_inputs((4,), 6, 5, 2, "vector", False, True, False)
    i["weight"].requires_grad_(True)
    i["bias"].requires_grad_(True)
    pk.dma_linear(**i).sum().backward()
    assert i["weight"].grad is None and i["bias"].grad is None
    assert i["x"].grad is not None and i["down"].grad is not None


class _QKV(torch.nn.Module):
    def __init__(self, K=16, N=12, R=4):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.w = torch.nn.ParameterList(
            [torch.nn.Parameter(torch.randn(N, K, generator=g), requires_grad=False) for _ in range(3)])
        self.down = torch.nn.Parameter(torch.randn(R, K, generator=g))
        self.ups = torch.nn.ParameterList(
            [torch.nn.Parameter(torch.randn(N, R, generator=g)) for _ in range(3)])
        self.lam = torch.nn.Parameter(torch.rand(R, generator=g))
        self.gamma = torch.nn.Parameter(torch.rand(N, generator=g) + 0.5)

    def forward(self, x):
        q, k, v = pk.dma_linear_multi(x, list(self.w), [None] * 3, self.down, list(self.ups), [self.lam] * 3)
        o = pk.dma_linear(x, self.w[0], None, self.down, self.ups[0], self.lam, self.gamma)
        return (q * k).sum(-1, keepdim=True) * v + o


def test_torch_compile_fullgraph():
    torch._dynamo.reset()
    model = _QKV()
    x = torch.randn(2, 5, 16, requires_grad=True)
    eager = model(x)
    eager.sum().backward()
    grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    model.zero_grad()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    out.sum().backward()
    assert rel_err(out, eager) < 1e-6
    for g, p in zip(grads, [p for p in model.parameters() if p.requires_grad]):
        assert rel_err(p.grad, g) < 1e-5


# derandomize: CI checks the same examples every run (a new random case is found locally, not in CI)
@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    lead=st.lists(st.integers(0, 5), min_size=1, max_size=3),
    K=st.integers(1, 24), N=st.integers(1, 24), R=st.integers(1, 9),
    kind=st.sampled_from(["vector", "row", "row-scalar"]),
    gamma=st.booleans(), bias=st.booleans(), seed=st.integers(0, 2**16),
)
def test_fuzz_shapes(lead, K, N, R, kind, gamma, bias, seed):
    inputs = make_inputs(tuple(lead), K, N, R, kind, gamma, bias, False, seed)
    names = grad_names(inputs)
    for name in [b for b in CPU_BACKENDS if b != "triton"]:
        compare(name, torch.float32, pk.dma_linear, ref.dma_linear, inputs, names)
