"""The comparison baselines: ``lora`` (through ``peft``), ``head`` (language projection), ``full``.

``patch`` has already frozen every parameter; these decide what becomes trainable (and, for LoRA,
insert ``peft``'s own layers with ``peft.inject_adapter_in_model``, in place).
"""

from __future__ import annotations

from torch import nn

from ..config import LoraSettings
from .qformer import find_qformer, is_qformer


def _qkv_regex(prefix: str, projections: tuple) -> str:
    head = f"{prefix}\\." if prefix else ""
    return (f"^{head}encoder\\.layer\\.\\d+\\.(attention|crossattention)\\.attention\\."
            f"({'|'.join(projections)})$")


def patch_lora(model: nn.Module, cfg: LoraSettings) -> None:
    from peft import LoraConfig, inject_adapter_in_model

    prefix, _ = find_qformer(model)
    lora = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                      target_modules=_qkv_regex(prefix, cfg.projections))
    inject_adapter_in_model(lora, model)
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)


def patch_head(model: nn.Module) -> None:
    head = getattr(model, "language_projection", None)
    if head is None:
        raise ValueError(f"preset 'head' trains the language projection, which {type(model).__name__} "
                         "does not have; use it on InstructBlipForConditionalGeneration or "
                         "Blip2ForConditionalGeneration")
    head.requires_grad_(True)


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
