"""The csrc/cuda kernels, run on the CPU by a host emulation of the CUDA execution model
(tests/cuda_emu/emu.h: blocks in turn, a block's threads as std::threads with a barrier for
__syncthreads and an exchange buffer for warp shuffles), checked against the float64 reference.

This runs the kernels' real source (indexing, vector/scalar paths, block reductions, per-example
passes, partial sums and their second pass, workspace layout) without a GPU, and
csrc/cuda/bindings_cuda.cpp itself (its cuBLAS calls become ATen CPU GEMMs) as a test library
``torch.ops.petal_C_emu`` (tests/cuda_emu/bindings_emu.cpp). What it cannot check:
timing, occupancy, memory coalescing, and races the emulated interleaving does not provoke; those
need tests/test_cuda_backend.py on a GPU.
"""

from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from petal_kernels import reference as ref
from tests.test_cuda_compile import cuda_include

ROOT = Path(__file__).resolve().parents[1]
EMU = ROOT / "tests" / "cuda_emu"
DTYPE_CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 3}
GRAN_CODE = {"large": 0, "middleX": 1, "middleY": 2, "small": 3}
CUDA_ERROR_NOT_SUPPORTED = 801
EMULATED_SMS = 2  # few blocks: backward blocks then own several rows each
# capi.cpp's stand-ins for cudaGetLastError & co. must win over a real libcudart that a CUDA build of
# torch has already loaded into the process with global symbols (which then answers "no driver").
LINK_SHARED = ["g++", "-shared", "-Wl,-Bsymbolic"]
LAUNCH = re.compile(r"^(\s*)(.+?)<<<(.+?)>>>\(", re.M)

pytestmark = [
    pytest.mark.skipif(shutil.which("g++") is None, reason="g++ not found"),
    pytest.mark.skipif(cuda_include() is None, reason="CUDA toolkit headers not found"),
]


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    """The emulated kernels and the C entry points, compiled once: (directory, object files)."""
    out = tmp_path_factory.mktemp("cuda_emu")
    flags = ["g++", "-std=c++20", "-O1", "-fPIC", "-c", "-w", "-include", str(EMU / "emu.h"),
             f"-I{cuda_include()}", f"-I{ROOT / 'csrc' / 'include'}", f"-I{ROOT / 'csrc' / 'cuda'}"]
    jobs, objects = [], []
    for source in [*sorted((ROOT / "csrc" / "cuda").glob("*.cu")), EMU / "capi.cpp"]:
        text = source.read_text()
        if source.suffix == ".cu":  # k<<<grid, block, smem, stream>>>(args) -> emu::launch(k, ...)(args)
            text = LAUNCH.sub(r"\1emu::launch(\2, \3)(", text)
        cpp = out / f"{source.stem}_{source.suffix[1:]}.cpp"
        cpp.write_text(text)
        objects.append(out / f"{cpp.stem}.o")
        jobs.append(subprocess.Popen([*flags, str(cpp), "-o", str(objects[-1])], stderr=subprocess.PIPE,
                                     text=True))
    for job in jobs:
        _, err = job.communicate()
        assert job.returncode == 0, err[-6000:]
    return out, objects


@pytest.fixture(scope="module")
def lib(build):
    out, objects = build
    so = out / "libpetal_cuda_emu.so"
    subprocess.run([*LINK_SHARED, "-o", str(so), *map(str, objects), "-lpthread"], check=True)
    library = ctypes.CDLL(str(so))
    library.emu_gated_max_d.restype = ctypes.c_longlong
    library.emu_set_sms(EMULATED_SMS)
    return library


@pytest.fixture(scope="module")
def emu_ops(build, lib):
    """csrc/cuda/bindings_cuda.cpp on the emulated kernels, as ``torch.ops.petal_C_emu`` (CPU tensors)."""
    from torch.utils.cpp_extension import include_paths, library_paths

    out, objects = build
    library = (ROOT / "csrc" / "library.cpp").read_text()
    schemas = re.search(r"TORCH_LIBRARY\(petal_C, m\) \{.*?\n\}", library, re.S)
    assert schemas, "csrc/library.cpp has no TORCH_LIBRARY(petal_C, m) block"
    (out / "schemas.inc").write_text(schemas.group(0).replace("petal_C,", "petal_C_emu,", 1))
    abi = f"-D_GLIBCXX_USE_CXX11_ABI={int(torch.compiled_with_cxx11_abi())}"
    obj = out / "bindings_emu.o"
    cmd = ["g++", "-std=c++20", "-O1", "-fPIC", "-c", "-w", abi, f"-I{out}", f"-I{EMU / 'stubs'}",
           *[f"-I{p}" for p in include_paths()], f"-I{cuda_include()}", f"-I{ROOT / 'csrc' / 'include'}",
           f"-I{ROOT / 'csrc' / 'cuda'}", str(EMU / "bindings_emu.cpp"), "-o", str(obj)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-6000:]
    so = out / "libpetal_C_emu.so"
    libdirs = [f for p in library_paths() for f in (f"-L{p}", f"-Wl,-rpath,{p}")]
    subprocess.run([*LINK_SHARED, "-o", str(so), str(obj), *map(str, objects), *libdirs, "-lc10",
                    "-ltorch_cpu", "-ltorch", "-lpthread"], check=True)
    torch.ops.load_library(str(so))
    return torch.ops.petal_C_emu


def ptr(t):
    return ctypes.c_void_p(t.data_ptr() if t is not None else 0)


I64, F64 = ctypes.c_int64, ctypes.c_double


def rel_err(out, truth):
    out, truth = out.double(), truth.double()
    den = truth.norm().item()
    return (out - truth).norm().item() / (den if den > 0 else 1.0)


def bound(dtype, lowp_ref, truth):
    """DESIGN §2.3: float32 1e-5; bf16/fp16 2x the reference backend's own error in that dtype."""
    if dtype == torch.float64:
        return 1e-12
    if dtype == torch.float32:
        return 1e-5
    return max(2 * rel_err(lowp_ref, truth), torch.finfo(dtype).eps)


# --------------------------------------------------------------------------- gated_residual

# (B, T, d, misaligned): d = 64 takes the 16-byte-vector paths; 19 the scalar ones; a misaligned x
# forces the scalar path at a vector-friendly d; T = 150 gives backward blocks several rows each;
# d = 2056 several vectors per thread and a block of hundreds of threads.
GATED_SHAPES = {"vector": (2, 5, 64, False), "scalar": (3, 7, 19, False), "misaligned": (2, 3, 32, True),
                "long": (2, 150, 24, False), "medium": (3, 40, 200, False), "wide": (1, 3, 2056, False)}


def _gated_inputs(granularity, B, T, d, misaligned, dtype, mask, seed):
    g = torch.Generator().manual_seed(seed)
    M = B * T

    def rows():
        if misaligned:  # one element past an aligned allocation
            return torch.randn(M * d + 1, generator=g, dtype=torch.float64).to(dtype)[1:].view(M, d)
        return torch.randn(M, d, generator=g, dtype=torch.float64).to(dtype)

    def vec(n):
        return torch.randn(n, generator=g, dtype=torch.float64).to(dtype)

    gates = {"gate_logits": None, "gate_weight": None, "gate_bias": None, "gate_vector": None}
    if granularity == "large":
        gates["gate_logits"] = rows()
    elif granularity == "middleY":
        gates["gate_vector"] = vec(d)
    else:
        # scaled like an initialised layer: a saturated sigmoid makes d_weight ill-conditioned
        gates["gate_weight"] = vec(2 * d if granularity == "small" else d) / d ** 0.5
        gates["gate_bias"] = vec(1)
    keep = (torch.rand(M, d, generator=g) > 0.25).to(dtype) / 0.75 if mask else None
    return rows(), rows(), rows(), gates, keep, rows()


def _run_gated(lib, granularity, dtype, x, h, u, gates, keep, dout, batch, a_s, g_s):
    M, d = x.shape
    common = [DTYPE_CODE[dtype], GRAN_CODE[granularity], I64(M), I64(d), I64(batch), F64(a_s), F64(g_s),
              ptr(x), ptr(h), ptr(u), *(ptr(gates[k]) for k in gates), ptr(keep)]
    out, stat = torch.empty_like(x), x.new_empty(M)
    assert lib.emu_gated_forward(*common, ptr(out), ptr(stat)) == 0
    grads = [torch.empty(M, d, dtype=dtype) for _ in range(4)]
    grads += [torch.empty_like(gates[k]) if gates[k] is not None else None
              for k in ("gate_weight", "gate_bias", "gate_vector")]
    assert lib.emu_gated_backward(*common, ptr(dout), ptr(stat), *(ptr(t) for t in grads)) == 0
    return out, stat, grads


@pytest.mark.parametrize("dtype", list(DTYPE_CODE), ids=str)
@pytest.mark.parametrize("granularity", list(GRAN_CODE))
@pytest.mark.parametrize("shape", list(GATED_SHAPES))
def test_gated_residual_kernels_match_reference(lib, dtype, granularity, shape):
    B, T, d, misaligned = GATED_SHAPES[shape]
    x, h, u, gates, keep, dout = _gated_inputs(granularity, B, T, d, misaligned, dtype,
                                               mask=shape != "long", seed=len(shape) * 7 + d)
    batch = B if granularity == "small" else 0
    out, stat, grads = _run_gated(lib, granularity, dtype, x, h, u, gates, keep, dout, batch, 0.7, 0.3)

    def reference(dt):
        def c(t):
            return None if t is None else t.to(dt)
        args = (granularity, 0.7, 0.3, *(c(gates[k]) for k in gates), c(keep), 0.0, 0, batch)
        r_out, r_stat = ref.gated_residual_forward(c(x), c(h), c(u), *args)
        r_grads = ref.gated_residual_backward(c(dout), c(x), c(h), c(u), *args, r_stat)
        return r_out, r_stat, r_grads

    t_out, t_stat, t_grads = reference(torch.float64)
    l_out, l_stat, l_grads = reference(dtype)
    assert out.isfinite().all()
    assert rel_err(out, t_out) <= bound(dtype, l_out, t_out), "out"
    if granularity in ("middleX", "small"):
        assert rel_err(stat, t_stat) <= bound(dtype, l_stat, t_stat), "stat"
    names = ("dx", "dh", "du", "d_logits", "d_weight", "d_bias", "d_vector")
    for name, got, truth, lowp in zip(names, grads, t_grads, l_grads):
        if truth is None:
            continue
        assert got is not None, name
        err = rel_err(got, truth)
        assert err == err and err <= bound(dtype, lowp, truth), f"{name}: {err:.3g}"


def test_gated_residual_rejects_rows_wider_than_registers_hold(lib):
    d = 4097  # odd: scalar path, at most 1024 threads x 4 columns
    assert lib.emu_gated_max_d(DTYPE_CODE[torch.float32], I64(d)) == 4096
    assert lib.emu_gated_max_d(DTYPE_CODE[torch.bfloat16], I64(4096)) == 1024 * 2 * 8
    x = torch.randn(2, d)
    v = torch.randn(d)
    out = torch.empty_like(x)
    rc = lib.emu_gated_forward(0, GRAN_CODE["middleY"], I64(2), I64(d), I64(0), F64(1.0), F64(1.0), ptr(x),
                               ptr(x), ptr(x), ptr(None), ptr(None), ptr(None), ptr(v), ptr(None), ptr(out),
                               ptr(None))
    assert rc == CUDA_ERROR_NOT_SUPPORTED


# --------------------------------------------------------------------------- dma_linear element-wise

DMA_DTYPES = [torch.float32, torch.bfloat16, torch.float64]


def _check(got, truth, lowp, dtype):
    err = rel_err(got, truth)
    assert err == err and err <= bound(dtype, lowp, truth), f"{err:.3g}"


@pytest.mark.parametrize("dtype", DMA_DTYPES, ids=str)
@pytest.mark.parametrize("R", [64, 7])
@pytest.mark.parametrize("per_row", [False, True])
def test_dma_scale_kernels(lib, dtype, R, per_row):
    g = torch.Generator().manual_seed(R + per_row)
    M = 37

    def rand(*s):
        return torch.randn(*s, generator=g, dtype=torch.float64).to(dtype)

    t, dz, dt0 = rand(M, R), rand(M, R), rand(M, R)
    scale = rand(M, R) if per_row else rand(R)
    z = torch.empty_like(t)
    code, rows, width = DTYPE_CODE[dtype], I64(M), I64(R)
    assert lib.emu_dma_scale_forward(code, rows, width, ptr(t), ptr(scale), int(per_row), ptr(z)) == 0
    _check(z, t.double() * scale.double(), t * scale, dtype)

    dt, z2 = dt0.clone(), torch.empty_like(t)
    ds = torch.empty(M, R, dtype=dtype) if per_row else None
    assert lib.emu_dma_scale_backward(code, rows, width, ptr(dz), ptr(t), ptr(scale), int(per_row),
                                      ptr(dt), 1, ptr(z2), ptr(ds)) == 0
    _check(dt, dt0.double() + dz.double() * scale.double(), dt0 + dz * scale, dtype)
    assert torch.equal(z2, z)
    if per_row:
        _check(ds, dz.double() * t.double(), dz * t, dtype)
    dt_fresh = torch.full_like(t, float("nan"))  # accumulate=0 must overwrite, not add
    assert lib.emu_dma_scale_backward(code, rows, width, ptr(dz), ptr(t), ptr(scale), int(per_row),
                                      ptr(dt_fresh), 0, ptr(None), ptr(None)) == 0
    _check(dt_fresh, dz.double() * scale.double(), dz * scale, dtype)


@pytest.mark.parametrize("dtype", DMA_DTYPES, ids=str)
@pytest.mark.parametrize("N", [48, 23])
@pytest.mark.parametrize("gamma,bias", [(True, True), (True, False), (False, True)])
def test_dma_epilogue_kernel(lib, dtype, N, gamma, bias):
    g = torch.Generator().manual_seed(N)
    M = 29

    def rand(*s):
        return torch.randn(*s, generator=g, dtype=torch.float64).to(dtype)

    base, upd = rand(M, N), rand(M, N)
    gam, b = (rand(N) if gamma else None), (rand(N) if bias else None)
    y = upd.clone()
    assert lib.emu_dma_epilogue(DTYPE_CODE[dtype], I64(M), I64(N), ptr(base), ptr(gam), ptr(b), ptr(y)) == 0

    def expect(dt):
        out = base.to(dt) * (gam.to(dt) if gamma else 1)
        return (out + b.to(dt) if bias else out) + upd.to(dt)

    _check(y, expect(torch.float64), expect(dtype), dtype)


@pytest.mark.parametrize("dtype", DMA_DTYPES, ids=str)
@pytest.mark.parametrize("rows,cols", [(1000, 64), (37, 70), (1, 5)])
def test_column_dot_kernel(lib, dtype, rows, cols):
    g = torch.Generator().manual_seed(rows + cols)
    a = torch.randn(rows, cols, generator=g, dtype=torch.float64).to(dtype)
    b = torch.randn(rows, cols, generator=g, dtype=torch.float64).to(dtype)
    out = torch.empty(cols, dtype=dtype)
    assert lib.emu_column_dot(DTYPE_CODE[dtype], I64(rows), I64(cols), ptr(a), ptr(b), ptr(out)) == 0
    _check(out, (a.double() * b.double()).sum(0), (a * b).sum(0), dtype)


# --------------------------------------------------------------------------- bindings_cuda.cpp

# (M, K, R, [(N_j, scale kind, gamma, bias)]): one projection on the vector paths; three (q, k, v)
# with odd sizes, mixed gamma/bias and a per-row scale.
DMA_CALLS = {
    "single-vector": (40, 64, 64, [(48, "vector", False, True)]),
    "single-gamma": (33, 24, 8, [(16, "row", True, False)]),
    "qkv-odd": (21, 19, 7, [(23, "vector", True, True), (9, "row", False, False),
                            (23, "vector", False, True)]),
}


def _dma_call(M, K, R, projections, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rand(*s):
        return torch.randn(*s, generator=g, dtype=torch.float64).to(dtype)

    x, down = rand(M, K), rand(R, K) / K ** 0.5
    weights, biases, ups, scales, gammas = [], [], [], [], []
    for N, kind, gamma, bias in projections:
        weights.append(rand(N, K) / K ** 0.5)
        biases.append(rand(N) if bias else None)
        ups.append(rand(N, R) / R ** 0.5)
        scales.append(rand(M, R) if kind == "row" else rand(R))
        gammas.append(rand(N) if gamma else None)
    return x, weights, biases, down, ups, scales, gammas


@pytest.mark.parametrize("dtype", DMA_DTYPES, ids=str)
@pytest.mark.parametrize("call", list(DMA_CALLS))
def test_dma_linear_bindings_match_reference(emu_ops, dtype, call):
    M, K, R, projections = DMA_CALLS[call]
    x, weights, biases, down, ups, scales, gammas = _dma_call(M, K, R, projections, dtype)
    ys, t, bases = emu_ops.dma_linear_forward(x, weights, biases, down, ups, scales, gammas)
    dys = [torch.randn(M, w.shape[0], dtype=torch.float64).to(dtype) for w in weights]
    needs = [True] * 5
    grads = emu_ops.dma_linear_backward(dys, x, weights, down, ups, scales, gammas, t, bases, needs)

    def reference(dt):
        def c(v):
            if isinstance(v, list):
                return [c(e) for e in v]
            return None if v is None else v.to(dt)
        r_ys, r_t, r_bases = ref.dma_linear_forward(c(x), c(weights), c(biases), c(down), c(ups), c(scales),
                                                    c(gammas))
        r_bases = [b if g is not None else None for b, g in zip(r_bases, gammas)]
        r_grads = ref.dma_linear_backward(c(dys), c(x), c(weights), c(down), c(ups), c(scales), c(gammas),
                                          r_t, r_bases, needs)
        return r_ys, r_t, r_grads

    t_ys, t_t, t_grads = reference(torch.float64)
    l_ys, l_t, l_grads = reference(dtype)
    _check(t, t_t, l_t, dtype)
    for y, ty, ly in zip(ys, t_ys, l_ys):
        _check(y, ty, ly, dtype)
    dx, d_down, d_ups, d_scales, d_gammas = grads
    _check(dx, t_grads[0], l_grads[0], dtype)
    _check(d_down, t_grads[1], l_grads[1], dtype)
    for got, truth, lowp in zip([*d_ups, *d_scales], [*t_grads[2], *t_grads[3]], [*l_grads[2], *l_grads[3]]):
        assert got.shape == truth.shape
        _check(got, truth, lowp, dtype)
    for got, truth, lowp, gamma in zip(d_gammas, t_grads[4], l_grads[4], gammas):
        if gamma is None:
            assert got.numel() == 0
        else:
            _check(got, truth, lowp, dtype)


def test_dma_linear_bindings_skip_unneeded_grads(emu_ops):
    M, K, R, projections = DMA_CALLS["qkv-odd"]
    x, weights, biases, down, ups, scales, gammas = _dma_call(M, K, R, projections, torch.float32)
    ys, t, bases = emu_ops.dma_linear_forward(x, weights, biases, down, ups, scales, gammas)
    dys = [torch.randn_like(y) for y in ys]
    only_up = [False, False, True, False, False]
    dx, d_down, d_ups, d_scales, d_gammas = emu_ops.dma_linear_backward(dys, x, weights, down, ups, scales,
                                                                         gammas, t, bases, only_up)
    assert dx.numel() == 0 and d_down.numel() == 0
    assert all(d.numel() == 0 for d in [*d_scales, *d_gammas])
    for d_up, dy, s in zip(d_ups, dys, scales):
        torch.testing.assert_close(d_up, dy.T @ (t * s), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dropout", ["mask", "philox"])
@pytest.mark.parametrize("adapter_scale", [0.5, 1.0])
@pytest.mark.parametrize("granularity", list(GRAN_CODE))
def test_gated_residual_bindings_match_reference(emu_ops, granularity, adapter_scale, dropout):
    B, T, d = 2, 6, 40
    dtype = torch.float32
    x, h, u, gates, keep, dout = _gated_inputs(granularity, B, T, d, False, dtype, mask=dropout == "mask",
                                               seed=11)
    batch = B if granularity == "small" else 0
    drop = (0.0, 0) if dropout == "mask" else (0.3, -12345)  # a negative int64 seed is a 64-bit pattern
    args = (granularity, adapter_scale, 2.0, *gates.values(), keep, *drop, batch)
    out, stat = emu_ops.gated_residual_forward(x, h, u, *args)
    grads = emu_ops.gated_residual_backward(dout, x, h, u, *args, stat)

    def c(v):
        return None if v is None else v.double()

    r_args = (granularity, adapter_scale, 2.0, *(c(v) for v in gates.values()), c(keep), *drop, batch)
    r_out, r_stat = ref.gated_residual_forward(c(x), c(h), c(u), *r_args)
    r_grads = ref.gated_residual_backward(c(dout), c(x), c(h), c(u), *r_args, r_stat)
    _check(out, r_out, None, dtype)
    assert stat.numel() == (B * T if granularity in ("middleX", "small") else 0)
    # dx = dout (large, middleY) and du = dh (adapter_scale 1) are left to the autograd formula
    skipped = {"dx"} if granularity in ("large", "middleY") else set()
    skipped |= {"du"} if adapter_scale == 1.0 else set()
    names = ("dx", "dh", "du", "d_logits", "d_weight", "d_bias", "d_vector")
    for name, got, truth in zip(names, grads, r_grads):
        if truth is None or name in skipped:
            assert got.numel() == 0, name
        else:
            _check(got, truth, None, dtype)


def test_gated_residual_bindings_reject_bad_granularity(emu_ops):
    x = torch.randn(2, 4)
    with pytest.raises(ValueError, match="granularity must be one of"):
        emu_ops.gated_residual_forward(x, x, x, "medium", 1.0, 1.0, None, None, None, None, None, 0.0, 0, 0)
