"""The CPU kernels are built once per x86-64 vector ISA and the widest one the host runs is imported
(petal_kernels/_build_spec.py, _extension.py): forcing a narrower capability at import, as a machine
without AVX-512 or AVX2 would report it, runs that ISA's kernels with the same results."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import petal_kernels as pk
from petal_kernels import _build_spec as spec
from tests.helpers import CPU_BACKENDS, rel_err

needs_cpu = pytest.mark.skipif("cpu" not in CPU_BACKENDS, reason="needs the compiled extension")
ROOT = Path(__file__).resolve().parents[1]

# Runs in a fresh process (ATen reads ATEN_CPU_CAPABILITY once): every op forward+backward on fixed inputs.
_PROBE = """
import sys, torch, petal_kernels as pk
g = torch.Generator().manual_seed(0)
def r(*s): return torch.randn(*s, generator=g).requires_grad_()
out = {"info": pk.extension_info()}
x, h, u = r(2, 37, 24), r(2, 37, 24), r(2, 37, 24)
gates = {"large": {"gate_logits": r(2, 37, 24)}, "middleX": {"gate_weight": r(24), "gate_bias": r(1)},
         "middleY": {"gate_vector": r(24)}, "small": {"gate_weight": r(48), "gate_bias": r(1)}}
for name, gate in gates.items():
    for dtype in (torch.float32, torch.bfloat16):
        args = [t.to(dtype) for t in (x, h, u)]
        y = pk.gated_residual(*args, name, 0.7, 0.3, **{k: v.to(dtype) for k, v in gate.items()},
                              dropout_p=0.2, dropout_seed=11)
        leaves = [x, h, u, *gate.values()]
        out[f"{name}-{dtype}"] = [y.float(), *torch.autograd.grad(y.float().square().sum(), leaves)]
xs, down = r(45, 40), r(8, 40)
ws = [torch.randn(33, 40, generator=g) for _ in range(3)]
ups, scales = [r(33, 8) for _ in range(3)], [r(8) for _ in range(3)]
ys = pk.dma_linear_multi(xs, ws, [None] * 3, down, ups, scales, gammas=[r(33) for _ in range(3)])
out["dma"] = [*ys, *torch.autograd.grad(sum(y.square().sum() for y in ys), [xs, down, *ups, *scales])]
torch.save(out, sys.argv[1])
"""


def _probe(capability: str, path: Path) -> dict:
    env = {**os.environ, "ATEN_CPU_CAPABILITY": capability, "PYTHONPATH": str(ROOT)}
    env.pop("PETAL_BACKEND", None)
    done = subprocess.run([sys.executable, "-c", _PROBE, str(path)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return torch.load(path)


@needs_cpu
def test_a_forced_narrower_capability_runs_that_isas_kernels_with_the_same_results(tmp_path):
    host = torch.backends.cpu.get_cpu_capability()
    isas = spec.runnable_isas(host)
    assert pk.extension_info()["cpu_isa"] == isas[0]
    results = {isa: _probe(isa, tmp_path / f"{isa}.pt") for isa in isas}
    widest = results[isas[0]]
    for isa, got in results.items():
        assert got["info"]["cpu_isa"] == isa
        assert got["info"]["host_capability"].lower() == isa
        for key, tensors in widest.items():
            if key == "info":
                continue
            bound = 1e-2 if "bfloat16" in key else 2e-6  # ISAs differ in FMA contraction and the sigmoid
            for i, (a, b) in enumerate(zip(got[key], tensors, strict=True)):
                assert rel_err(a, b) <= bound, f"{isa} {key} tensor {i}: {rel_err(a, b):.3g}"


def _vector_registers(module: str) -> set[str]:
    path = next(Path(pk.extension_info()["directory"]).glob(f"{module}.*"))
    asm = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(path)], capture_output=True,
                         text=True, check=True).stdout
    return set(re.findall(r"%([xyz]mm)\d+", asm))


@needs_cpu
@pytest.mark.skipif(shutil.which("objdump") is None or sys.platform != "linux", reason="needs objdump")
@pytest.mark.skipif(len(spec.cpu_isas()) == 1, reason="one ISA is built on this kind of machine")
def test_each_module_uses_no_wider_registers_than_its_isa():
    """What keeps a wheel built on an AVX-512 host from dying with SIGILL on an older one: the core module
    and the default kernels are baseline x86-64 code, the AVX2 kernels never touch a 512-bit register."""
    assert _vector_registers("_C") <= {"xmm"}
    assert _vector_registers("_cpu_default") <= {"xmm"}
    assert _vector_registers("_cpu_avx2") <= {"xmm", "ymm"}
    assert "ymm" in _vector_registers("_cpu_avx2")


def test_the_isas_a_capability_runs():
    assert spec.runnable_isas("AVX512") == ("avx512", "avx2", "default")
    assert spec.runnable_isas("AVX2") == ("avx2", "default")
    assert spec.runnable_isas("DEFAULT") == ("default",)
    assert spec.runnable_isas("SVE256") == ("default",)
    assert list(spec.cpu_isas("x86_64", "linux")) == ["default", "avx2", "avx512"]
    assert list(spec.cpu_isas("aarch64", "linux")) == ["default"]
    assert "-mavx2" not in spec.cpu_isas("aarch64", "linux")["default"]
