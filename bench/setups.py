"""Setup factories of the benchmarks: one per op (``setup_dma_linear``, ``setup_dma_linear_multi``,
``setup_gated_residual``, ``setup_vlpet_block``) builds the inputs and, for one implementation, a
``Setup``: the forward callable, the leaves the backward differentiates, random output gradients, and what
exists before the forward (inputs, parameters). The same ``Setup`` is timed (forward, backward, both) and
measured for memory (saved-for-backward bytes, peak allocation), so every number of a case comes from one
construction.

Implementations: ``floor`` (the frozen layers alone), ``petal`` (the fused op; ``petal_p0.1`` with a
dropout mask on the rank-R bottleneck folded into a per-row scale), ``reference`` (the eager math),
``compile`` (``torch.compile`` of it), ``lora``/``lora_p0.1`` (peft LoRA at the same rank, dropout 0
and 0.1), ``official`` (PETAL's official unfused form), ``unfused`` (VL-PET's unfused epilogue).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

import petal_kernels
from bench import baselines
from bench.grid import DMA_IMPLS, GATED_IMPLS, MODES, VLPET_DROPOUT
from petal_kernels import GRANULARITIES, reference

VLPET_GATE_SCALE = 0.3


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



# --------------------------------------------------------------------------- timed callables


def callable_for(setup: Setup, mode: str, device: torch.device) -> Callable[[], Any]:
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
