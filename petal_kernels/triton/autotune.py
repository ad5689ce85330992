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


# GEMM with the fused rank-R epilogue (forward y, backward dx): tiles (BM, BN) of the output, BK along
# the reduction. The epilogue holds a (BM, BR) and a (BR, BN) tile on top, so the widest tiles keep 3 stages.
GEMM_CONFIGS = [
    _cfg(8, 3, BM=128, BN=256, BK=64, GROUP_M=8),
    _cfg(8, 3, BM=256, BN=128, BK=64, GROUP_M=8),
    _cfg(8, 4, BM=128, BN=128, BK=64, GROUP_M=8),
    _cfg(4, 4, BM=128, BN=64, BK=64, GROUP_M=8),
    _cfg(4, 4, BM=64, BN=128, BK=64, GROUP_M=8),
    _cfg(4, 5, BM=64, BN=64, BK=64, GROUP_M=8),
    _cfg(4, 4, BM=128, BN=128, BK=32, GROUP_M=8),
]

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

# Row-parallel gated residual: BLOCK_M rows of the full (power-of-two padded) width per step.
ROW_CONFIGS = [
    _cfg(4, 1, BLOCK_M=1),
    _cfg(4, 1, BLOCK_M=2),
    _cfg(8, 1, BLOCK_M=4),
    _cfg(8, 1, BLOCK_M=8),
    _cfg(16, 1, BLOCK_M=16),
]

# Up-projection GEMM fused with the gated residual: (BM, BN) tiles of u over a short reduction (the
# adapter width, ~100-200). BN is set by the wrapper (the whole row for middleX, FUSED_UP_BN otherwise).
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
    SKINNY_CONFIGS = [_cfg(4, 1, BM=32, BK=32)]
    DZ_CONFIGS = [_cfg(4, 1, BK=32)]
    ROW_REDUCTION_CONFIGS = [_cfg(4, 1, BP=32, BQ=32, BM=16)]
    ROW_CONFIGS = [_cfg(4, 1, BLOCK_M=4)]
    FUSED_UP_CONFIGS = [_cfg(4, 1, BM=16, BK=32)]
    FUSED_UP_BN = 32

ROW_TILE_MAX_ELEMS = 16384  # BLOCK_M * BLOCK_D above this would spill registers


def prune_row_configs(configs, named_args, **kwargs):
    """Drop row tiles too wide for the registers at this width; always keep at least one."""
    block_d = kwargs.get("BLOCK_D", named_args.get("BLOCK_D"))
    kept = [c for c in configs if c.kwargs["BLOCK_M"] * block_d <= ROW_TILE_MAX_ELEMS]
    return kept or [min(configs, key=lambda c: c.kwargs["BLOCK_M"])]


def prune_fused_up_configs(configs, named_args, **kwargs):
    """Fused up-projection tiles: BM x BN within the register budget; always keep the smallest BM."""
    bn = kwargs.get("BN", named_args.get("BN"))
    kept = [c for c in configs if c.kwargs["BM"] * bn <= ROW_TILE_MAX_ELEMS]
    return kept or [min(configs, key=lambda c: c.kwargs["BM"])]


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
