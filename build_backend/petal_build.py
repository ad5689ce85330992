"""The PEP 517 build backend of petal: setuptools', plus one build requirement, the torch of the
environment being installed into (``torch==<its version>``), so that an isolated build (plain ``pip install
.`` or ``pip install -e .``) compiles the extension against the torch that will run it, not the newest one
pip finds. Without a torch there (a fresh environment), pip installs the newest allowed torch both as the
build requirement and as the dependency. ``--no-build-isolation`` builds against the environment's torch
directly and never calls these hooks.

pip runs the hooks with the target interpreter but hides its site-packages from ``sys.path``;
``sysconfig`` still names them, and the torch installed there is read from its metadata.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
import sysconfig

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F401,F403  (every hook not defined below)

FALLBACK = "torch>=2.4"  # as pyproject.toml's dependency


def target_torch(paths=None) -> str | None:
    """The version of the torch installed in the target environment's site-packages, if any."""
    if paths is None:
        paths = sorted({sysconfig.get_paths()[k] for k in ("purelib", "platlib")})
    for dist in importlib.metadata.distributions(path=list(paths)):
        if (dist.metadata["Name"] or "").lower() == "torch":
            return dist.version
    return None


def torch_requirement() -> str:
    version = target_torch()
    requirement = f"torch=={version}" if version else FALLBACK
    print(f"petal: building the extension against {requirement} (the torch of {sys.prefix}); if pip "
          "cannot find that build, install with --no-build-isolation", file=sys.stderr)
    return requirement


def _metadata_only(hook, config_settings):
    """setuptools runs setup.py to collect requirements; torch is not installed yet then."""
    os.environ["PETAL_METADATA_ONLY"] = "1"
    try:
        return hook(config_settings)
    finally:
        del os.environ["PETAL_METADATA_ONLY"]


def get_requires_for_build_wheel(config_settings=None):
    return [*_metadata_only(_setuptools.get_requires_for_build_wheel, config_settings), torch_requirement()]


def get_requires_for_build_editable(config_settings=None):
    return [*_metadata_only(_setuptools.get_requires_for_build_editable, config_settings),
            torch_requirement()]


def get_requires_for_build_sdist(config_settings=None):
    return _metadata_only(_setuptools.get_requires_for_build_sdist, config_settings)
