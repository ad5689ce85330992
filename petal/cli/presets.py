"""``petal presets``: every preset with its trainable parameters on the embedded model and on the real
configuration of what it adapts (InstructBLIP's Q-Former, or T5-base), built from configs on the meta
device (no download, no memory)."""

from __future__ import annotations

import copy

from .common import fmt_count, table


def add_parser(sub) -> None:
    sub.add_parser("presets", help="list the presets with their trainable parameters (embedded model and "
                                   "the real InstructBLIP Q-Former / T5-base configurations)")


def _real_models() -> dict:
    import torch
    from transformers import (
        InstructBlipQFormerConfig,
        InstructBlipQFormerModel,
        T5Config,
        T5ForConditionalGeneration,
    )

    with torch.device("meta"):
        return {"qformer": ("InstructBLIP Q-Former", InstructBlipQFormerModel(InstructBlipQFormerConfig())),
                "t5": ("T5-base", T5ForConditionalGeneration(T5Config(
                    d_model=768, d_ff=3072, num_layers=12, num_heads=12, d_kv=64, vocab_size=32128)))}


def _count(petal, model, config, label: str = "") -> str:
    """``fmt_count`` of ``model`` patched with ``config``; with a ``label``, the count and the label."""
    try:
        petal.patch(model, config)
    except Exception as e:  # noqa: BLE001 - report and keep listing
        return f"n/a ({type(e).__name__}: {e})"
    try:
        params = petal.trainable_parameters(model)
        return f"{params.trainable:,} ({label})" if label else fmt_count(params)
    finally:
        petal.unpatch(model)


def run(args) -> int:
    import petal

    from ..embedded import build_embedded_model

    base, _ = build_embedded_model()
    total = sum(p.numel() for p in base.parameters())
    real = _real_models()
    rows = []
    for name in sorted(petal.PRESETS):
        config = petal.PetalConfig.from_preset(name)
        label, model = real["t5" if config.adapts == "t5" else "qformer"]
        rows.append([name, config.method, _count(petal, copy.deepcopy(base), config),
                     _count(petal, model, config, label)])
    print(f"presets on the embedded model ({total:,} parameters before patching; trainable, and % of all "
          "parameters after patching) and on real configurations:")
    print(table(["preset", "method", "embedded model", "real configuration"], rows))
    return 0
