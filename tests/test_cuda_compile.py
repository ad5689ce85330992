"""The CUDA sources build here, without a GPU: every csrc/cuda/*.cu compiles with nvcc for sm_80 and
sm_90 (flags as setup.py's CUDA build), no kernel spills registers, and the ptxas resource report is
printed (``pytest -s``) and attached to the test (``record_property``). csrc/cuda/bindings_cuda.cpp
parses against the installed torch headers, and with a CUDA build of torch it compiles to an object that
registers the CUDA kernels. The shared element math of csrc/include/petal also compiles as plain host
C++ and agrees with the reference formulas.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest
import torch

from petal_kernels import reference as ref

ROOT = Path(__file__).resolve().parents[1]
CUDA_SOURCES = sorted((ROOT / "csrc" / "cuda").glob("*.cu"))
ARCHS = ("80", "90")
# torch.utils.cpp_extension.COMMON_NVCC_FLAGS: what a CUDAExtension build adds to every .cu.
TORCH_NVCC_FLAGS = ["-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
                    "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__",
                    "--expt-relaxed-constexpr"]


def find_nvcc() -> str | None:
    candidates = [shutil.which("nvcc")]
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home:
            candidates.append(str(Path(home) / "bin" / "nvcc"))
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


NVCC = find_nvcc()
needs_nvcc = pytest.mark.skipif(
    NVCC is None, reason="nvcc not found (PATH, $CUDA_HOME/bin, /usr/local/cuda/bin)")


def cuda_include() -> Path | None:
    if NVCC is None:
        return None
    for inc in (Path(NVCC).resolve().parents[1] / "include", Path("/usr/local/cuda/include")):
        if (inc / "cuda_runtime_api.h").exists():
            return inc
    return None


def ptxas_report(log: str) -> list[dict]:
    """One row per (kernel, arch) from ``-Xptxas -v`` output."""
    rows = []
    pattern = re.compile(
        r"Compiling entry function '(?P<name>\S+)' for '(?P<arch>sm_\d+)'.*?"
        r"(?P<stores>\d+) bytes spill stores, (?P<loads>\d+) bytes spill loads.*?"
        r"Used (?P<regs>\d+) registers(?P<rest>[^\n]*)", re.S)
    for m in pattern.finditer(log):
        smem = re.search(r"(\d+) bytes smem", m["rest"])
        rows.append({"kernel": _demangle(m["name"]), "arch": m["arch"], "registers": int(m["regs"]),
                     "spill_stores": int(m["stores"]), "spill_loads": int(m["loads"]),
                     "smem": int(smem.group(1)) if smem else 0})
    return rows


def _demangle(name: str) -> str:
    cxxfilt = shutil.which("c++filt")
    if cxxfilt:
        name = subprocess.run([cxxfilt, name], capture_output=True, text=True).stdout.strip() or name
    name = re.sub(r"petal::cuda::(\(anonymous namespace\)::|detail::)", "", name)
    name = re.sub(r"AccOf<[^>]*>::type", "acc", name)
    return _strip_parameters(name)  # the template name and arguments say which kernel it is


def _strip_parameters(name: str) -> str:
    """``void k<float, (Mode)1>(Params<float>, ...)`` -> ``void k<float, (Mode)1>``."""
    if not name.endswith(")"):
        return name
    depth = 0
    for i in range(len(name) - 1, -1, -1):
        depth += {")": 1, "(": -1}.get(name[i], 0)
        if depth == 0:
            return name[:i]
    return name


def format_report(rows: list[dict]) -> str:
    width = max(len(r["kernel"]) for r in rows)
    lines = [f"{'kernel':<{width}}  arch   regs  spill(st/ld)  smem"]
    for r in sorted(rows, key=lambda r: (r["kernel"], r["arch"])):
        lines.append(f"{r['kernel']:<{width}}  {r['arch']}  {r['registers']:>4}  "
                     f"{r['spill_stores']:>5}/{r['spill_loads']:<6}  {r['smem']:>4}")
    return "\n".join(lines)


@needs_nvcc
@pytest.mark.parametrize("source", CUDA_SOURCES, ids=lambda p: p.name)
def test_cu_compiles_for_sm80_sm90_without_spills(source, tmp_path, record_property):
    gencode = [f for a in ARCHS for f in ("-gencode", f"arch=compute_{a},code=sm_{a}")]
    cmd = [NVCC, "-c", "-O3", "-std=c++17", *TORCH_NVCC_FLAGS, "-I", str(ROOT / "csrc" / "include"),
           *gencode, "-Xptxas", "-v", str(source), "-o", str(tmp_path / (source.stem + ".o"))]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"nvcc failed on {source.name}:\n{log[-6000:]}"
    rows = ptxas_report(log)
    archs = {r["arch"] for r in rows}
    assert archs == {f"sm_{a}" for a in ARCHS}, f"no ptxas report for some arch:\n{log[-3000:]}"
    report = format_report(rows)
    print(f"\n{source.name}: {len(rows)} kernel builds\n{report}")
    record_property(f"ptxas_{source.stem}", report)
    spilling = [r for r in rows if r["spill_stores"] or r["spill_loads"]]
    assert not spilling, "kernels spill registers:\n" + format_report(spilling)
    warnings = [line for line in log.splitlines() if "warning" in line.lower()]
    assert not warnings, "nvcc warnings:\n" + "\n".join(warnings)


# What torch.utils.cpp_extension passes to a .cpp when the extension names no standard (setup.py names
# none): torch 2.14's headers need C++20.
TORCH_CXX_STD = "-std=c++20"
BINDINGS_CUDA = ROOT / "csrc" / "cuda" / "bindings_cuda.cpp"
CUDA_TORCH_HEADER = "c10/cuda/impl/cuda_cmake_macros.h"  # generated by a CUDA build of torch only


def _torch_includes() -> list[str]:
    from torch.utils.cpp_extension import include_paths

    return [f"-I{p}" for p in include_paths()] + [f"-I{sysconfig.get_paths()['include']}"]


def _cuda_torch_headers() -> bool:
    from torch.utils.cpp_extension import include_paths

    return torch.version.cuda is not None and any((Path(p) / CUDA_TORCH_HEADER).exists()
                                                  for p in include_paths())


@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ not found")
@pytest.mark.skipif(cuda_include() is None, reason="CUDA toolkit headers (cuda_runtime_api.h) not found")
@pytest.mark.skipif(_cuda_torch_headers(),
                    reason="a CUDA build of torch: test_cuda_bindings_compile_with_cuda_torch checks this")
def test_cuda_bindings_parse_against_torch_headers(tmp_path):
    """bindings_cuda.cpp is built only in a CUDA build; here its syntax and its use of the ATen/c10
    API are checked against the installed torch headers. A CPU wheel lacks the one generated header
    c10/cuda/impl/cuda_cmake_macros.h; an empty stand-in takes its place for this check only."""
    stub = tmp_path / CUDA_TORCH_HEADER
    stub.parent.mkdir(parents=True)
    stub.write_text("#pragma once\n")
    cmd = ["g++", TORCH_CXX_STD, "-fsyntax-only", "-w", f"-I{tmp_path}", *_torch_includes(),
           f"-I{cuda_include()}", f"-I{ROOT / 'csrc' / 'include'}", str(BINDINGS_CUDA)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-6000:]


@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ not found")
@pytest.mark.skipif(shutil.which("nm") is None, reason="nm not found")
@pytest.mark.skipif(cuda_include() is None, reason="CUDA toolkit headers (cuda_runtime_api.h) not found")
@pytest.mark.skipif(not _cuda_torch_headers(),
                    reason=f"torch {torch.__version__} is not a CUDA build (no {CUDA_TORCH_HEADER}); "
                           "test_cuda_bindings_parse_against_torch_headers checks a stand-in instead")
def test_cuda_bindings_compile_with_cuda_torch(tmp_path):
    """What setup.py's CUDA build compiles (defines as torch.utils.cpp_extension's, -O0 for speed), against
    the real c10/cuda headers of a CUDA build of torch: an object file with no warning from petal's own
    sources, whose static initialiser registers the kernels for the CUDA dispatch key."""
    obj = tmp_path / "bindings_cuda.o"
    cmd = ["g++", TORCH_CXX_STD, "-c", "-O0", "-fPIC", "-Wall", "-DPETAL_WITH_CUDA=1",
           "-DTORCH_API_INCLUDE_EXTENSION_H", "-DTORCH_EXTENSION_NAME=_C", *_torch_includes(),
           f"-I{cuda_include()}", f"-I{ROOT / 'csrc' / 'include'}", str(BINDINGS_CUDA), "-o", str(obj)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-6000:]
    own = [line for line in proc.stderr.splitlines() if "warning:" in line and str(ROOT / "csrc") in line]
    assert not own, "warnings in petal's sources:\n" + "\n".join(own)
    symbols = subprocess.run(["nm", str(obj)], capture_output=True, text=True, check=True).stdout
    assert "TORCH_LIBRARY_IMPL_init_petal_C_CUDA" in symbols, "no TORCH_LIBRARY_IMPL(petal_C, CUDA, m) block"


HOST_PROGRAM = r"""
#include <cstdio>
#include "petal/dma_linear.h"
#include "petal/gated_residual.h"
int main() {
  const double xs[] = {-1.5, 0.25, 2.0}, hs[] = {0.5, -0.75, 1.25}, us[] = {1.0, 0.5, -2.0};
  const double ls[] = {-0.3, 1.7, 0.0}, ms[] = {1.25, 0.0, 1.25}, ws[] = {0.4, -1.1, 0.9};
  const double as = 0.7, gs = 0.3;
  for (int i = 0; i < 3; ++i) {
    const double x = xs[i], h2 = petal::adapter_sum(hs[i], us[i], as), g = petal::gate_large(ls[i]);
    const double e = petal::upstream(1.5, gs, ms[i]);
    std::printf("%.17g %.17g %.17g %.17g %.17g %.17g %.17g\n", h2, petal::gated_out(x, h2, g, gs, ms[i]),
                petal::gate_h2_grad(e, g), petal::large_logit_grad(e, h2, g),
                petal::middle_x_score_term(x, h2, ws[i]), petal::row_score_grad(e * h2, g),
                petal::dma_output(x, ws[i], ls[i], hs[i]));
  }
}
"""


@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ not found")
def test_shared_header_math_on_host_matches_reference(tmp_path):
    src = tmp_path / "math.cpp"
    src.write_text(HOST_PROGRAM)
    exe = tmp_path / "math"
    include = f"-I{ROOT / 'csrc' / 'include'}"
    build = subprocess.run(["g++", "-std=c++17", "-O1", include, str(src), "-o", str(exe)],
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    printed = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    got = torch.tensor([[float(v) for v in line.split()] for line in printed.splitlines()],
                       dtype=torch.float64)

    x = torch.tensor([-1.5, 0.25, 2.0], dtype=torch.float64)
    h = torch.tensor([0.5, -0.75, 1.25], dtype=torch.float64)
    u = torch.tensor([1.0, 0.5, -2.0], dtype=torch.float64)
    logits = torch.tensor([-0.3, 1.7, 0.0], dtype=torch.float64)
    mask = torch.tensor([1.25, 0.0, 1.25], dtype=torch.float64)
    w = torch.tensor([0.4, -1.1, 0.9], dtype=torch.float64)
    h2 = h + 0.7 * u
    logits.requires_grad_(True)
    h.requires_grad_(True)
    out = ref.gated_residual(x, h, u, "large", 0.7, 0.3, gate_logits=logits, dropout_mask=mask)
    d_logits, dh = torch.autograd.grad(out, [logits, h], torch.full_like(out, 1.5))
    g = torch.sigmoid(logits.detach())
    e = 1.5 * 0.3 * mask
    expected = torch.stack([h2.detach(), out.detach(), dh, d_logits, (x + h2.detach()) * w,
                            e * h2.detach() * g * (1 - g), w * x + logits.detach() + h.detach()], dim=1)
    torch.testing.assert_close(got, expected, rtol=1e-14, atol=1e-14)
