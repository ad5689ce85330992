"""In-kernel dropout of ``gated_residual`` (``dropout_p``/``dropout_seed``): the Philox stream itself,
the same mask on every backend, the statistics of the mask, what autograd saves, seeding, errors."""

from __future__ import annotations

import platform
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import triton
import triton.language as tl
from torch.utils.checkpoint import checkpoint

import petal_kernels as pk
from petal_kernels import philox
from petal_kernels import reference as ref
from tests.helpers import CPU_BACKENDS, compare, rel_err
from tests.test_gated_residual import grad_names, make_inputs

ROOT = Path(__file__).resolve().parents[1]


def test_philox_known_answer():
    # Random123's kat_vectors: philox4x32_10, counter 0, key 0
    out = philox.philox4x32_10(torch.tensor([0]), 0)[0].tolist()
    assert out == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]


@triton.jit
def _triton_philox(out_ptr, seed, N):
    offs = tl.arange(0, 64)
    g = offs.to(tl.int64) + (1 << 32) - 8  # counters that cross into the high word
    lo = (g & 0xFFFFFFFF).to(tl.uint32)
    hi = (g >> 32).to(tl.uint32)
    zero = lo * 0
    r0, r1, r2, r3 = tl.philox(seed, lo, hi, zero, zero)
    m = offs < N
    tl.store(out_ptr + offs * 4, r0.to(tl.int64), mask=m)
    tl.store(out_ptr + offs * 4 + 1, r1.to(tl.int64), mask=m)
    tl.store(out_ptr + offs * 4 + 2, r2.to(tl.int64), mask=m)
    tl.store(out_ptr + offs * 4 + 3, r3.to(tl.int64), mask=m)


@pytest.mark.parametrize("seed", [0, 12345, 2 ** 63 - 7])
def test_reference_philox_equals_tritons_own(seed):
    """Our int64 PyTorch Philox against Triton's ``tl.philox`` (an independent implementation)."""
    out = torch.zeros(64 * 4, dtype=torch.int64)
    _triton_philox[(1,)](out, seed, 64)
    counters = torch.arange(64, dtype=torch.int64) + (1 << 32) - 8
    assert torch.equal(out.reshape(64, 4), philox.philox4x32_10(counters, seed))


def _applied_mask(backend_name, shape, p, seed, dtype=torch.float32):
    """The mask a backend applies: middleY with G = 1, h = 1, u = 0 gives out = x + mask."""
    x = torch.zeros(shape, dtype=dtype)
    h = torch.ones(shape, dtype=dtype)
    with pk.use_backend(backend_name):
        return pk.gated_residual(x, h, torch.zeros_like(h), "middleY", dropout_p=p, dropout_seed=seed,
                                 gate_vector=torch.zeros(shape[-1], dtype=dtype))


@pytest.mark.parametrize("backend_name", CPU_BACKENDS)
@pytest.mark.parametrize("shape", [(3, 37), (2, 5, 64), (70, 3), (1, 1)])
def test_every_backend_applies_the_reference_mask(backend_name, shape):
    seed = 987654321
    expected = philox.dropout_mask(seed, 0.3, shape)
    assert torch.equal(_applied_mask(backend_name, shape, 0.3, seed), expected)


@pytest.mark.parametrize("backend_name", [b for b in CPU_BACKENDS if b != "triton"])
def test_mask_statistics(backend_name):
    n = 200_000
    for p in (0.1, 0.5):
        mask = _applied_mask(backend_name, (n // 500, 500), p, 42)
        dropped = (mask == 0).double().mean().item()
        sigma = (p * (1 - p) / n) ** 0.5
        assert abs(dropped - p) < 5 * sigma, (p, dropped)
        values = mask.unique().tolist()
        assert len(values) == 2 and values[0] == 0.0 and values[1] == pytest.approx(1 / (1 - p))
        assert abs(mask.double().mean().item() - 1.0) < 5 * sigma / (1 - p)
    # neighbouring elements and rows are not correlated
    mask = _applied_mask(backend_name, (400, 500), 0.5, 7) > 0
    same_next = (mask[:, 1:] == mask[:, :-1]).double().mean().item()
    same_row = (mask[1:] == mask[:-1]).double().mean().item()
    assert abs(same_next - 0.5) < 0.01 and abs(same_row - 0.5) < 0.01


@pytest.mark.parametrize("backend_name", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("granularity", pk.GRANULARITIES)
def test_matches_reference_with_dropout(backend_name, dtype, granularity):
    if backend_name == "triton" and dtype == torch.float64:
        pytest.skip("Triton kernels run in fp32/bf16/fp16")
    for shape, seed in (((3, 7, 19), 5), ((2, 5, 67), 2 ** 62 + 3)):
        inputs = make_inputs(granularity, shape, mask=False, seed=seed % 1000)
        inputs.update(dropout_p=0.25, dropout_seed=seed)
        compare(backend_name, dtype, pk.gated_residual, ref.gated_residual, inputs, grad_names(inputs))


@pytest.mark.parametrize("backend_name", [b for b in CPU_BACKENDS if b != "triton"])
@pytest.mark.parametrize("granularity", pk.GRANULARITIES)
def test_gradcheck_with_dropout(backend_name, granularity):
    inputs = make_inputs(granularity, (2, 3, 5), mask=False, seed=4)
    names = grad_names(inputs)
    fixed = {k: v for k, v in inputs.items() if k not in names}
    with pk.use_backend(backend_name):
        assert torch.autograd.gradcheck(
            lambda *a: pk.gated_residual(**fixed, **dict(zip(names, a)), dropout_p=0.4, dropout_seed=3),
            [inputs[n] for n in names])


@pytest.mark.parametrize("backend_name", [b for b in CPU_BACKENDS if b != "triton"])
def test_backward_saves_no_mask(backend_name):
    inputs = make_inputs("large", (4, 8, 32), mask=False)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with pk.use_backend(backend_name), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = pk.gated_residual(**inputs, dropout_p=0.5)
    inputs_ptrs = {v.data_ptr() for v in inputs.values() if isinstance(v, torch.Tensor)}
    extra = [t for t in saved if t.data_ptr() not in inputs_ptrs and t.numel() > 1]
    assert extra == [], [tuple(t.shape) for t in extra]
    out.sum().backward()
    assert inputs["x"].grad is not None


def test_seed_comes_from_torch_generator():
    inputs = make_inputs("middleY", (2, 6, 16), mask=False)
    torch.manual_seed(0)
    a = pk.gated_residual(**inputs, dropout_p=0.5)
    b = pk.gated_residual(**inputs, dropout_p=0.5)
    torch.manual_seed(0)
    a2 = pk.gated_residual(**inputs, dropout_p=0.5)
    assert torch.equal(a, a2)
    assert not torch.equal(a, b)
    torch.manual_seed(0)
    seed = int(philox.draw_seed())
    assert torch.equal(a, pk.gated_residual(**inputs, dropout_p=0.5, dropout_seed=seed))


@pytest.mark.parametrize("backend_name", [b for b in CPU_BACKENDS if b != "triton"])
def test_activation_checkpointing_replays_the_mask(backend_name):
    inputs = make_inputs("middleX", (2, 5, 12), mask=False, seed=9)
    names = grad_names(inputs)

    def run(use_checkpoint):
        torch.manual_seed(1)
        tensors = [inputs[n] for n in names]

        def f(*a):
            kw = {**inputs, **dict(zip(names, a))}
            return pk.gated_residual(**kw, dropout_p=0.3) * 2
        out = checkpoint(f, *tensors, use_reentrant=False) if use_checkpoint else f(*tensors)
        return out, torch.autograd.grad(out.sum(), tensors)

    with pk.use_backend(backend_name):
        out, grads = run(False)
        out_c, grads_c = run(True)
    assert torch.equal(out, out_c)
    assert all(torch.equal(g, gc) for g, gc in zip(grads, grads_c))


def test_torch_compile_fullgraph_with_dropout():
    torch._dynamo.reset()
    x, h, u = (torch.randn(2, 3, 8, requires_grad=True) for _ in range(3))
    v = torch.randn(8, requires_grad=True)

    def f(x, h, u, v):
        return pk.gated_residual(x, h, u, "middleY", 0.5, 0.3, gate_vector=v, dropout_p=0.2)

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    torch.manual_seed(5)
    out = compiled(x, h, u, v)
    torch.manual_seed(5)
    eager = f(x, h, u, v)
    assert rel_err(out, eager) < 1e-6
    out.sum().backward()
    assert v.grad is not None and v.grad.isfinite().all()


def test_zero_p_is_no_dropout():
    inputs = make_inputs("large", (2, 3, 8), mask=False)
    plain = pk.gated_residual(**inputs)
    assert torch.equal(pk.gated_residual(**inputs, dropout_p=0.0, dropout_seed=5), plain)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(dropout_p=1.0), ValueError, r"dropout_p must be in \[0, 1\)"),
    (dict(dropout_p=-0.1), ValueError, "dropout_p"),
    (dict(dropout_p="0.1"), TypeError, "dropout_p must be a real number"),
    (dict(dropout_p=0.1, dropout_seed=1.5), TypeError, "dropout_seed must be an int"),
    (dict(dropout_p=0.1, dropout_seed=torch.tensor([1.0])), ValueError, "dropout_seed must be an int"),
    (dict(dropout_p=0.1, dropout_seed=2 ** 64), ValueError, "dropout_seed must fit in 64 bits"),
])
def test_bad_dropout_arguments(kwargs, error, match):
    inputs = make_inputs("large", (2, 3, 8), mask=False)
    with pytest.raises(error, match=match):
        pk.gated_residual(**inputs, **kwargs)


def test_mask_and_p_are_exclusive():
    inputs = make_inputs("large", (2, 3, 8), mask=True)
    with pytest.raises(ValueError, match="either dropout_mask .* or dropout_p"):
        pk.gated_residual(**inputs, dropout_p=0.1)


FILL_PROGRAM = r"""
#include <cstdio>
#include <cstdlib>
#include <vector>
#include "philox_fill.h"
int main(int argc, char** argv) {
  const petal_C::cpu::Dropout drop(std::atof(argv[1]), std::strtoll(argv[2], nullptr, 10));
  const long long first = std::atoll(argv[3]), n = std::atoll(argv[4]);
  std::vector<float> out(n);
  drop.fill(first, n, 1.0f, out.data());
  for (float v : out) std::putchar(v != 0.0f ? '1' : '0');
}
"""


def _host_supports_avx2() -> bool:
    try:
        return " avx2" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


@pytest.mark.skipif(shutil.which("g++") is None or platform.machine() not in ("x86_64", "AMD64"),
                    reason="needs g++ on x86-64")
@pytest.mark.parametrize("isa", ["generic", "avx2"])
def test_cpu_fill_equals_reference_stream(tmp_path, isa):
    """csrc/cpu/philox_fill.h's two implementations (AVX2 intrinsics, and the portable vector one other
    CPUs build) against the reference stream, over runs that start and end mid-counter."""
    if isa == "avx2" and not _host_supports_avx2():
        pytest.skip("this CPU has no AVX2")
    src, exe = tmp_path / "fill.cpp", tmp_path / "fill"
    src.write_text(FILL_PROGRAM)
    flags = ["-mavx2"] if isa == "avx2" else ["-mno-avx2"]
    includes = [f"-I{ROOT / 'csrc' / 'include'}", f"-I{ROOT / 'csrc' / 'cpu'}"]
    build = subprocess.run(["g++", "-std=c++17", "-O2", *flags, *includes, str(src), "-o", str(exe)],
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    for seed, p, first, n in [(0, 0.5, 0, 1000), (2**63 + 12345, 0.1, 3, 517), (-7, 0.3, 4097, 130)]:
        signed_seed = seed - 2**64 if seed >= 2**63 else seed
        got = subprocess.run([str(exe), str(p), str(signed_seed), str(first), str(n)],
                             capture_output=True, text=True, check=True).stdout
        bits = philox.dropout_bits(seed, first + n)[first:]
        assert got == "".join("1" if b >= philox.threshold(p) else "0" for b in bits.tolist())
