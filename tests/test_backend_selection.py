"""Backend selection: defaults by device, PETAL_BACKEND, use_backend, and a built extension."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import petal_kernels as pk
from petal_kernels import _backend


def test_compiled_cpu_backend_is_built():
    """The package install must build petal_kernels._C; CI would otherwise test only the reference."""
    if os.environ.get("PETAL_SKIP_EXT") == "1":
        pytest.skip("PETAL_SKIP_EXT=1: the extension was deliberately not built")
    assert "cpu" in pk.available_backends("cpu"), _backend._load_errors.get("cpu")
    with pk.use_backend(None):
        assert pk.backend_name(torch.device("cpu")) in ("cpu", os.environ.get("PETAL_BACKEND"))


def test_env_var_forces_backend(monkeypatch):
    monkeypatch.setenv("PETAL_BACKEND", "reference")
    assert pk.backend_name(torch.device("cpu")) == "reference"
    monkeypatch.setenv("PETAL_BACKEND", "bogus")
    with pytest.raises(ValueError, match="PETAL_BACKEND must be one of"):
        pk.backend_name(torch.device("cpu"))


def test_unavailable_backend_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("PETAL_BACKEND", "cuda")
    x = torch.randn(3, 4)
    with pytest.raises(RuntimeError, match=r"backend 'cuda' cannot run tensors on device cpu"):
        pk.gated_residual(x, x, x, "middleY", gate_vector=torch.zeros(4))


def test_use_backend_restores():
    with pk.use_backend("reference"):
        assert pk.backend_name(torch.device("cpu")) == "reference"
    with pytest.raises(ValueError, match="backend must be one of"):
        with pk.use_backend("gpu"):
            pass


def _run_without_this_torchs_build(ext_dir, body: str, backend: str | None = None):
    """Runs ``body`` in a fresh process whose extension directory is ``ext_dir``."""
    code = ("import sys, warnings, torch, petal_kernels as pk\n"
            "from pathlib import Path\n"
            f"pk._extension.EXT_DIR = Path({str(ext_dir)!r})\n" + body)
    env = {k: v for k, v in os.environ.items() if k != "PETAL_BACKEND"}
    if backend:
        env["PETAL_BACKEND"] = backend
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)


def test_imports_and_warns_when_no_extension_is_built(tmp_path):
    """Built with PETAL_SKIP_EXT=1: petal_kernels imports, warns once, and runs the reference."""
    out = _run_without_this_torchs_build(tmp_path, (
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    x = torch.randn(2, 3)\n"
        "    for _ in range(3):\n"
        "        y = pk.gated_residual(x, x, x, 'middleY', gate_vector=torch.zeros(3))\n"
        "    assert torch.allclose(y, 3 * x), y\n"
        "    msgs = [str(m.message) for m in w if 'not built' in str(m.message)]\n"
        "    assert len(msgs) == 1, msgs\n"
        "    assert pk.extension_info() is None\n"
        "print('ok')\n"))
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr


def test_a_build_for_another_torch_is_an_error_not_a_slow_path(tmp_path):
    """The extension built for another torch (a second venv, torch upgraded after the install): the first
    op call raises, naming the torch that runs and the command that rebuilds; the reference runs only
    when asked for."""
    other = tmp_path / "torch2_99_0_cpu"
    other.mkdir()
    (other / "_C.cpython-311-x86_64-linux-gnu.so").write_bytes(b"")
    call = "x = torch.randn(2, 3)\ny = pk.gated_residual(x, x, x, 'middleY', gate_vector=torch.zeros(3))\n"
    out = _run_without_this_torchs_build(tmp_path, call)
    assert out.returncode != 0
    assert "Mismatch" in out.stderr and "torch2_99_0_cpu" in out.stderr and torch.__version__ in out.stderr
    assert "pip install --no-build-isolation -e" in out.stderr and "PETAL_BACKEND=reference" in out.stderr
    out = _run_without_this_torchs_build(tmp_path, call + "print('ok')\n", backend="reference")
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr


@pytest.mark.parametrize("available, expected", [
    ({"triton", "cuda"}, "triton"), ({"cuda"}, "cuda"), (set(), "reference"),
])
def test_cuda_tensors_default_to_triton(monkeypatch, available, expected):
    """Issue 3: on a CUDA machine the Triton kernels run CUDA tensors, the CUDA C++ ones when Triton
    is missing, the reference when neither is there (simulated: no GPU here)."""
    monkeypatch.setattr(_backend, "_supports", lambda name, device: name in available)
    assert _backend._default(torch.device("cuda")) == expected
