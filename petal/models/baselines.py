"""The comparison baselines that train existing weights or go through ``peft``: ``lora`` (Q-Former or
T5, through ``peft``), ``head`` (the last Q-Former layers, optionally the language projection), ``full``.

``patch`` has already frozen every parameter; these decide what becomes trainable: LoRA inserts
``peft``'s own layers (``peft.inject_adapter_in_model``, in place), ``head`` trains copies of the modules
it tunes (the originals return with ``unpatch``), ``full`` trains the weights themselves.
"""

from __future__ import annotations

import re

from torch import nn

from ..baseline_config import HeadSettings
from ..config import LoraSettings
from ..layers.trainable_copy import TrainableCopy
from .qformer import find_qformer, is_qformer
from .t5 import find_t5

T5_PROJECTIONS = {"query": "q", "key": "k", "value": "v"}


def _qkv_regex(prefix: str, projections: tuple) -> str:
    head = f"{re.escape(prefix)}\\." if prefix else ""
    return (f"^{head}encoder\\.layer\\.\\d+\\.(attention|crossattention)\\.attention\\."
            f"({'|'.join(projections)})$")


def _t5_regex(prefix: str, projections: tuple) -> str:
    names = "|".join(T5_PROJECTIONS[p] for p in projections)
    return (f"^{re.escape(prefix)}(encoder|decoder)\\.block\\.\\d+\\.layer\\.\\d+\\."
            f"(SelfAttention|EncDecAttention)\\.({names})$")


def patch_lora(model: nn.Module, cfg: LoraSettings) -> None:
    from peft import LoraConfig, inject_adapter_in_model

    if cfg.target == "t5":
        prefix, _ = find_t5(model, "language_model")
        targets = _t5_regex(prefix, cfg.projections)
    else:
        prefix, _ = find_qformer(model)
        targets = _qkv_regex(prefix, cfg.projections)
    lora = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets)
    inject_adapter_in_model(lora, model)
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)


def patch_head(model: nn.Module, cfg: HeadSettings) -> None:
    """Each trained module is replaced by a :class:`TrainableCopy` (the original stays frozen)."""
    if cfg.qformer_layers:
        _, qformer = find_qformer(model)
        for layer in list(qformer.encoder.layer)[-cfg.qformer_layers:]:
            for part in cfg.parts:
                if getattr(layer, part, None) is not None:
                    setattr(layer, part, TrainableCopy(getattr(layer, part)))
    if cfg.language_projection:
        if getattr(model, "language_projection", None) is None:
            raise ValueError(f"HeadSettings.language_projection trains the language projection, which "
                             f"{type(model).__name__} does not have; use it on "
                             "InstructBlipForConditionalGeneration or Blip2ForConditionalGeneration")
        model.language_projection = TrainableCopy(model.language_projection)


def patch_full(model: nn.Module) -> None:
    """The Q-Former, query tokens and language projection (the paper's 'fine-tune'); a bare Q-Former
    or T5 trains everything."""
    if is_qformer(model) or not hasattr(model, "qformer"):
        model.requires_grad_(True)
        return
    _, qformer = find_qformer(model)
    qformer.requires_grad_(True)
    model.query_tokens.requires_grad_(True)
    model.language_projection.requires_grad_(True)
