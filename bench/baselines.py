"""The unfused forms the fused ops are measured against, written from the papers' math.

* ``OfficialPetalProjections``: PETAL's official code as it computes q/k/v of one attention: each
  projection recomputes the shared down-projection, applies dropout to the rank-R bottleneck and
  mixes it with a full Tucker core contracted with the projection's third-mode vector:
  ``y_j = W_j x + b_j + V ((dropout(U x)) (C ×₃ p_j))``.
* ``vlpet_epilogue``: VL-PET's granularity-controlled gate and residual as separate PyTorch ops,
  ``out = x + s_g * dropout(G ⊙ (h + s_a u))``.
* ``VLPetLargeAdapter``: the whole VL-PET-large sublayer adapter (multi-head down, gelu_new, up, and
  the two-layer gate) with an unfused epilogue, or with ``petal_kernels.gated_residual``.
* ``lora_projections``: ``peft`` LoRA on frozen linears that share the benchmark's weights.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import petal_kernels
from petal_kernels.reference import gate as vlpet_gate
from petal_kernels.reference import gelu_new

OFFICIAL_DROPOUT = 0.1


def _frozen_linear(weight: Tensor, bias: Tensor | None) -> nn.Linear:
    """An ``nn.Linear`` whose parameters are the given tensors (same storage), frozen."""
    n, k = weight.shape
    linear = nn.Linear(k, n, bias=bias is not None, device=weight.device, dtype=weight.dtype)
    linear.weight = nn.Parameter(weight, requires_grad=False)
    if bias is not None:
        linear.bias = nn.Parameter(bias, requires_grad=False)
    return linear


class OfficialPetalProjections(nn.Module):
    """J projections of one input with PETAL's official (unfused, Tucker-core) update.

    ``down`` ("CP_U", R×K) and ``up`` ("CP_V", N×R) and the core ``C`` (R×R×R) are shared by the
    projections; each has its own third-mode vector ``p_j`` (R×1, xavier-uniform).
    """

    def __init__(self, weights: Sequence[Tensor], biases: Sequence[Tensor | None], rank: int,
                 dropout: float = OFFICIAL_DROPOUT):
        super().__init__()
        if not weights:
            raise ValueError("weights must hold at least one projection, got none")
        n, k = weights[0].shape
        factory = {"device": weights[0].device, "dtype": weights[0].dtype}
        self.frozen = nn.ModuleList(_frozen_linear(w, b) for w, b in zip(weights, biases))
        self.down = nn.Parameter(torch.randn(rank, k, **factory) / math.sqrt(k))
        self.up = nn.Parameter(torch.randn(n, rank, **factory) * 0.02)  # zero-init in training
        self.core = nn.Parameter(torch.empty(rank, rank, rank, **factory))
        nn.init.xavier_uniform_(self.core)
        self.mode3 = nn.ParameterList(
            nn.Parameter(nn.init.xavier_uniform_(torch.empty(rank, 1, **factory))) for _ in weights)
        self.dropout = nn.Dropout(dropout)

    def projection(self, x: Tensor, j: int) -> Tensor:
        # C ×₃ p_j: contract the core's third index with p_j -> an R×R mixing matrix
        mixing = torch.tensordot(self.core, self.mode3[j][:, 0], dims=([2], [0]))
        bottleneck = self.dropout(F.linear(x, self.down)) @ mixing
        return self.frozen[j](x) + F.linear(bottleneck, self.up)

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        return tuple(self.projection(x, j) for j in range(len(self.frozen)))


class _Projections(nn.Module):
    """Frozen linears named ``p0``, ``p1``, ... that peft can target."""

    def __init__(self, weights: Sequence[Tensor], biases: Sequence[Tensor | None]):
        super().__init__()
        for j, (w, b) in enumerate(zip(weights, biases)):
            self.add_module(f"p{j}", _frozen_linear(w, b))

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        return tuple(m(x) for m in self.children())


def lora_projections(weights: Sequence[Tensor], biases: Sequence[Tensor | None], rank: int,
                     dropout: float) -> nn.Module:
    """peft LoRA (``lora_alpha = rank``) on J frozen linears; ``forward(x)`` returns the J outputs."""
    from peft import LoraConfig, inject_adapter_in_model

    module = _Projections(weights, biases)
    config = LoraConfig(r=rank, lora_alpha=rank, lora_dropout=dropout,
                        target_modules=[f"p{j}" for j in range(len(weights))])
    module = inject_adapter_in_model(config, module)
    for name, p in module.named_parameters():
        p.requires_grad_("lora_" in name)
        if "lora_B" in name:  # peft zero-initialises B; give the backward non-trivial values
            with torch.no_grad():
                p.normal_(std=0.02)
    return module


def vlpet_epilogue(x: Tensor, h: Tensor, u: Tensor, granularity: str, adapter_scale: float = 1.0,
                   gate_scale: float = 1.0, gate_logits: Tensor | None = None,
                   gate_weight: Tensor | None = None, gate_bias: Tensor | None = None,
                   gate_vector: Tensor | None = None, dropout: float = 0.0,
                   training: bool = True) -> Tensor:
    """``x + s_g * dropout(G ⊙ (h + s_a u))`` as VL-PET computes it: one PyTorch op at a time."""
    h2 = h + adapter_scale * u
    g = vlpet_gate(granularity, x, h2, gate_logits, gate_weight, gate_bias, gate_vector)
    return x + gate_scale * F.dropout(g * h2, dropout, training)


class VLPetLargeAdapter(nn.Module):
    """VL-PET-large on one sublayer: ``out = x + s_g * dropout(G ⊙ (h + s_a * up(φ(down(h)))))``.

    ``G = σ(W_gu φ(W_gd x + b_gd) + b_gu)``. ``fused=True`` runs the epilogue (gate sigmoid,
    residual, scaling, dropout) as ``petal_kernels.gated_residual``; the GEMMs are the same.
    """

    def __init__(self, d: int, adapter_dim: int = 192, gate_dim: int = 192, adapter_scale: float = 1.0,
                 gate_scale: float = 0.3, dropout: float = 0.1, fused: bool = False,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.down = nn.Linear(d, adapter_dim, **factory)  # the N_h heads concatenated
        self.up = nn.Linear(adapter_dim, d, **factory)
        self.gate_down = nn.Linear(d, gate_dim, **factory)
        self.gate_up = nn.Linear(gate_dim, d, **factory)
        self.adapter_scale, self.gate_scale, self.p, self.fused = adapter_scale, gate_scale, dropout, fused

    def forward(self, x: Tensor, h: Tensor) -> Tensor:
        u = self.up(gelu_new(self.down(h)))
        logits = self.gate_up(gelu_new(self.gate_down(x)))
        if self.fused:
            p = self.p if self.training else 0.0
            return petal_kernels.gated_residual(x, h, u, "large", self.adapter_scale, self.gate_scale,
                                                gate_logits=logits, dropout_p=p)
        return vlpet_epilogue(x, h, u, "large", self.adapter_scale, self.gate_scale, gate_logits=logits,
                              dropout=self.p, training=self.training)
