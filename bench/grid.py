"""The cases of ``pytest bench/``: one ``Param`` per op, device, dtype, shape, mode and implementation.

Grid (CPU): every implementation in every mode at the headline shapes (Q-Former self- and
cross-attention width at 2048 rows), plus a sweep over the whole shape grid of issue #5 (K in {768,
1408}, R in {16, 64, 128}, rows in {512, 2048, 8192}, the LLM width d=4096; for ``gated_residual``
d in {768, 4096} at 512/2048/8192 rows) with the floor, petal and the baselines it is compared with,
forward+backward only; together within 10 minutes on 2 CPU cores. ``--bench-scale full`` or
``PETAL_BENCH_FULL=1`` runs every implementation and mode at every shape. CUDA cases exist for every
op and are skipped where CUDA is absent.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Sequence

import pytest
import torch

from petal_kernels import GRANULARITIES

FULL_ENV = "PETAL_BENCH_FULL"
MODES = ("forward", "backward", "full")
QFORMER_D = 768
LLM_D = 4096
DMA_IMPLS = ("floor", "petal", "petal_p0.1", "reference", "compile", "lora", "lora_p0.1", "official")
GATED_IMPLS = ("floor", "petal", "unfused", "compile")
# the shape sweep of the default grid: the comparisons of issue #5, forward+backward only
SWEEP_IMPLS = {"dma_linear": ("floor", "petal", "lora", "official"),
               "dma_linear_multi": ("floor", "petal", "lora", "official"),
               "gated_residual": ("floor", "petal", "unfused")}
SWEEP_MODES = ("full",)
FLOOR_FREE_DIMS = ("g", "p")  # gated_residual's granularity and dropout: one floor serves them all
VLPET_DROPOUT = 0.1
CUDA_DTYPE = "bfloat16"
TOKENS_PER_EXAMPLE = 256  # (B, T, d) layout of the gated_residual cases: rows = B * T


def bench_scale(config) -> str:
    """'default' or 'full' (``--bench-scale``, or ``PETAL_BENCH_FULL=1``)."""
    chosen = config.getoption("--bench-scale", default=None)
    if chosen:
        return chosen
    return "full" if os.environ.get(FULL_ENV, "") not in ("", "0") else "default"


@dataclasses.dataclass(frozen=True)
class Param:
    """One benchmark case: op, device, dtype, named shape dims, mode and implementation."""

    op: str
    device: str
    dtype: str
    dims: tuple[tuple[str, Any], ...]
    mode: str
    impl: str
    sweep: bool = False  # part of the default grid's shape sweep (fewer rounds)

    @property
    def shape(self) -> dict[str, Any]:
        return dict(self.dims)

    def floor_key(self) -> tuple:
        """The floor's case: the frozen layers do not depend on the adapter's gate or dropout."""
        dims = tuple((k, v) for k, v in self.dims if k not in FLOOR_FREE_DIMS)
        return (self.op, self.device, self.dtype, dims, self.mode)

    def setup_key(self) -> tuple:
        return (self.op, self.device, self.dtype, self.dims, self.impl)

    @property
    def group(self) -> str:
        dims = " ".join(f"{k}={v}" for k, v in self.dims)
        return f"{self.op} {self.device} {self.dtype} {dims} {self.mode}"

    def __str__(self) -> str:
        return "-".join([self.device, self.dtype, *(f"{k}{v}" for k, v in self.dims), self.mode, self.impl])


def _dtype_for(device: str) -> str:
    return "float32" if device == "cpu" else CUDA_DTYPE


def dma_shapes(scale: str, device: str, multi: bool) -> list[dict[str, Any]]:
    """Q-Former shapes (N=768, K in {768, 1408}) and an LLM shape (N=K=4096).

    ``dma_linear_multi`` adapts the projections that read one input: q, k, v (J=3) of the
    self-attention when K=N, k and v (J=2) of the cross-attention over 1408-wide image features.
    """
    if scale in ("full", "sweep"):
        qformer = [(rows, k, r) for k in (768, 1408) for r in (16, 64, 128) for rows in (512, 2048, 8192)]
        llm_rows = (512,) if device == "cpu" else (512, 2048, 8192)
    elif device == "cpu":
        qformer = [(2048, 768, 64), (2048, 1408, 64)] if multi else [(2048, 768, 64)]
        llm_rows = ()
    else:  # issue #3's GPU group
        qformer = [(rows, k, 64) for k in (768, 1408) for rows in (2048, 8192)]
        llm_rows = (2048, 8192)
    shapes = [dict(M=rows, K=k, N=QFORMER_D, R=r) for rows, k, r in qformer]
    shapes += [dict(M=rows, K=LLM_D, N=LLM_D, R=64) for rows in llm_rows]
    if multi:
        for s in shapes:
            s["J"] = 3 if s["K"] == s["N"] else 2
    return shapes


def gated_shapes(scale: str, device: str) -> list[dict[str, Any]]:
    if scale == "full":
        dims = [(rows, d) for d in (QFORMER_D, LLM_D) for rows in (512, 2048, 8192)]
    elif scale == "sweep":  # the Q-Former width at every row count, the LLM width once
        dims = [(512, QFORMER_D), (2048, QFORMER_D), (8192, QFORMER_D), (2048, LLM_D)]
    else:
        dims = [(2048, QFORMER_D)] if device == "cpu" else [(8192, QFORMER_D), (8192, LLM_D)]
    # p=0.1 is training as VL-PET runs it (both forms pay the same mask generation);
    # p=0 isolates the epilogue itself
    return [dict(B=rows // TOKENS_PER_EXAMPLE, T=TOKENS_PER_EXAMPLE, d=d, g=g, p=p)
            for rows, d in dims for g in GRANULARITIES for p in (0.0, VLPET_DROPOUT)]


def block_shapes(scale: str, device: str) -> list[dict[str, Any]]:
    """VL-PET-large on a FlanT5-XL-wide (d=2048) sublayer."""
    rows = (512, 2048, 8192) if scale == "full" or device != "cpu" else (2048,)
    return [dict(B=r // TOKENS_PER_EXAMPLE, T=TOKENS_PER_EXAMPLE, d=2048) for r in rows]


def _grid(op: str, shapes_for: Callable[[str, str], list], impls: Sequence[str], scale: str) -> list:
    """Params ordered so that, for each shape and mode, the floor runs before the others. The default
    CPU grid adds the shape sweep (the shapes of the full grid not among the headline ones)."""
    params = []
    for device in ("cpu", "cuda"):
        marks = [] if device == "cpu" else [
            pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available here")]
        cases = [(shape, impls, MODES, False) for shape in shapes_for(scale, device)]
        if scale == "default" and device == "cpu" and op in SWEEP_IMPLS:
            headline = [c[0] for c in cases]
            cases += [(shape, SWEEP_IMPLS[op], SWEEP_MODES, True) for shape in shapes_for("sweep", device)
                      if shape not in headline]
        floors = set()
        for shape, case_impls, modes, sweep in cases:
            for impl in case_impls:
                for mode in modes:
                    p = Param(op, device, _dtype_for(device), tuple(shape.items()), mode, impl, sweep)
                    if impl == "floor":
                        if p.floor_key() in floors:
                            continue
                        floors.add(p.floor_key())
                    params.append(pytest.param(p, marks=marks, id=str(p)))
    return params


GRIDS = {
    "dma_linear_param": lambda s: _grid("dma_linear", lambda sc, d: dma_shapes(sc, d, False), DMA_IMPLS, s),
    "dma_linear_multi_param": lambda s: _grid(
        "dma_linear_multi", lambda sc, d: dma_shapes(sc, d, True), DMA_IMPLS, s),
    "gated_residual_param": lambda s: _grid("gated_residual", gated_shapes, GATED_IMPLS, s),
    "vlpet_block_param": lambda s: _grid("vlpet_block", block_shapes, GATED_IMPLS, s),
}


