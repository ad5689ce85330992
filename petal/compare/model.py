"""The models a grid trains: the compare model (built from configs, pre-trained once and cached through
:func:`petal.embedded.pretrain_base`) or a Hugging Face InstructBLIP / BLIP-2 checkpoint.

A grid names its model as ``{"kind": "compare", "spec": {...EmbeddedSpec fields}, "pretrain": {...
PretrainSettings fields}}`` or ``{"kind": "hf", "name": "Salesforce/instructblip-flan-t5-xxl"}``.
"""

from __future__ import annotations

from dataclasses import asdict, fields
from pathlib import Path
from typing import Callable, Optional


def compare_spec(model: dict):
    """``(EmbeddedSpec, PretrainSettings)`` of a ``compare`` model entry (``ValueError`` on unknown keys)."""
    from ..embedded import EmbeddedSpec, PretrainSettings

    spec = _build(EmbeddedSpec, model.get("spec", {}), "model.spec")
    pretrain = dict(model.get("pretrain", {}))
    if "families" in pretrain:
        pretrain["families"] = tuple(pretrain["families"])
    return spec, _build(PretrainSettings, pretrain, "model.pretrain")


def _build(cls, values, where: str):
    if not isinstance(values, dict):
        raise ValueError(f"{where} must be an object, got {values!r}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; known keys are {sorted(known)}")
    return cls(**values)


def identity(model: dict) -> dict:
    """What identifies the base model in a run's key: the full spec and recipe, defaults filled in."""
    if model["kind"] == "compare":
        spec, pretrain = compare_spec(model)
        return {"kind": "compare", "spec": asdict(spec), "pretrain": asdict(pretrain)}
    return dict(model)


def load(model: dict, cache: Optional[Path] = None, log: Callable[[str], None] = print):
    """A :class:`petal.runs.LoadedModel` for the grid's model (pre-training the compare model if needed)."""
    from ..data.collate import WordCollator
    from ..runs import LoadedModel, load_model

    if model["kind"] == "hf":
        return load_model(model["name"], cache, log=log)
    from ..embedded import pretrain_base

    spec, pretrain = compare_spec(model)
    base, tok, info = pretrain_base(cache, spec=spec, settings=pretrain, log=log)
    size, queries = spec.image_size, spec.num_query_tokens
    collator = WordCollator(tok, queries, size, max_length=spec.max_text_length)
    return LoadedModel(base, collator, collator, tok.batch_decode, size, tok,
                       {"kind": "compare", **info, "spec": asdict(spec)})


__all__ = ["compare_spec", "identity", "load"]
