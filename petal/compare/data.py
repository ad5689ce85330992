"""The data of a setting: train / val / test record sets, few-shot subsets, and the ids a run used.

A setting's ``data`` object:

* synthetic: ``{"source": "synthetic", "families": [...], "domain": "rotated", "seed": 1,
  "train_scenes": 300, "val_scenes": 25, "test_scenes": 50}``
* a hub data set or folder (anything ``petal train --data`` takes): ``{"source": "okvqa",
  "train_limit": null, "val_limit": 1000, "test_limit": null}``

and optionally ``"few_shot": N`` (train on N examples drawn from the training set by
:func:`petal.data.fewshot.few_shot` with ``few_shot_seed``, default 0: the same subset ``petal train
--few-shot N --seed S`` draws, the same for every method and seed of the setting; its ids go into every
result file) and ``"options": {...}``, more keyword arguments for
:class:`~petal.data.synthetic.SyntheticShapes` or :func:`~petal.data.sources.load_data` (e.g. a data set
revision, or ``"instructions": true`` for the synthetic records to carry the paper's three instructions,
which the methods that merge several instructions per image read and the others leave).
"""

from __future__ import annotations

from typing import Callable

_KEYS = {"source", "families", "domain", "seed", "train_scenes", "val_scenes", "test_scenes", "train_limit",
         "val_limit", "test_limit", "few_shot", "few_shot_seed", "options"}


def check(data: dict, where: str) -> None:
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown data keys {unknown}; known keys are {sorted(_KEYS)}")
    if not isinstance(data.get("options", {}), dict):
        raise ValueError(f"{where}: options must be an object of keyword arguments, got {data['options']!r}")
    few = data.get("few_shot")
    if few is not None and (isinstance(few, bool) or not isinstance(few, int) or few < 1):
        raise ValueError(f"{where}: few_shot must be null or a positive integer, got {few!r}")
    seed = data.get("few_shot_seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"{where}: few_shot_seed must be an integer, got {seed!r}")


def load_splits(data: dict, image_size: int) -> dict:
    """``{"train", "val", "test"}`` data sets of records for a setting's ``data`` object, and ``few_shot``:
    ``None``, or what the few-shot draw took (``{"few_shot", "seed", "num_records", "ids"}``)."""
    source = data.get("source", "synthetic")
    options = data.get("options", {})
    if source == "synthetic":
        from ..data.synthetic import FAMILIES, SyntheticShapes

        families = tuple(data.get("families") or FAMILIES)
        splits = {split: SyntheticShapes(split, num_scenes=data.get(f"{split}_scenes"),
                                         seed=data.get("seed", 0), families=families, image_size=image_size,
                                         domain=data.get("domain", "standard"), **options)
                  for split in ("train", "val", "test")}
    else:
        from ..data.sources import load_data

        splits = {split: load_data(source, split, limit=data.get(f"{split}_limit"), image_size=image_size,
                                   **options)
                  for split in ("train", "val", "test")}
    splits["few_shot"] = None
    if data.get("few_shot"):
        from ..data.fewshot import few_shot

        n, seed = data["few_shot"], data.get("few_shot_seed", 0)
        splits["train"], ids = few_shot(splits["train"], n, seed)
        splits["few_shot"] = {"few_shot": n, "seed": seed, "num_records": len(ids), "ids": ids}
    return splits


class RecordingCollator:
    """Wraps a collator and remembers the ids of the records it batched, in order of first use."""

    def __init__(self, collator: Callable):
        self.collator = collator
        self.ids: dict = {}

    def __call__(self, records):
        for r in records:
            self.ids[str(r.get("id"))] = self.ids.get(str(r.get("id")), 0) + 1
        return self.collator(records)


__all__ = ["RecordingCollator", "check", "load_splits"]
