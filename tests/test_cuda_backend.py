"""The ``cuda`` backend (csrc/cuda kernels): availability reporting everywhere; on a machine with a GPU
and a CUDA build of petal_kernels._C, parity with the float64 reference by DESIGN §2.3's rules for
every op, granularity and dtype, on shapes that take both the 16-byte-vector and the scalar paths.
"""

from __future__ import annotations

import pytest
import torch

import petal_kernels as pk
from petal_kernels import _cuda
from petal_kernels import reference as ref
from tests import test_dma_linear as dma_tests
from tests import test_gated_residual as gated_tests
from tests.helpers import compare

CUDA_READY = torch.cuda.is_available() and _cuda.is_available()
needs_cuda_backend = pytest.mark.skipif(not CUDA_READY, reason=f"cuda backend: {_cuda.unavailable_reason()}")


def test_unavailable_reason_names_the_cause(monkeypatch):
    if CUDA_READY:
        assert _cuda.unavailable_reason() == ""
        return
    assert not _cuda.is_available()
    assert _cuda.unavailable_reason()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    if not _cuda._cpu.is_available():
        return
    if _cuda._missing_kernels():
        # A CUDA device but an extension built without the CUDA kernels: the reason says how to build them.
        assert not _cuda.is_available()
        assert "PETAL_FORCE_CUDA=1" in _cuda.unavailable_reason()
    else:
        # A CUDA build of the extension (PETAL_FORCE_CUDA=1) on a machine without a GPU: only the device
        # was missing, so with one the backend is ready.
        assert _cuda.is_available()
        assert _cuda.unavailable_reason() == ""


def on_cuda(fn):
    """``fn`` run on CUDA copies of the CPU inputs; outputs come back to the CPU (autograd flows through)."""
    def run(**kw):
        def move(v):
            if isinstance(v, torch.Tensor):
                return v.to("cuda")
            if isinstance(v, (list, tuple)):
                return type(v)(move(e) for e in v)
            return v

        out = fn(**{k: move(v) for k, v in kw.items()})
        return tuple(o.cpu() for o in out) if isinstance(out, tuple) else out.cpu()
    return run


DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
# (B, T, d): d = 64 takes every 16-byte-vector path; d = 19 the scalar one; d = 2056 several
# vectors per thread; T = 300 several row blocks per example.
GATED_SHAPES = {"vector": (2, 5, 64), "scalar": (3, 7, 19), "wide": (2, 3, 2056), "long": (2, 300, 24)}


@needs_cuda_backend
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("granularity", pk.GRANULARITIES)
@pytest.mark.parametrize("shape", list(GATED_SHAPES))
def test_gated_residual_matches_reference(dtype, granularity, shape):
    inputs = gated_tests.make_inputs(granularity, GATED_SHAPES[shape], mask=shape != "long")
    compare("cuda", dtype, on_cuda(pk.gated_residual), ref.gated_residual, inputs,
            gated_tests.grad_names(inputs))


@needs_cuda_backend
@pytest.mark.parametrize("granularity", pk.GRANULARITIES)
def test_gated_residual_is_deterministic(granularity):
    i = gated_tests.make_inputs(granularity, (4, 64, 72), seed=9)
    i = {k: v.detach().float().cuda().requires_grad_(v.requires_grad) if isinstance(v, torch.Tensor) else v
         for k, v in i.items()}
    names = gated_tests.grad_names(i)
    with pk.use_backend("cuda"):
        runs = []
        for _ in range(2):
            out = pk.gated_residual(**i)
            runs.append([out, *torch.autograd.grad(out, [i[n] for n in names], torch.ones_like(out))])
    for a, b in zip(*runs):
        assert torch.equal(a, b)


@needs_cuda_backend
def test_gated_residual_too_wide_rows_name_the_limit():
    d = 1024 * 4 + 1  # odd d: the scalar path holds at most 4096 columns per row
    x = torch.randn(2, d, device="cuda")
    with pk.use_backend("cuda"), pytest.raises(RuntimeError, match="supports d <="):
        pk.gated_residual(x, x, x, "middleY", gate_vector=torch.randn(d, device="cuda"))


DMA_CASES = {**dma_tests.CASES, "vector-r64": ((40,), 64, 48, 64, "vector", True, True, False),
             "row-r64": ((3, 9), 32, 40, 64, "row", True, False, False)}


@needs_cuda_backend
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", [c for c in DMA_CASES if "zero-rows" not in c])
def test_dma_linear_matches_reference(dtype, case):
    inputs = dma_tests.make_inputs(*DMA_CASES[case])
    compare("cuda", dtype, on_cuda(pk.dma_linear), ref.dma_linear, inputs, dma_tests.grad_names(inputs))
