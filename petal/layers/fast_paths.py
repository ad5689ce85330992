"""Where the CPU fast paths of the frozen Q-Former run (``PetalConfig.fast_paths``).

They were measured faster on the CPU only: on a GPU, SDPA / flash attention fuse what
:mod:`~petal.layers.attention_core` materialises, and native dropout draws a bool mask where
:mod:`~petal.layers.fast_dropout` draws 32 bits per element. So ``"auto"`` runs them for CPU tensors
and leaves everything else to ``transformers``. The choice is made per call from the input's device
(an attribute read), so a model moved with ``.to("cuda")`` after ``patch`` follows its new device.
"""

from __future__ import annotations

from typing import Union

from torch import Tensor

FastPaths = Union[str, bool]


def enabled(mode: FastPaths, x: Tensor) -> bool:
    """Whether the fast paths run for input ``x`` under ``mode``: ``True`` always, ``False`` never,
    ``"auto"`` for CPU tensors."""
    if mode is True:
        return True
    return mode == "auto" and x.device.type == "cpu"


__all__ = ["FastPaths", "enabled"]
