"""Adaptive Instruction MoEs (DESIGN §1.2): experts on the Q-Former input embeddings, and the
multi-instruction merge of Q-Former outputs.

``AIMEmbeddings`` wraps the module that produces the Q-Former's input embeddings (InstructBLIP:
``qformer.embeddings``, which sees ``query_embeds`` and the instruction ids; BLIP-2: ``qformer.layernorm``,
query tokens only) and returns ``res·e + mix·Σ_k g_k E_k(e)``. The softmax gate routes on the mean
instruction embedding (rows after the query tokens), or on the mean of all rows when there are none.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .dma import DelegatingWrapper


class AIMEmbeddings(DelegatingWrapper):
    def __init__(self, base_layer: nn.Module, hidden_size: int, num_experts: int, rank: int, gate: str,
                 residual_weight: float, expert_weight: float, identity_init: bool):
        super().__init__(base_layer)
        K, d = num_experts, hidden_size
        self.gate, self.res, self.mix, self.identity = gate, residual_weight, expert_weight, identity_init
        self.down = nn.Parameter(torch.empty(K, rank, d))
        self.down_bias = nn.Parameter(torch.empty(K, rank))
        self.up = nn.Parameter(torch.empty(K, d, rank))
        self.up_bias = nn.Parameter(torch.empty(K, d))
        for k in range(K):  # nn.Linear's default init, per expert
            for w, b, fan_in in ((self.down, self.down_bias, d), (self.up, self.up_bias, rank)):
                nn.init.kaiming_uniform_(w[k], a=math.sqrt(5))
                nn.init.uniform_(b[k], -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))
        if identity_init:
            nn.init.zeros_(self.up)
            nn.init.zeros_(self.up_bias)
        self.router = nn.Linear(d, K) if gate == "softmax" else None
        if self.router is not None:
            nn.init.zeros_(self.router.weight)
            nn.init.zeros_(self.router.bias)

    def gates(self, e: Tensor, query_length: int) -> Tensor:
        """(B, K) expert weights."""
        K = self.down.shape[0]
        if self.router is None:
            return e.new_full((e.shape[0], K), 1.0 / K)
        instr = e[:, query_length:] if e.shape[1] > query_length else e
        return torch.softmax(self.router(instr.mean(dim=1).to(self.router.weight.dtype)), dim=-1)

    def mix_experts(self, e: Tensor, g: Tensor) -> Tensor:
        """``Σ_k g_k (up_k (down_k e + down_bias_k) + up_bias_k)`` for ``e`` (B, L, d), ``g`` (B, K).

        All experts in two GEMMs: the K down projections stacked into one (K·R, d) matrix, the gate
        weights moved onto the rank-R activations (``g_k`` commutes with ``up_k``), and the K up
        projections side by side as one (d, K·R) matrix; the biases mix as ``g @ up_bias``.
        """
        K, R, d = self.down.shape
        B, L = e.shape[0], e.shape[1]
        h = F.linear(e, self.down.to(e.dtype).reshape(K * R, d), self.down_bias.to(e.dtype).reshape(K * R))
        h = (h.view(B, L, K, R) * g[:, None, :, None]).view(B, L, K * R)
        up = self.up.to(e.dtype).permute(1, 0, 2).reshape(d, K * R)
        return torch.baddbmm((g @ self.up_bias.to(e.dtype))[:, None, :], h, up.T.expand(B, K * R, d))

    def forward(self, *args, **kwargs):
        e = self.base_layer(*args, **kwargs)
        query_embeds = kwargs.get("query_embeds")
        query_length = query_embeds.shape[1] if query_embeds is not None else e.shape[1]
        g = self.gates(e, query_length).to(e.dtype)                              # (B, K)
        mixed = self.mix_experts(e, g)
        if self.identity:
            mixed = mixed + e
        return self.res * e + self.mix * mixed


class InstructionMerge(nn.Module):
    """Weights for merging the Q-Former outputs of ``n`` instructions per image."""

    def __init__(self, max_instructions: int, mode: str):
        super().__init__()
        self.mode = mode
        self.logits = nn.Parameter(torch.zeros(max_instructions)) if mode == "softmax" else None
        self.max_instructions = max_instructions

    def weights(self, n: int, like: Tensor) -> Tensor:
        if n > self.max_instructions:
            raise ValueError(f"got {n} instructions per image but AIMConfig.max_instructions is "
                             f"{self.max_instructions}")
        if self.logits is None:
            return like.new_full((n,), 1.0 / n)
        return torch.softmax(self.logits[:n], dim=0).to(like.dtype)

    def merge(self, stacked: Tensor) -> Tensor:
        """``stacked`` (B, n, L, d) -> (B, L, d)."""
        w = self.weights(stacked.shape[1], stacked)
        return torch.einsum("n,bnld->bld", w, stacked)


def expand_instructions(input_ids: Tensor, attention_mask, query_embeds, encoder_hidden_states,
                        encoder_attention_mask):
    """(B, n, L) instruction ids -> (B·n, L), repeating the per-image tensors ``n`` times.

    ``attention_mask`` may be ``None``, ``(B, n, L)`` (instruction tokens only; the query tokens are
    attended), ``(B, n, Lq + L)``, or ``(B, Lq + n·L)`` (what InstructBLIP builds for flattened ids).
    """
    B, n, L = input_ids.shape
    Lq = 0 if query_embeds is None else query_embeds.shape[1]
    rep = lambda t: None if t is None else t.repeat_interleave(n, dim=0)  # noqa: E731
    mask = attention_mask
    if mask is not None:
        if mask.dim() == 3 and mask.shape[:2] == (B, n) and mask.shape[2] in (L, Lq + L):
            mask = mask.reshape(B * n, -1)
            if mask.shape[1] == L and Lq:
                mask = torch.cat([mask.new_ones(B * n, Lq), mask], dim=1)
        elif mask.dim() == 2 and mask.shape == (B, Lq + n * L):
            query_mask = mask[:, :Lq].repeat_interleave(n, dim=0)
            mask = torch.cat([query_mask, mask[:, Lq:].reshape(B * n, L)], dim=1)
        else:
            raise ValueError(f"attention_mask for {n} instructions of length {L} (and {Lq} query tokens) "
                             f"must be (B, n, L), (B, n, Lq + L) or (B, Lq + n·L); got {tuple(mask.shape)}")
    return (input_ids.reshape(B * n, L), mask, rep(query_embeds), rep(encoder_hidden_states),
            rep(encoder_attention_mask), n)
