"""The Triton kernels under the interpreter: tile-edge masks, projection slots, every granularity, dtypes.

The cross-backend suites (test_dma_linear.py, test_gated_residual.py) run the public ops; these tests
call the backend's canonical functions directly with shapes chosen around the interpreter's tiles
(32x32x32 GEMM tiles, R chunks of up to 64, 4-row gated-residual tiles) and compare every output and
gradient with float64 math on the same (rounded) inputs, by DESIGN §2.3's bounds.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from petal_kernels import GRANULARITIES
from petal_kernels import reference as ref

triton_backend = pytest.importorskip("petal_kernels.triton")
import triton  # noqa: E402 - after the importorskip
import triton.language as tl  # noqa: E402

from petal_kernels.triton.numerics import cast  # noqa: E402

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
    reason="the Triton kernels need a GPU or TRITON_INTERPRET=1",
)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
HALF = (torch.float16, torch.bfloat16)


def rel_err(out, truth) -> float:
    out, truth = out.detach().double().cpu(), truth.detach().double().cpu()
    assert out.shape == truth.shape, f"shape {tuple(out.shape)} != {tuple(truth.shape)}"
    den = truth.norm().item()
    num = (out - truth).norm().item()
    return num / den if den > 0 else num


def check(name, out, truth, bound):
    err = rel_err(out, truth)
    assert err == err, f"{name}: NaN"
    assert err <= bound, f"{name}: relative error {err:.3g} > bound {bound:.3g}"


def bounds_for(dtype, results_ref_backend, truth):
    """DESIGN §2.3: fp32 (tf32 dots) 5e-4; half types 2x the reference backend's own error, at least
    one rounding (eps) of the result."""
    if dtype == torch.float32:
        return dict.fromkeys(truth, 5e-4)
    eps = torch.finfo(dtype).eps
    return {k: max(2 * rel_err(results_ref_backend[k], truth[k]), eps) for k in truth}


def assert_matches(dtype, ours, ref_backend, truth):
    assert ours.keys() == truth.keys()
    bounds = bounds_for(dtype, ref_backend, truth)
    for k in truth:
        assert ours[k].dtype == dtype, f"{k}: dtype {ours[k].dtype}"
        check(k, ours[k], truth[k], bounds[k])


def rand(gen, *shape, dtype, scale=1.0):
    return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype).to(DEVICE)


def to64(v):
    if isinstance(v, torch.Tensor):
        return v.double()
    if isinstance(v, (list, tuple)):
        return type(v)(to64(e) for e in v)
    return v


# --------------------------------------------------------------------------- dma_linear


def dma_inputs(M, K, Ns, R, dtype, scale_rows, gamma, bias, seed=0):
    gen = torch.Generator().manual_seed(seed)
    J = len(Ns)
    return dict(
        x=rand(gen, M, K, dtype=dtype),
        weights=[rand(gen, n, K, dtype=dtype, scale=K ** -0.5) for n in Ns],
        biases=[rand(gen, n, dtype=dtype) if bias[j % len(bias)] else None for j, n in enumerate(Ns)],
        down=rand(gen, R, K, dtype=dtype, scale=K ** -0.5),
        ups=[rand(gen, n, R, dtype=dtype, scale=R ** -0.5) for n in Ns],
        scales=[rand(gen, *((M, R) if scale_rows[j % len(scale_rows)] else (R,)), dtype=dtype)
                for j in range(J)],
        gammas=[rand(gen, n, dtype=dtype) if gamma else None for n in Ns],
        dys=[rand(gen, M, n, dtype=dtype) for n in Ns],
    )


def dma_run(backend, inp, needs=(True,) * 5):
    """Forward and backward of one backend; a flat dict of every tensor it returns."""
    fwd = {k: inp[k] for k in ("x", "weights", "biases", "down", "ups", "scales", "gammas")}
    ys, t, bases = backend.dma_linear_forward(**fwd)
    bases_in = [b if g is not None else None for b, g in zip(bases, inp["gammas"])]
    dx, d_down, d_ups, d_scales, d_gammas = backend.dma_linear_backward(
        inp["dys"], inp["x"], inp["weights"], inp["down"], inp["ups"], inp["scales"], inp["gammas"],
        t, bases_in, needs)
    out = {"t": t, "dx": dx, "d_down": d_down}
    for j, y in enumerate(ys):
        out.update({f"y{j}": y, f"base{j}": bases[j], f"d_up{j}": d_ups[j], f"d_scale{j}": d_scales[j],
                    f"d_gamma{j}": d_gammas[j]})
    return out


def dma_compare(inp, needs=(True,) * 5):
    dtype = inp["x"].dtype
    ours = dma_run(triton_backend, inp, needs)
    truth = dma_run(ref, {k: to64(v) for k, v in inp.items()}, needs)
    for k, v in truth.items():  # the same outputs are None / empty
        assert (ours[k] is None) == (v is None), f"{k}: None mismatch"
        if v is not None:
            assert (ours[k].numel() == 0) == (v.numel() == 0), f"{k}: empty mismatch"
    keep = [k for k, v in truth.items() if v is not None and v.numel()]
    base = dma_run(ref, inp, needs) if dtype in HALF else {}
    assert_matches(dtype, {k: ours[k] for k in keep}, base, {k: truth[k] for k in keep})


# (M, K, Ns, R): around the interpreter's 32-wide tiles, R chunks of 64, odd everything
DMA_EDGES = {
    "one-row": (1, 33, [31], 7),
    "below-tiles": (31, 31, [31], 15),
    "above-tiles": (33, 33, [33], 17),
    "two-k-tiles": (20, 65, [47], 16),
    "r-two-chunks": (9, 20, [30], 70),
    "rank-1": (6, 18, [21], 1),
}


@pytest.mark.parametrize("case", list(DMA_EDGES))
def test_dma_tile_edges_fp32(case):
    M, K, Ns, R = DMA_EDGES[case]
    dma_compare(dma_inputs(M, K, Ns, R, torch.float32, scale_rows=[False], gamma=True, bias=[True]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("gamma", [False, True], ids=["no-gamma", "gamma"])
def test_dma_three_projections(dtype, gamma):
    """q, k, v in one launch: different N each (one crossing a tile edge), per-row and broadcast scale,
    one projection without bias."""
    inp = dma_inputs(35, 40, [33, 16, 47], 19, dtype, scale_rows=[False, True, False], gamma=gamma,
                     bias=[True, False, True], seed=1)
    dma_compare(inp)


def test_dma_more_projections_than_slots():
    """J = 4 runs as two launches of up to three projections; dx and dt sum across them."""
    inp = dma_inputs(10, 24, [9, 17, 12, 20], 6, torch.float32, scale_rows=[True, False], gamma=True,
                     bias=[True], seed=2)
    dma_compare(inp)


def test_dma_mixed_gamma():
    """gamma on some projections only: base is written and returned only where gamma is given."""
    inp = dma_inputs(12, 20, [18, 11], 5, torch.float32, scale_rows=[False], gamma=True, bias=[False])
    inp["gammas"][1] = None
    dma_compare(inp)


@pytest.mark.parametrize("needs", [(True, False, False, False, False), (False, True, False, True, False),
                                   (False, False, True, False, True), (False, False, False, True, False)],
                         ids=["x", "down+scale", "up+gamma", "scale"])
def test_dma_backward_respects_needs(needs):
    inp = dma_inputs(13, 22, [17, 9], 6, torch.float32, scale_rows=[True, False], gamma=True, bias=[True])
    dma_compare(inp, needs)
    out = dma_run(triton_backend, inp, needs)
    assert (out["dx"] is None) != needs[0]
    assert (out["d_down"] is None) != needs[1]
    assert (out["d_up0"] is None) != needs[2]
    assert (out["d_scale1"] is None) != needs[3]
    assert (out["d_gamma0"] is None) != needs[4]


def test_dma_backward_is_deterministic():
    """Row reductions use split partials and a fixed-order second stage: bitwise repeatable."""
    inp = dma_inputs(70, 16, [20], 9, torch.float32, scale_rows=[False], gamma=True, bias=[True])
    a, b = dma_run(triton_backend, inp), dma_run(triton_backend, inp)
    for k in a:
        if a[k] is not None:
            assert torch.equal(a[k], b[k]), k


def test_dma_float64_runs_reference_math():
    inp = dma_inputs(5, 9, [7], 3, torch.float64, scale_rows=[False], gamma=False, bias=[True])
    ours, truth = dma_run(triton_backend, inp), dma_run(ref, inp)
    for k, v in truth.items():
        if v is not None:
            assert torch.equal(ours[k], v), k


# --------------------------------------------------------------------------- gated_residual


def gr_inputs(B, T, d, granularity, dtype, mask, seed=0):
    gen = torch.Generator().manual_seed(seed)
    M = B * T
    inp = dict(x=rand(gen, M, d, dtype=dtype), h=rand(gen, M, d, dtype=dtype), u=rand(gen, M, d, dtype=dtype),
               granularity=granularity, adapter_scale=0.7, gate_scale=1.3, gate_logits=None,
               gate_weight=None, gate_bias=None, gate_vector=None, dropout_mask=None,
               dropout_p=0.0, dropout_seed=0, batch=B if granularity == "small" else 0)
    if granularity == "large":
        inp["gate_logits"] = rand(gen, M, d, dtype=dtype)
    elif granularity == "middleX":
        inp["gate_weight"] = rand(gen, d, dtype=dtype, scale=d ** -0.5)
        inp["gate_bias"] = rand(gen, 1, dtype=dtype)
    elif granularity == "middleY":
        inp["gate_vector"] = rand(gen, d, dtype=dtype)
    else:
        inp["gate_weight"] = rand(gen, 2 * d, dtype=dtype, scale=(2 * d) ** -0.5)
        inp["gate_bias"] = rand(gen, 1, dtype=dtype)
    if mask == "philox":  # dropout made in the kernel
        inp["dropout_p"], inp["dropout_seed"] = 0.25, 2 ** 40 + seed
    elif mask:
        keep = torch.rand(M, d, generator=gen) > 0.25
        inp["dropout_mask"] = (keep.double() / 0.75).to(dtype).to(DEVICE)
    inp["dout"] = rand(gen, M, d, dtype=dtype)
    return inp


def gr_run(backend, inp):
    args = {k: v for k, v in inp.items() if k != "dout"}
    out, stat = backend.gated_residual_forward(**args)
    grads = backend.gated_residual_backward(inp["dout"], **args, stat=stat)
    names = ("dx", "dh", "du", "d_logits", "d_weight", "d_bias", "d_vector")
    res = {"out": out, "stat": stat, **dict(zip(names, grads))}
    return res


def gr_compare(inp):
    dtype = inp["x"].dtype
    ours = gr_run(triton_backend, inp)
    truth = gr_run(ref, {k: to64(v) for k, v in inp.items()})
    if inp["granularity"] in ("large", "middleY"):  # dx = dout: not written, the op layer hands dout through
        assert ours["dx"] is None
        truth["dx"] = None
    for k, v in truth.items():
        assert (ours[k] is None) == (v is None), f"{k}: None mismatch"
    keep = [k for k, v in truth.items() if v is not None and v.numel()]
    base = gr_run(ref, inp) if dtype in HALF else {}
    if dtype in HALF and "stat" in keep:
        # the pre-sigmoid scores are rounded once to the dtype; the reference rounds them the same way
        check("stat", ours["stat"], truth["stat"], 2 * torch.finfo(dtype).eps)
        keep.remove("stat")
    assert_matches(dtype, {k: ours[k] for k in keep}, base, {k: truth[k] for k in keep})


# (B, T, d): widths at / just above a power of two, rows not a multiple of the 4-row tile, one row
GR_SHAPES = {"one-row": (1, 1, 16), "pow2-width": (2, 5, 32), "odd": (3, 7, 33)}


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("shape", list(GR_SHAPES))
def test_gated_residual_shapes_fp32(granularity, shape):
    gr_compare(gr_inputs(*GR_SHAPES[shape], granularity, torch.float32, mask=shape != "pow2-width"))


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_gated_residual_in_kernel_dropout(granularity):
    gr_compare(gr_inputs(3, 7, 33, granularity, torch.float32, mask="philox", seed=2))


def test_gated_residual_skips_du_when_it_is_dh():
    inp = gr_inputs(2, 3, 16, "middleX", torch.float32, mask=False)
    inp["adapter_scale"] = 1.0
    res = gr_run(triton_backend, inp)
    assert res["du"] is None and res["dx"] is not None


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_gated_residual_half(granularity, dtype):
    gr_compare(gr_inputs(2, 9, 40, granularity, dtype, mask=True, seed=3))


def test_small_gate_long_examples():
    """More rows per example than one BLOCK_T chunk of the per-example mean (128) and than the
    programs x tile rows, so the mean loops and programs stride over their example."""
    gr_compare(gr_inputs(1, 131, 8, "small", torch.float32, mask=False, seed=4))


def test_gated_residual_backward_is_deterministic():
    inp = gr_inputs(3, 11, 24, "middleX", torch.float32, mask=True)
    a, b = gr_run(triton_backend, inp), gr_run(triton_backend, inp)
    for k in a:
        if a[k] is not None:
            assert torch.equal(a[k], b[k]), k


# --------------------------------------------------------------------------- fused up-projection


def up_inputs(B, T, d, Da, granularity, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    inp = gr_inputs(B, T, d, granularity, dtype, mask=True, seed=seed)
    shaped = {k: inp[k].reshape(B, T, d) for k in ("x", "h", "gate_logits", "dropout_mask")
              if inp[k] is not None}
    gates = {k: inp[k] for k in ("gate_weight", "gate_bias", "gate_vector") if inp[k] is not None}
    return dict(shaped, **gates, a=rand(gen, B, T, Da, dtype=dtype), up_weight=rand(gen, d, Da, dtype=dtype,
                scale=Da ** -0.5), up_bias=rand(gen, d, dtype=dtype), granularity=granularity,
                adapter_scale=0.7, gate_scale=1.3)


def unfused(inp, dtype):
    """The unfused math in ``dtype``: u by a matmul (stored in dtype), then the reference gate."""
    c = {k: (v.to(dtype) if isinstance(v, torch.Tensor) else v) for k, v in inp.items()}
    u = torch.nn.functional.linear(c.pop("a"), c.pop("up_weight"), c.pop("up_bias"))
    return ref.gated_residual(c.pop("x"), c.pop("h"), u, **c)


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_gated_residual_up_matches_unfused(granularity, dtype):
    """18 rows (one full and one partial 16-row tile; for small, tiles span both examples), d = 45
    (two 32-wide column tiles, swept twice by middleX and small), adapter width 40 (two K steps)."""
    inp = up_inputs(2, 9, 45, 40, granularity, dtype)
    out = triton_backend.gated_residual_up(**inp)
    truth = unfused(inp, torch.float64)
    assert out.dtype == dtype and out.shape == inp["x"].shape
    bound = 5e-4 if dtype == torch.float32 else max(2 * rel_err(unfused(inp, dtype), truth),
                                                    torch.finfo(dtype).eps)
    check("out", out, truth, bound)


def test_gated_residual_up_rejects_bad_input():
    inp = up_inputs(1, 3, 8, 4, "large", torch.float32)
    with pytest.raises(ValueError, match="up_weight"):
        triton_backend.gated_residual_up(**dict(inp, up_weight=inp["up_weight"][:, :3]))
    with pytest.raises(RuntimeError, match="forward only"):
        triton_backend.gated_residual_up(**dict(inp, a=inp["a"].clone().requires_grad_(True)))


# --------------------------------------------------------------------------- numerics and configs


@triton.jit
def _cast_kernel(src, dst, n, EMU: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    v = tl.load(src + offs, mask=offs < n)
    tl.store(dst + offs, cast(v, dst.dtype.element_ty, EMU), mask=offs < n)


@pytest.mark.skipif(DEVICE == "cuda", reason="checks the interpreter work-around")
def test_bf16_downcast_rounds_to_nearest_even():
    src = torch.randn(1000, generator=torch.Generator().manual_seed(0)) * 100
    src[:4] = torch.tensor([1.0 + 2 ** -8, 1.0 + 3 * 2 ** -8, -(1.0 + 2 ** -8), 0.0])  # ties to even
    dst = torch.empty(1000, dtype=torch.bfloat16)
    _cast_kernel[(1,)](src, dst, 1000, EMU=True, BLOCK=1024)
    assert torch.equal(dst, src.to(torch.bfloat16))


def test_autotune_lists():
    from petal_kernels.triton import autotune as at

    lists = (at.GEMM_CONFIGS, at.FWD_CONFIGS, at.SKINNY_CONFIGS, at.DZ_CONFIGS, at.ROW_REDUCTION_CONFIGS,
             at.ROW_CONFIGS, at.FUSED_UP_CONFIGS)
    if at.INTERPRET:
        assert all(len(c) == 1 for c in lists), "one config per kernel under the interpreter"
    for configs in lists:
        for c in configs:
            for k in ("BM", "BN", "BK", "BP", "BQ"):
                if k in c.kwargs:  # tl.dot needs >= 16 along every dim
                    assert c.kwargs[k] >= 16 and c.kwargs[k] & (c.kwargs[k] - 1) == 0, c
    rows = [triton.Config({"BLOCK_M": m}, num_warps=w) for m, w in ((1, 4), (4, 4), (1, 16))]
    assert [(c.kwargs["BLOCK_M"], c.num_warps) for c in at.prune_row_configs(rows, {}, BLOCK_D=1024)] \
        == [(1, 4), (1, 16)]  # 4 x 1024 over 4 warps: 32 elements per thread
    assert [(c.kwargs["BLOCK_M"], c.num_warps) for c in at.prune_row_configs(rows, {}, BLOCK_D=65536)] \
        == [(1, 16)]  # nothing fits: the fewest elements per thread
    assert [at.rank_block(r) for r in (1, 16, 17, 64, 200)] == [16, 16, 32, 64, 64]


@pytest.mark.skipif(DEVICE == "cuda", reason="a GPU runs the kernels for real")
def test_fused_forward_compiles_for_h100():
    """The forward GEMM with its fused epilogue lowers to sm_90 cubin (no GPU needed); the full
    matrix is ``python -m petal_kernels.triton.compile_check``."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    proc = subprocess.run(
        [sys.executable, "-m", "petal_kernels.triton.compile_check", "--quick", "--only", "dma_fwd"],
        env=env, capture_output=True, text=True, timeout=300,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "compiled 1 kernel variants" in proc.stdout, proc.stdout
