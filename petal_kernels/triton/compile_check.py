"""Compile every kernel for real GPU targets (sm_80, sm_90) on a machine without a GPU.

The interpreter checks the math; this checks that the Triton compiler accepts the kernels and lowers
them to cubin for A100 and H100, for each dtype, launch config and constexpr variant the wrappers use.
Run without ``TRITON_INTERPRET`` (the interpreter replaces ``triton.jit`` kernels)::

    python -m petal_kernels.triton.compile_check [--quick]
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys

if os.environ.get("TRITON_INTERPRET") == "1":
    sys.exit("compile_check: unset TRITON_INTERPRET (the interpreter replaces the kernels)")

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402

from . import dma_linear as dl  # noqa: E402
from . import fused_up as gru  # noqa: E402
from . import gated_residual as gr  # noqa: E402

TARGETS = {"sm_80": GPUTarget("cuda", 80, 32), "sm_90": GPUTarget("cuda", 90, 32)}
DTYPES = ("fp16", "bf16", "fp32")
INTS = {"M", "K", "R", "N0", "N1", "N2", "ss0", "ss1", "ss2", "M_BUCKET", "N_TOTAL", "T", "D", "P", "Q",
        "ss", "rows_per_split", "KA"}
FLOATS = {"adapter_scale", "gate_scale", "keep_value"}
INT64S = {"seed", "threshold"}  # the dropout stream's key and threshold (up to 2**32 - 1)
PIPELINED = {"rank_proj", "dma_fwd", "dma_dz", "dma_dx", "row_reduce", "gr_up"}  # GEMM K-loops


def _attrs(fn, sig: dict) -> dict:
    """What a launch with aligned tensors and 16-divisible sizes specialises: tt.divisibility=16 on
    pointers and integers (except do_not_specialize), as for Q-Former/T5/LLM shapes (768, 1408, 4096)."""
    skip = {fn.arg_names[a] if isinstance(a, int) else a for a in fn.do_not_specialize}
    return {(i,): [["tt.divisibility", 16]] for i, (name, ty) in enumerate(sig.items())
            if ty != "constexpr" and ty != "fp32" and name not in skip}


def _pipelined(compiled) -> bool:
    """The K-loop loads go through shared memory asynchronously (cp.async / TMA): software pipelining."""
    return "async_copy_global_to_local" in compiled.asm["ttgir"] or "async_tma_copy" in compiled.asm["ttgir"]


def _signature(fn, dtype: str, fp32_ptrs: set, constexprs: dict) -> dict:
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in INT64S:
            sig[name] = "i64"
        elif name in INTS or name.startswith("stride"):
            sig[name] = "i32"
        elif name in FLOATS:
            sig[name] = "fp32"
        else:
            sig[name] = "*fp32" if name in fp32_ptrs else f"*{dtype}"
    return sig


def _variants(quick: bool):
    """(name, autotuned kernel, fp32 pointer names, constexpr variants) for every kernel."""
    yield "rank_proj", dl._rank_proj_kernel, set(), [dict(BR=64, EMU_BF16=False)]
    yield "dma_fwd", dl._dma_fwd_kernel, set(), [
        dict(HAS_BIAS=b, HAS_GAMMA=g, EMU_BF16=False, BR=64) for b, g in itertools.product((0, 1), (0, 1))
    ][-1 if quick else 0:]
    yield "dma_dz", dl._dma_dz_kernel, {"ds1", "dt_ptr"}, [
        dict(J=3, NEED_DT=True, NEED_SCALE=True, SCALE_ROWS=0b101, EMU_BF16=False, BM=64, BR=64),
        dict(J=1, NEED_DT=False, NEED_SCALE=True, SCALE_ROWS=1, EMU_BF16=False, BM=128, BR=32),
    ]
    yield "dma_dx", dl._dma_dx_kernel, {"dt_ptr"}, [
        dict(J=3, HAS_GAMMA=g, HAS_DT=True, EMU_BF16=False) for g in (0, 1)
    ]
    yield "row_reduce", dl._row_reduce_kernel, {"c_ptr", "gp_ptr"}, [
        dict(NEED_C=True, HAS_SCALE=True, HAS_GAMMA=True, EMU_BF16=False),
        dict(NEED_C=True, HAS_SCALE=False, HAS_GAMMA=False, EMU_BF16=False),
    ]
    # training: in-kernel dropout (one variant with a caller's mask); backward: dx only for the row
    # gates, du only when adapter_scale != 1
    row = dict(HAS_MASK=False, HAS_DROP=True, EMU_BF16=False, BLOCK_D=1024, BLOCK_T=gr.BLOCK_T)
    masked = dict(row, HAS_MASK=True, HAS_DROP=False)
    fwd = [dict(GRAN=gr.LARGE, PHASE=gr.ONE_PASS), dict(GRAN=gr.MIDDLE_X, PHASE=gr.ONE_PASS),
           dict(GRAN=gr.MIDDLE_Y, PHASE=gr.ONE_PASS), dict(GRAN=gr.SMALL, PHASE=gr.STAT),
           dict(GRAN=gr.SMALL, PHASE=gr.APPLY)]
    yield "gr_fwd_small", gr._gr_fwd_kernel, {"stat_ptr"}, [dict(v, **row) for v in fwd[3:]]
    yield "gr_fwd", gr._gr_fwd_kernel, set(), [dict(v, **row) for v in fwd[:3]] + [dict(fwd[0], **masked)]
    bwd = [dict(GRAN=gr.LARGE, PHASE=gr.ONE_PASS), dict(GRAN=gr.MIDDLE_X, PHASE=gr.ONE_PASS),
           dict(GRAN=gr.MIDDLE_Y, PHASE=gr.ONE_PASS), dict(GRAN=gr.SMALL, PHASE=gr.ROWDOT),
           dict(GRAN=gr.SMALL, PHASE=gr.MAIN)]
    yield "gr_bwd", gr._gr_bwd_kernel, {"q_ptr", "pw_ptr", "pb_ptr", "pv_ptr"}, [
        dict(v, **row, WRITE_DX=v["GRAN"] in (gr.MIDDLE_X, gr.SMALL), WRITE_DU=False) for v in bwd
    ] + [dict(bwd[1], **masked, WRITE_DX=True, WRITE_DU=True)]
    up = dict(HAS_UP_BIAS=True, HAS_MASK=True, EMU_BF16=False, BN=128)
    yield "gr_up", gru._gr_up_kernel, {"g_ptr", "stat_ptr"}, [
        dict(up, GRAN=gr.LARGE, PHASE=gru.ONE_PASS), dict(up, GRAN=gr.MIDDLE_Y, PHASE=gru.ONE_PASS),
        dict(up, GRAN=gr.MIDDLE_X, PHASE=gru.ONE_PASS), dict(up, GRAN=gr.SMALL, PHASE=gru.STAT),
        dict(up, GRAN=gr.SMALL, PHASE=gru.APPLY),
    ]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="first config, bf16 and sm_90 only")
    parser.add_argument("--only", default="", help="kernels whose name starts with this")
    args = parser.parse_args(argv)
    targets = {"sm_90": TARGETS["sm_90"]} if args.quick else TARGETS
    dtypes = ("bf16",) if args.quick else DTYPES
    count = 0
    for name, tuned, fp32_ptrs, variants in _variants(args.quick):
        if not name.startswith(args.only):
            continue
        configs = tuned.configs[:1] if args.quick else tuned.configs
        # every variant in every dtype with the first config, every config with the first variant
        jobs = [(v, configs[0], d) for v in variants for d in dtypes]
        jobs += [(variants[0], c, dtypes[0]) for c in configs[1:]]
        for (variant, config, dtype), (tname, target) in itertools.product(jobs, targets.items()):
            constexprs = {**config.kwargs, **variant}
            sig = _signature(tuned.fn, dtype, fp32_ptrs, constexprs)
            src = triton.compiler.ASTSource(fn=tuned.fn, signature=sig, constexprs=constexprs,
                                            attrs=_attrs(tuned.fn, sig))
            options = {"num_warps": config.num_warps, "num_stages": config.num_stages}
            try:
                compiled = triton.compile(src, target=target, options=options)
            except Exception as e:
                print(f"FAIL {name} {tname} {dtype} {constexprs}: {type(e).__name__}: {e}")
                return 1
            assert compiled.asm.get("cubin"), f"{name}: no cubin"
            if name in PIPELINED and config.num_stages > 1 and not _pipelined(compiled):
                print(f"FAIL {name} {tname} {dtype} {constexprs}: the K-loop is not software-pipelined")
                return 1
            count += 1
    print(f"compiled {count} kernel variants to cubin for {', '.join(targets)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
