"""Launch configurations for the Triton kernels: A100/H100 lists, one small config under the interpreter.

Autotuning under ``TRITON_INTERPRET=1`` would run every config through the (slow) interpreter, so
there each list collapses to one small config; with one config ``triton.autotune`` does not benchmark.
The GPU lists follow the shapes of the ops: GEMM tiles for the frozen projection (N, K in the
hundreds to thousands), skinny tiles for the rank-R side (R ~ 64), and row tiles for the
element-wise gated residual. They were chosen from the tile shapes that do well for bf16/fp16 GEMMs
on sm_80/sm_90 (128x128/128x256 tiles, 3-4 stages, 4-8 warps); they have not been timed on a GPU here.
"""

from __future__ import annotations

import functools
import os

import torch
import triton

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def _cfg(num_warps=4, num_stages=3, **meta) -> triton.Config:
    return triton.Config(meta, num_warps=num_warps, num_stages=num_stages)


# dx = [g dy | dt] @ [W; down]: plain GEMM tiles (BM, BN) of the output, BK along the reduction.
GEMM_CONFIGS = [
    _cfg(8, 3, BM=128, BN=256, BK=64, GROUP_M=8),
    _cfg(8, 3, BM=256, BN=128, BK=64, GROUP_M=8),
    _cfg(8, 4, BM=128, BN=128, BK=64, GROUP_M=8),
    _cfg(4, 4, BM=128, BN=64, BK=64, GROUP_M=8),
    _cfg(4, 4, BM=64, BN=128, BK=64, GROUP_M=8),
    _cfg(4, 5, BM=64, BN=64, BK=64, GROUP_M=8),
    _cfg(4, 4, BM=128, BN=128, BK=32, GROUP_M=8),
]

# The forward GEMM with the fused rank-R epilogue holds a (BM, BR) and a (BR, BN) tile on top of the
# accumulator: ptxas (sm_90, bf16) spills 0.7-1 KB per thread at 128x256 / 256x128, none at 128x128.
FWD_CONFIGS = [c for c in GEMM_CONFIGS if c.kwargs["BM"] * c.kwargs["BN"] <= 128 * 128]

# Skinny GEMMs with R-wide outputs (t = x @ down.T, dz = dy @ up): tiles (BM, BR), long reduction.
SKINNY_CONFIGS = [
    _cfg(4, 4, BM=128, BK=64),
    _cfg(8, 3, BM=128, BK=128),
    _cfg(4, 4, BM=64, BK=128),
    _cfg(4, 5, BM=64, BK=64),
    _cfg(8, 3, BM=256, BK=64),
]

# dz = dy @ up with the dt / d_scale epilogue: BM is fixed by the wrapper (the d_scale partials have
# cdiv(M, BM) rows, which must not depend on the config the autotuner picks).
DZ_CONFIGS = [
    _cfg(4, 4, BK=64),
    _cfg(4, 3, BK=128),
    _cfg(8, 3, BK=128),
    _cfg(4, 5, BK=32),
]

# Reductions over rows (d_up = dyᵀ z, d_down = dtᵀ x): output tiles (BP, BQ), rows in chunks of BM,
# split across programs by the wrapper.
ROW_REDUCTION_CONFIGS = [
    _cfg(4, 4, BP=64, BQ=64, BM=64),
    _cfg(8, 3, BP=128, BQ=64, BM=64),
    _cfg(4, 3, BP=64, BQ=128, BM=64),
    _cfg(8, 4, BP=128, BQ=128, BM=32),
]

# Row-parallel gated residual: BLOCK_M rows of the full (power-of-two padded) width per step. The
# backward keeps ~8 such tiles live, so prune_row_configs keeps <= ROW_ELEMS_PER_THREAD per thread.
ROW_CONFIGS = [
    _cfg(4, 1, BLOCK_M=1),
    _cfg(4, 1, BLOCK_M=2),
    _cfg(8, 1, BLOCK_M=4),
    _cfg(8, 1, BLOCK_M=1),
    _cfg(16, 1, BLOCK_M=1),
    _cfg(16, 1, BLOCK_M=2),
    _cfg(16, 1, BLOCK_M=8),
]

# Up-projection GEMM fused with the gated residual: (BM, BN) tiles of u over a short reduction (the
# adapter width, ~100-200); BN = FUSED_UP_BN (or the padded width when narrower).
FUSED_UP_CONFIGS = [
    _cfg(4, 3, BM=64, BK=64),
    _cfg(8, 3, BM=128, BK=64),
    _cfg(4, 4, BM=32, BK=64),
    _cfg(8, 2, BM=16, BK=64),
    _cfg(4, 3, BM=64, BK=32),
]
FUSED_UP_BN = 128

if INTERPRET:
    GEMM_CONFIGS = [_cfg(4, 1, BM=32, BN=32, BK=32, GROUP_M=2)]
    FWD_CONFIGS = GEMM_CONFIGS
    SKINNY_CONFIGS = [_cfg(4, 1, BM=32, BK=32)]
    DZ_CONFIGS = [_cfg(4, 1, BK=32)]
    ROW_REDUCTION_CONFIGS = [_cfg(4, 1, BP=32, BQ=32, BM=16)]
    ROW_CONFIGS = [_cfg(4, 1, BLOCK_M=4)]
    FUSED_UP_CONFIGS = [_cfg(4, 1, BM=16, BK=32)]
    FUSED_UP_BN = 32

ROW_ELEMS_PER_THREAD = 16


def _row_elems_per_thread(config, block_d: int) -> float:
    return config.kwargs["BLOCK_M"] * block_d / (32 * config.num_warps)


def prune_row_configs(configs, named_args, **kwargs):
    """Drop row tiles that would spill at this width; keep at least the one with the fewest elements
    per thread (ptxas, sm_90: the small-gate backward spills at 4 x 4096 over 4 warps, 32/thread)."""
    block_d = kwargs.get("BLOCK_D", named_args.get("BLOCK_D"))
    kept = [c for c in configs if _row_elems_per_thread(c, block_d) <= ROW_ELEMS_PER_THREAD]
    return kept or [min(configs, key=lambda c: _row_elems_per_thread(c, block_d))]


def rank_block(R: int) -> int:
    """The R-chunk of the fused epilogues: a power of two in [16, 64] (tl.dot needs >= 16)."""
    return min(64, max(16, triton.next_power_of_2(R)))


def bucket(n: int) -> int:
    """Autotune key for the row count, which changes every call: its power-of-two bucket."""
    return triton.next_power_of_2(max(int(n), 1))


@functools.cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def target_programs(device: torch.device) -> int:
    """How many programs fill the device: a few per SM on a GPU, a handful under the interpreter."""
    if device.type != "cuda":
        return 4
    return 4 * _sm_count(device.index if device.index is not None else torch.cuda.current_device())
