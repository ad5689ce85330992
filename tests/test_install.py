"""The install routes build the extension for the torch that runs it (build_backend/petal_build.py): the
isolated build environment of ``pip install .`` / ``pip install -e .`` gets ``torch==<the target's torch>``.
The whole routes (isolated ``pip install`` and ``pip install -e`` into venvs whose torch is not the newest pip
finds; each builds the extension: 17 min here) run as ``bash tests/install_routes.sh``; these are the fast
parts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "build_backend"))
import petal_build  # noqa: E402


def _fake_site(tmp_path: Path, version: str | None) -> Path:
    site = tmp_path / "site-packages"
    site.mkdir()
    for name, v in (("numpy", "2.0.0"), ("torch", version)):
        if v:
            info = site / f"{name}-{v}.dist-info"
            info.mkdir()
            (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {v}\n")
    return site


def test_the_target_environments_torch_is_found(tmp_path):
    assert petal_build.target_torch([_fake_site(tmp_path, "2.13.0+cpu")]) == "2.13.0+cpu"


def test_no_torch_in_the_target_leaves_the_newest_allowed(tmp_path, monkeypatch):
    site = _fake_site(tmp_path, None)
    assert petal_build.target_torch([site]) is None
    monkeypatch.setattr(petal_build, "target_torch", lambda paths=None: None)
    assert petal_build.torch_requirement() == petal_build.FALLBACK


def test_the_build_requirements_pin_the_running_torch():
    """The hook as pip calls it (in a subprocess, from the source tree): setuptools' requirements plus
    the torch of this environment, without importing torch in setup.py (not installed yet at that step)."""
    code = ("import sys; sys.modules['torch'] = None; sys.path.insert(0, 'build_backend'); "
            "import petal_build; "
            "print(petal_build.get_requires_for_build_wheel()); "
            "print(petal_build.get_requires_for_build_editable())")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lists = [line for line in done.stdout.splitlines() if line.startswith("[")]  # setuptools prints too
    assert len(lists) == 2, done.stdout
    for line in lists:
        assert f"'torch=={torch.__version__}'" in line, line
    assert "building the extension against torch==" in done.stderr
