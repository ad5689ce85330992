"""A local folder of images and annotations, as records (:mod:`petal.data.records`)::

    my_data/
      images/...                       # any layout; paths in the annotations are relative to my_data/
      annotations.jsonl                # or train.jsonl / val.jsonl / test.jsonl, one file per split

one JSON object per line: ``{"image": "images/1.jpg", "question": "...", "answers": ["..."]}`` for VQA,
``{"image": "images/2.jpg", "captions": ["...", "..."]}`` for captioning (``task`` may be given; it is
inferred otherwise), optional ``"id"``, ``"split"`` (a record without ``split`` belongs to every split of
``annotations.jsonl``), ``"metric"`` (``petal.metrics.scores``: by default the official VQA accuracy for
several answers, exact match for one), ``"difficult"``, and ``"instructions": ["...", "..."]``: several
instructions for the Q-Former (PETAL's multi-instruction AIM; the same number on every line).

Every listed image is opened and checked when the folder is loaded: a missing or unreadable file is an
error naming it, or, with ``skip_bad_images`` (CLI ``--skip-bad-images``), its records are left out and
counted (``FolderDataset.skipped``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional, Union

from torch.utils.data import Dataset

from .hub import strings
from .records import CAPTION_INSTRUCTION, check_split


def _folder_record(root: Path, entry: dict, line: int, source: Path) -> dict:
    from ..metrics.scores import METRICS

    where = f"{source}:{line}"
    if not isinstance(entry, dict) or "image" not in entry:
        raise ValueError(f"{where}: each line must be a JSON object with an 'image' path")
    captions = entry.get("captions", entry.get("caption"))
    answers = entry.get("answers", entry.get("answer"))
    task = entry.get("task") or ("caption" if captions is not None else "vqa")
    if task not in ("caption", "vqa"):
        raise ValueError(f"{where}: task must be 'caption' or 'vqa', got {task!r}")
    refs = strings(captions if task == "caption" and captions is not None else answers, "answers")
    if not refs:
        raise ValueError(f"{where}: a {task} record needs {'captions' if task == 'caption' else 'answers'}")
    question = entry.get("question") or (CAPTION_INSTRUCTION if task == "caption" else None)
    if not question:
        raise ValueError(f"{where}: a vqa record needs a 'question'")
    record = {"id": str(entry.get("id", f"{source.stem}-{line}")), "image": (root / entry["image"]).resolve(),
              "task": task, "question": question, "answers": refs}
    metric = entry.get("metric")
    if metric is not None:
        if metric not in METRICS or (metric == "caption") != (task == "caption"):
            raise ValueError(f"{where}: a {task} record cannot use metric {metric!r} (metrics: {METRICS})")
        record["metric"] = metric
    if "difficult" in entry:
        if not isinstance(entry["difficult"], bool):
            raise ValueError(f"{where}: difficult must be true or false, got {entry['difficult']!r}")
        record["difficult"] = entry["difficult"]
    instructions = entry.get("instructions")
    if instructions is not None:
        if (isinstance(instructions, str) or not isinstance(instructions, list) or not instructions
                or not all(isinstance(t, str) and t.strip() for t in instructions)):
            raise ValueError(f"{where}: 'instructions' must be a non-empty list of non-empty strings, "
                             f"got {instructions!r}")
        record["instructions"] = instructions
    return record


def _unreadable(path: Path) -> Optional[str]:
    """Why ``path`` cannot be used as an image, or None."""
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        return "does not exist"
    try:
        with Image.open(path) as im:
            im.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        return f"is not a readable image ({type(e).__name__}: {e})"
    return None


class FolderDataset(Dataset):
    """A local folder in the format of the module docstring; images are opened on access."""

    def __init__(self, root: Union[str, Path], split: str = "train", skip_bad_images: bool = False,
                 log: Optional[Callable[[str], None]] = None):
        check_split(split)
        self.root = Path(root)
        if not self.root.is_dir():
            raise ValueError(f"data folder {self.root} does not exist")
        per_split = self.root / f"{split}.jsonl"
        source = per_split if per_split.is_file() else self.root / "annotations.jsonl"
        if not source.is_file():
            raise ValueError(f"{self.root} has neither {split}.jsonl nor annotations.jsonl")
        self.records = []
        for n, line in enumerate(source.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{source}:{n}: not valid JSON ({e})") from None
            if source.name == "annotations.jsonl" and entry.get("split", split) != split:
                continue
            self.records.append(_folder_record(self.root, entry, n, source))
        bad = {}
        for path in dict.fromkeys(r["image"] for r in self.records):
            why = _unreadable(path)
            if why is not None:
                bad[path] = why
        self.skipped = sum(r["image"] in bad for r in self.records)
        if bad and not skip_bad_images:
            path, why = next(iter(bad.items()))
            raise ValueError(f"{len(bad)} image(s) listed in {source} cannot be used, e.g. {path} {why} "
                             "(--skip-bad-images leaves their records out)")
        if bad:
            self.records = [r for r in self.records if r["image"] not in bad]
            if log is not None:
                log(f"skipped {self.skipped} record(s) of {len(bad)} missing or unreadable image(s) "
                    f"in {source}")
            if not self.records:
                raise ValueError(f"no record of {source} has a readable image")

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        from PIL import Image

        record = dict(self.records[index])
        with Image.open(record["image"]) as im:
            record["image"] = im.convert("RGB")
        return record


__all__ = ["FolderDataset"]
