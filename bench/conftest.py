"""Setup factories and the measuring harness of ``pytest bench/ --benchmark-only``.

One setup factory per op (``setup_dma_linear``, ``setup_dma_linear_multi``, ``setup_gated_residual``,
``setup_vlpet_block``) builds the inputs and, for one implementation, a ``Setup``: the forward
callable, the leaves the backward differentiates, random output gradients, and what exists before
the forward (inputs, parameters). The same ``Setup`` is timed (forward, backward, both) and measured
for memory (saved-for-backward bytes, peak allocation), so every number of a case comes from one
construction.

Implementations: ``floor`` (the frozen layers alone), ``petal`` (the fused op; ``petal_p0.1`` with a
dropout mask on the rank-R bottleneck folded into a per-row scale), ``reference`` (the eager math),
``compile`` (``torch.compile`` of it), ``lora``/``lora_p0.1`` (peft LoRA at the same rank, dropout 0
and 0.1), ``official`` (PETAL's official unfused form), ``unfused`` (VL-PET's unfused epilogue).

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
import pathlib
import statistics
import time
from typing import Any, Callable, Sequence

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

import petal_kernels
from bench import baselines, memory
from petal_kernels import reference

THREADS = 2
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
PAIRED_OPS = ("dma_linear", "dma_linear_multi")  # petal's headline fwd+bwd also timed in pairs with the floor
# gated_residual's target compares petal with the unfused form: every petal fwd+bwd is also timed in
# back-to-back pairs with it
PAIRED_IMPLS = ("petal",)  # the one a target reads; the other implementations' medians stand as they are
PAIRS = 25  # the target sits 2-3 % above the flop floor: 15 pairs left its median to the host's noise
MAX_PAIRS = 41
MIN_GATED_PAIRS = 5
PAIRED_BUDGET_S = 0.15  # gated_residual: petal and the unfused form back to back, pairs fitting 2x this
SWEEP_BUDGET = 0.5  # a sweep case's share of the timing budget of a headline case (at least 3 rounds)
FLOOR_FREE_DIMS = ("g", "p")  # gated_residual's granularity and dropout: one floor serves them all
GRANULARITIES = ("large", "middleX", "middleY", "small")
VLPET_DROPOUT = 0.1
VLPET_GATE_SCALE = 0.3
CUDA_DTYPE = "bfloat16"
TOKENS_PER_EXAMPLE = 256  # (B, T, d) layout of the gated_residual cases: rows = B * T


# --------------------------------------------------------------------------- options and grid


def pytest_addoption(parser):
    parser.addoption(
        "--bench-scale", choices=("default", "full"), default=None,
        help=f"shape grid of the petal benchmarks (default: 'default', or 'full' when {FULL_ENV}=1)")


def bench_scale(config) -> str:
    chosen = config.getoption("--bench-scale", default=None)
    if chosen:
        return chosen
    return "full" if os.environ.get(FULL_ENV, "") not in ("", "0") else "default"


def pytest_configure(config):
    torch.set_num_threads(THREADS)
    json_path = config.getoption("benchmark_json", default=None)
    if json_path:  # pytest-benchmark writes it at the very end and does not create its directory
        pathlib.Path(json_path).parent.mkdir(parents=True, exist_ok=True)
    import torch._dynamo as dynamo

    # one compiled graph per benchmarked shape; the default limit would silently fall back to eager
    for name in ("cache_size_limit", "recompile_limit"):
        if hasattr(dynamo.config, name):
            setattr(dynamo.config, name, 256)


def pytest_collection_modifyitems(session, config, items):
    """The end-to-end training steps run first, in a process that has done nothing else yet, as a
    training run would: after the op benchmarks (thousands of short-lived tensors of every size) the
    allocator's state moved the step times by more than the step targets' margins."""
    items.sort(key=lambda item: 0 if item.path.name == "test_qformer_step.py" else 1)


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["torch"] = torch.__version__
    machine_info["torch_threads"] = torch.get_num_threads()
    machine_info["petal_backends"] = {
        "cpu": petal_kernels.available_backends("cpu"),
        "default_cpu": petal_kernels.backend_name(torch.device("cpu")),
    }
    machine_info["bench_scale"] = bench_scale(config)
    if hasattr(os, "getloadavg"):  # at the end of the run: how contended the machine was
        machine_info["load_average"] = [round(v, 2) for v in os.getloadavg()]
    if torch.cuda.is_available():
        machine_info["cuda_device"] = torch.cuda.get_device_name()
        machine_info["petal_backends"]["default_cuda"] = petal_kernels.backend_name(torch.device("cuda"))


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


def pytest_generate_tests(metafunc):
    for name, grid in GRIDS.items():
        if name in metafunc.fixturenames:
            metafunc.parametrize(name, grid(bench_scale(metafunc.config)))


# --------------------------------------------------------------------------- setups


@dataclasses.dataclass
class Setup:
    """What a benchmark runs: ``forward()`` builds the graph and returns the outputs;
    the backward differentiates them w.r.t. ``wrt`` with ``grad_outputs``; ``keep`` is what exists
    before the forward (inputs, parameters), left out of the saved-bytes count."""

    forward: Callable[[], tuple[Tensor, ...]]
    wrt: list[Tensor]
    keep: list
    backend: str
    flops: dict[str, float] | None = None
    grad_outputs: list[Tensor] = dataclasses.field(default_factory=list)
    saved_bytes: int | None = None


def _finish(setup: Setup, seed: int) -> Setup:
    """Random output gradients shaped like the outputs (one forward with grad on, which also
    triggers ``torch.compile``'s compilation outside the timed region)."""
    outs = setup.forward()
    gen = torch.Generator(device="cpu").manual_seed(seed)
    setup.grad_outputs = [torch.randn(o.shape, generator=gen).to(o.device, o.dtype) for o in outs]
    return setup


class _Rand:
    """Deterministic random tensors on a device (generated on the CPU, so every device gets the same)."""

    def __init__(self, device: str, dtype: str, seed: int = 0):
        self.gen = torch.Generator(device="cpu").manual_seed(seed)
        self.device, self.dtype = torch.device(device), getattr(torch, dtype)

    def __call__(self, *shape: int, std: float = 1.0, mean: float = 0.0, grad: bool = False) -> Tensor:
        t = (torch.randn(*shape, generator=self.gen) * std + mean).to(self.device, self.dtype)
        return t.requires_grad_(grad)


_COMPILED: dict[Callable, Callable] = {}


def compiled(fn: Callable) -> Callable:
    """One ``torch.compile`` wrapper per function, so all shapes share dynamo's cache."""
    if fn not in _COMPILED:
        _COMPILED[fn] = torch.compile(fn, dynamic=False)
    return _COMPILED[fn]


def _bottleneck_mask(rows: int, rank: int, p: float, like: Tensor) -> Tensor:
    return torch.empty(rows, rank, device=like.device, dtype=like.dtype).bernoulli_(1 - p).div_(1 - p)


def dma_flops(M: int, K: int, N: int, R: int, J: int, adapted: bool) -> dict[str, float]:
    """Useful flops (shared ``t = x @ down.T``): frozen GEMMs, plus the rank-R path when adapted.

    The backward differentiates ``x`` and the adapter factors, never the frozen weights.
    """
    frozen = 2.0 * M * K * N * J
    fwd, bwd = frozen, frozen
    if adapted:
        fwd += 2.0 * M * K * R + 2.0 * M * R * N * J
        bwd += 4.0 * M * R * N * J + 4.0 * M * R * K  # d_up, dz per projection; d_down, dx via down once
    return {"forward": fwd, "backward": bwd, "full": fwd + bwd}


def _dma_setup(op: str, impl: str, device: str, dtype: str, M: int, K: int, N: int, R: int,
               J: int) -> Setup:
    rand = _Rand(device, dtype)
    x = rand(M, K, grad=True)
    weights = [rand(N, K, std=K ** -0.5) for _ in range(J)]
    biases = [rand(N, std=0.02) for _ in range(J)]
    frozen = [x, weights, biases]
    flops = dma_flops(M, K, N, R, J, adapted=impl != "floor")
    multi = op == "dma_linear_multi"

    if impl == "floor":
        return _finish(Setup(lambda: tuple(F.linear(x, w, b) for w, b in zip(weights, biases)),
                             [x], frozen, "torch", dma_flops(M, K, N, R, J, False)), 1)

    if impl in ("petal", "petal_p0.1", "reference", "compile"):
        down = rand(R, K, std=K ** -0.5, grad=True)
        ups = [rand(N, R, std=0.02, grad=True) for _ in range(J)]
        scales = [rand(R, std=0.1, mean=1.0, grad=True) for _ in range(J)]
        params = [down, *ups, *scales]
        if impl == "petal":
            def forward():
                if multi:
                    return petal_kernels.dma_linear_multi(x, weights, biases, down, ups, scales)
                return (petal_kernels.dma_linear(x, weights[0], biases[0], down, ups[0], scales[0]),)
            backend = petal_kernels.backend_name(torch.device(device))
        elif impl == "petal_p0.1":
            def forward():  # dropout on the shared bottleneck t, folded into per-row scales
                mask = _bottleneck_mask(M, R, 0.1, x)
                if multi:
                    return petal_kernels.dma_linear_multi(x, weights, biases, down, ups,
                                                          [s * mask for s in scales])
                return (petal_kernels.dma_linear(x, weights[0], biases[0], down, ups[0], scales[0] * mask),)
            backend = petal_kernels.backend_name(torch.device(device))
        else:
            fn = reference.dma_linear_multi if impl == "reference" else compiled(reference.dma_linear_multi)

            def forward():
                return tuple(fn(x, weights, biases, down, ups, scales))
            backend = "torch" if impl == "reference" else "inductor"
        return _finish(Setup(forward, [x, *params], [*frozen, params], backend, flops), 1)

    if impl in ("lora", "lora_p0.1"):
        module = baselines.lora_projections(weights, biases, R, 0.1 if impl == "lora_p0.1" else 0.0).train()
        trainable = [p for p in module.parameters() if p.requires_grad]
        return _finish(Setup(lambda: module(x), [x, *trainable], [*frozen, module], "peft", flops), 1)

    if impl == "official":
        module = baselines.OfficialPetalProjections(weights, biases, R).train()
        trainable = [p for p in module.parameters() if p.requires_grad]
        return _finish(Setup(lambda: module(x), [x, *trainable], [*frozen, module], "torch", flops), 1)

    raise ValueError(f"impl must be one of {DMA_IMPLS}, got {impl!r}")


def setup_dma_linear(impl: str, device: str, dtype: str, M: int, K: int, N: int, R: int) -> Setup:
    """One adapted projection ``(M, K) -> (M, N)`` at rank R."""
    return _dma_setup("dma_linear", impl, device, dtype, M, K, N, R, 1)


def setup_dma_linear_multi(impl: str, device: str, dtype: str, M: int, K: int, N: int, R: int,
                           J: int) -> Setup:
    """J adapted projections (q, k, v) of one ``(M, K)`` input at rank R."""
    return _dma_setup("dma_linear_multi", impl, device, dtype, M, K, N, R, J)


def _gate_args(rand: _Rand, g: str, B: int, T: int, d: int) -> dict[str, Tensor]:
    if g == "large":
        return {"gate_logits": rand(B, T, d, grad=True)}
    if g == "middleX":
        return {"gate_weight": rand(d, std=d ** -0.5, grad=True), "gate_bias": rand(1, grad=True)}
    if g == "middleY":
        return {"gate_vector": rand(d, std=0.1, grad=True)}
    if g == "small":
        return {"gate_weight": rand(2 * d, std=d ** -0.5, grad=True), "gate_bias": rand(1, grad=True)}
    raise ValueError(f"granularity must be one of {GRANULARITIES}, got {g!r}")


def _floor_setup(rand: _Rand, B: int, T: int, d: int) -> Setup:
    """The frozen sublayer output projection (d -> d) over the same rows: the layer the adapter rides on."""
    a = rand(B, T, d, grad=True)
    w = rand(d, d, std=d ** -0.5)
    flops = {"forward": 2.0 * B * T * d * d, "backward": 2.0 * B * T * d * d, "full": 4.0 * B * T * d * d}
    return _finish(Setup(lambda: (F.linear(a, w),), [a], [a, w], "torch", flops), 2)


def setup_gated_residual(impl: str, device: str, dtype: str, B: int, T: int, d: int, g: str,
                         p: float = VLPET_DROPOUT) -> Setup:
    """VL-PET's epilogue on ``(B, T, d)`` rows at granularity ``g``, dropout ``p`` as in training."""
    dropout = p
    rand = _Rand(device, dtype)
    if impl == "floor":
        return _floor_setup(rand, B, T, d)
    x, h, u = rand(B, T, d, grad=True), rand(B, T, d, grad=True), rand(B, T, d, grad=True)
    gates = _gate_args(rand, g, B, T, d)
    inputs = [x, h, u, *gates.values()]
    scales = {"adapter_scale": 1.0, "gate_scale": VLPET_GATE_SCALE}
    if impl == "petal":
        def forward():  # dropout made inside the kernel, as petal's VL-PET layers use it
            return (petal_kernels.gated_residual(x, h, u, g, **scales, **gates, dropout_p=dropout),)
        backend = petal_kernels.backend_name(torch.device(device))
    elif impl in ("unfused", "compile"):
        fn = baselines.vlpet_epilogue if impl == "unfused" else compiled(baselines.vlpet_epilogue)

        def forward():
            return (fn(x, h, u, g, **scales, **gates, dropout=dropout),)
        backend = "torch" if impl == "unfused" else "inductor"
    else:
        raise ValueError(f"impl must be one of {GATED_IMPLS}, got {impl!r}")
    return _finish(Setup(forward, inputs, inputs, backend), 2)


def setup_vlpet_block(impl: str, device: str, dtype: str, B: int, T: int, d: int) -> Setup:
    """The whole VL-PET-large adapter of one sublayer (adapter and gate GEMMs plus the epilogue)."""
    rand = _Rand(device, dtype)
    if impl == "floor":
        return _floor_setup(rand, B, T, d)
    x, h = rand(B, T, d, grad=True), rand(B, T, d, grad=True)
    module = baselines.VLPetLargeAdapter(d, fused=impl == "petal", gate_scale=VLPET_GATE_SCALE,
                                         dropout=VLPET_DROPOUT, device=device,
                                         dtype=getattr(torch, dtype)).train()
    if impl == "petal":
        run, backend = module, petal_kernels.backend_name(torch.device(device))
    elif impl == "unfused":
        run, backend = module, "torch"
    elif impl == "compile":
        run, backend = torch.compile(module, dynamic=False), "inductor"
    else:
        raise ValueError(f"impl must be one of {GATED_IMPLS}, got {impl!r}")
    trainable = list(module.parameters())
    return _finish(Setup(lambda: (run(x, h),), [x, h, *trainable], [x, h, module], backend), 2)


SETUPS: dict[str, Callable[..., Setup]] = {
    "dma_linear": setup_dma_linear,
    "dma_linear_multi": setup_dma_linear_multi,
    "gated_residual": setup_gated_residual,
    "vlpet_block": setup_vlpet_block,
}


# --------------------------------------------------------------------------- measuring


def _callable_for(setup: Setup, mode: str, device: torch.device) -> Callable[[], Any]:
    if mode == "forward":
        fn = setup.forward
    elif mode == "backward":
        outs = setup.forward()  # timed: the backward alone, over one retained graph

        def fn():
            return torch.autograd.grad(outs, setup.wrt, setup.grad_outputs, retain_graph=True,
                                       allow_unused=True)
    elif mode == "full":
        def fn():
            return torch.autograd.grad(setup.forward(), setup.wrt, setup.grad_outputs, allow_unused=True)
    else:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if device.type != "cuda":
        return fn

    def synced():
        out = fn()
        torch.cuda.synchronize(device)
        return out
    return synced


def _rounds(fn: Callable[[], Any], budget_s: float, min_rounds: int, max_rounds: int) -> int:
    start = time.perf_counter()
    fn()  # warm-up: compilation of the backward, allocator, lazy init
    first = time.perf_counter() - start
    if first * min_rounds >= budget_s:  # min_rounds even if the warm-up was slower than a timed call
        return min_rounds
    start = time.perf_counter()
    fn()
    once = max(time.perf_counter() - start, 1e-6)
    return max(min_rounds, min(max_rounds, int(budget_s / once)))


def _paired_ratios(fn: Callable[[], Any], floor_fn: Callable[[], Any], pairs: int,
                   warm: bool = False) -> list[float]:
    """``fn``'s time over the floor's, each pair timed back to back (order alternating), so a drift of
    the machine's speed between the two medians taken apart cancels. ``warm``: each timed call right
    after an untimed one of the same function, so both see the caches a run of their own leaves (as
    in the medians), not the other's: a memory-bound op whose inputs nearly fit the last-level cache
    is otherwise timed after the other form evicted them."""
    fn(), floor_fn()
    ratios = []
    order = (("impl", fn), ("floor", floor_fn))
    for i in range(pairs):
        times = {}
        for name, f in order if i % 2 == 0 else order[::-1]:
            if warm:
                f()
            start = time.perf_counter()
            f()
            times[name] = time.perf_counter() - start
        ratios.append(times["impl"] / times["floor"])
    return ratios


def _inline_median(fn: Callable[[], Any], rounds: int) -> tuple[float, float]:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times)


class SetupCache:
    """Keeps the last setup, so the three modes of one implementation share one construction."""

    def __init__(self):
        self.key, self.setup = None, None

    def get(self, param: Param) -> Setup:
        if self.key != param.setup_key():
            self.key, self.setup = None, None  # free the previous case's tensors first
            self.setup = SETUPS[param.op](param.impl, param.device, param.dtype, **param.shape)
            self.key = param.setup_key()
        return self.setup


@pytest.fixture(scope="session")
def setup_cache() -> SetupCache:
    return SetupCache()


@pytest.fixture(scope="session")
def scale(request) -> str:
    """'default' or 'full' (see ``--bench-scale``)."""
    return bench_scale(request.config)


@pytest.fixture(scope="session")
def floor_times() -> dict:
    return {}


@pytest.fixture
def measure(benchmark, request, setup_cache, floor_times):
    """``measure(param)``: time ``param``'s mode with pytest-benchmark, then record in ``extra_info``
    the ratio to the floor (same run), TFLOP/s, saved-for-backward bytes and (mode ``full``, headline
    shapes) peak memory."""
    scale = bench_scale(request.config)
    budget = 1.0 if scale == "full" else 0.4

    def run(param: Param) -> dict[str, Any]:
        device = torch.device(param.device)
        setup = setup_cache.get(param)
        fn = _callable_for(setup, param.mode, device)
        rounds = _rounds(fn, budget * SWEEP_BUDGET if param.sweep else budget, 3 if param.sweep else 5, 200)
        benchmark.group = param.group
        benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=0)

        info: dict[str, Any] = {
            "op": param.op, "impl": param.impl, "device": param.device, "dtype": param.dtype,
            "mode": param.mode, **param.shape, "backend": setup.backend, "threads": torch.get_num_threads(),
            "sweep": param.sweep,
        }
        stats = benchmark.stats.stats if benchmark.stats is not None else None
        if stats is not None:
            median, fastest = stats.median, stats.min
            info.update(median_s=median, min_s=fastest)
            if param.impl == "floor":
                floor_times[param.floor_key()] = (median, fastest)
                info.update(floor_median_s=median, ratio_to_floor=1.0, ratio_min_to_floor=1.0,
                            floor_source="same run")
            else:
                source = "same run"
                if param.floor_key() not in floor_times:  # floor deselected (-k): time it here
                    floor = SETUPS[param.op]("floor", param.device, param.dtype, **param.shape)
                    floor_fn = _callable_for(floor, param.mode, device)
                    rounds = _rounds(floor_fn, budget, 5, 200)
                    floor_times[param.floor_key()] = _inline_median(floor_fn, rounds)
                    source = "inline"
                floor_median, floor_min = floor_times[param.floor_key()]
                info.update(floor_median_s=floor_median, ratio_to_floor=median / floor_median,
                            ratio_min_to_floor=fastest / floor_min, floor_source=source)
            if setup.flops:
                info.update(flops=setup.flops[param.mode], tflops=setup.flops[param.mode] / median / 1e12)
        if param.op in PAIRED_OPS and param.mode == "full" and param.impl in PAIRED_IMPLS and not param.sweep:
            floor = SETUPS[param.op]("floor", param.device, param.dtype, **param.shape)
            ratios = _paired_ratios(fn, _callable_for(floor, "full", device), PAIRS)
            info.update(paired_ratio_to_floor=statistics.median(ratios),
                        paired_ratio_range=[min(ratios), max(ratios)], pairs=len(ratios))
        if param.op == "gated_residual" and param.impl == "petal" and param.mode == "full":
            unfused = SETUPS[param.op]("unfused", param.device, param.dtype, **param.shape)
            unfused_fn = _callable_for(unfused, "full", device)
            pairs = _rounds(lambda: (fn(), unfused_fn()), PAIRED_BUDGET_S, MIN_GATED_PAIRS, MAX_PAIRS)
            ratios = _paired_ratios(unfused_fn, fn, pairs, warm=True)  # unfused time over petal's
            info.update(paired_speedup_over_unfused=statistics.median(ratios),
                        paired_speedup_range=[min(ratios), max(ratios)], pairs=len(ratios))
        if setup.saved_bytes is None:  # a property of the forward: once per setup, not per mode
            setup.saved_bytes = memory.saved_bytes(setup.forward, setup.keep)
        info["saved_bytes"] = setup.saved_bytes
        if param.mode == "full" and not param.sweep:  # the sweep reports saved bytes (peak: headline shapes)
            info["peak_bytes"] = memory.peak_bytes(_callable_for(setup, "full", device), device)
        benchmark.extra_info.update(info)
        return info

    return run
