"""LLaMA-Adapter's zero-initialised gated attention (Zhang et al., 2023) around a Q-Former self-attention.

``K`` learnable adaption prompts go through the layer's own frozen key and value projections; each
token's query attends to them with a softmax of its own, the result is scaled per head by a gate
initialised to 0 and added to the attention output (before the output projection, as the paper adds
it inside the attention):

    out = attn(x) + concat_h( g_h · softmax(q_h k_hᵀ · s) v_h )        k, v = W_k P + b_k, W_v P + b_v

With ``g = 0`` the wrapped attention returns exactly what the base attention returns.
"""

from __future__ import annotations

import torch
from torch import nn

from .dma import DelegatingWrapper


class AdaptionPromptAttention(DelegatingWrapper):
    """Wraps a Q-Former ``*QFormerMultiHeadAttention`` used as self-attention."""

    def __init__(self, base_layer: nn.Module, prompt_length: int, init_std: float):
        super().__init__(base_layer)
        hidden = base_layer.query.in_features
        self.prompt = nn.Parameter(torch.randn(prompt_length, hidden) * init_std)
        self.gate = nn.Parameter(torch.zeros(base_layer.num_attention_heads))

    def forward(self, hidden_states, attention_mask=None, encoder_hidden_states=None,
                encoder_attention_mask=None, **kwargs):
        if encoder_hidden_states is not None:
            raise ValueError("AdaptionPromptAttention wraps a self-attention; it was called with "
                             "encoder_hidden_states")
        base = self.base_layer
        out, weights = base(hidden_states, attention_mask=attention_mask, **kwargs)
        heads, size = base.num_attention_heads, base.attention_head_size
        prompt = self.prompt.to(hidden_states.dtype)
        q = base.query(hidden_states).unflatten(-1, (heads, size)).transpose(-3, -2)   # (B, H, L, h)
        k = base.key(prompt).unflatten(-1, (heads, size)).transpose(0, 1)              # (H, K, h)
        v = base.value(prompt).unflatten(-1, (heads, size)).transpose(0, 1)
        probs = torch.softmax(q @ k.transpose(-1, -2) * base.scaling, dim=-1)          # (B, H, L, K)
        extra = (probs * self.gate.to(probs.dtype)[:, None, None]) @ v                  # (B, H, L, h)
        return out + extra.transpose(-3, -2).flatten(-2).to(out.dtype), weights
