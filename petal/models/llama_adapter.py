"""Where LLaMA-Adapter goes in a Q-Former: the self-attention of each of the top L layers is wrapped by
:class:`~petal.layers.llama_adapter.AdaptionPromptAttention` (its prompts and gate live in the wrapper)."""

from __future__ import annotations

from torch import nn

from ..baseline_config import LlamaAdapterSettings
from ..layers.llama_adapter import AdaptionPromptAttention
from .qformer import find_qformer


def patch_llama_adapter(model: nn.Module, cfg: LlamaAdapterSettings) -> None:
    _, qformer = find_qformer(model)
    layers = list(qformer.encoder.layer)
    for layer in layers[len(layers) - min(cfg.layers, len(layers)):]:
        block = layer.attention
        block.attention = AdaptionPromptAttention(block.attention, cfg.prompt_length, cfg.init_std)


__all__ = ["patch_llama_adapter"]
