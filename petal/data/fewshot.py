"""Few-shot training subsets: ``n`` examples drawn at random with the run's seed, recorded by id.

An example is a question for VQA records and an image for caption records (every caption record of the
chosen image is kept: a folder may list one caption per line). Hub data sets hold one row per question or
per image, so a row is an example; in-memory data sets (folders, the synthetic set) are grouped by image
path for captions. The same (data, ``n``, seed) always gives the same subset; the chosen ids are written
to ``few_shot_ids.json`` in the run directory, and a resumed run must draw the same ones.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Union

from torch.utils.data import Dataset, Subset

FEW_SHOT_FILE = "few_shot_ids.json"


def examples(dataset: Dataset) -> tuple[list[list[int]], list[str]]:
    """The examples of ``dataset`` (each a list of record indices) and every record's id, read without
    decoding images."""
    records = getattr(dataset, "records", None)
    if records is None:  # hub rows: one per question (VQA) or per image (captions)
        has_ids = hasattr(dataset, "record_ids")
        ids = dataset.record_ids() if has_ids else [str(i) for i in range(len(dataset))]
        return [[i] for i in range(len(ids))], ids
    groups: dict = {}
    for i, r in enumerate(records):
        by_image = r.get("task") == "caption" and isinstance(r.get("image"), (str, Path))
        groups.setdefault(("image", str(r["image"])) if by_image else ("record", i), []).append(i)
    return list(groups.values()), [str(r.get("id", i)) for i, r in enumerate(records)]


def few_shot(dataset: Dataset, n: int, seed: int) -> tuple[Subset, list[str]]:
    """``n`` examples of ``dataset`` drawn with ``seed`` (records kept in data order) and their ids."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"few-shot size must be a positive integer, got {n!r}")
    groups, ids = examples(dataset)
    if n > len(groups):
        raise ValueError(f"--few-shot {n} asks for more examples than the {len(groups)} the training split "
                         "has")
    chosen = random.Random(seed).sample(range(len(groups)), n)
    indices = sorted(i for g in chosen for i in groups[g])
    return Subset(dataset, indices), [ids[i] for i in indices]


def take_few_shot(dataset: Dataset, n: int, seed: int, run_dir: Union[str, Path],
                  resume: bool = False) -> tuple[Subset, dict]:
    """:func:`few_shot` and the entry :func:`record_few_shot` writes; nothing is written here. On
    ``resume`` the run's ``few_shot_ids.json`` must name the same records (else the data or the seed
    changed and the run would continue on other data)."""
    subset, ids = few_shot(dataset, n, seed)
    path = Path(run_dir) / FEW_SHOT_FILE
    if resume and path.is_file():
        try:
            before = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: not a readable few-shot id file ({e})") from None
        if not isinstance(before, dict) or before.get("ids") != ids:
            raise ValueError(f"{path} names other training records than --few-shot {n} with seed {seed} "
                             "draws now (the data or the seed changed); start a new run directory")
    return subset, {"few_shot": n, "seed": seed, "num_records": len(ids), "ids": ids}


def record_few_shot(run_dir: Union[str, Path], entry: dict) -> Path:
    """Write ``entry`` to ``run_dir/few_shot_ids.json`` atomically."""
    path = Path(run_dir) / FEW_SHOT_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(entry, indent=1) + "\n")
    tmp.replace(path)
    return path


__all__ = ["FEW_SHOT_FILE", "examples", "few_shot", "record_few_shot", "take_few_shot"]
