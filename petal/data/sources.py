"""Real data: hub data sets through ``datasets``, and a local folder format, as common records.

A record is a dict::

    {"id": str, "image": PIL image | tensor, "task": "caption" | "vqa",
     "question": str,          # the VQA question, or the captioning instruction
     "answers": [str, ...]}    # the human answers (VQA) or the reference captions

Hub sources (need the network or a warm ``datasets`` cache): ``flickr30k``, ``textcaps``, ``okvqa``,
``aokvqa``, ``textvqa``; each has a ``map_<name>(row, index)`` that turns one row of the hub data set
into a record. Local folder format::

    my_data/
      images/...                       # any layout; paths in the annotations are relative to my_data/
      annotations.jsonl                # or train.jsonl / val.jsonl / test.jsonl, one file per split

one JSON object per line: ``{"image": "images/1.jpg", "question": "...", "answers": ["..."]}`` for VQA,
``{"image": "images/2.jpg", "captions": ["...", "..."]}`` for captioning (``task`` may be given; it is
inferred otherwise), optional ``"id"`` and ``"split"`` (a record without ``split`` belongs to every
split of ``annotations.jsonl``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Union

from torch.utils.data import Dataset

CAPTION_INSTRUCTION = "A short image caption:"
SPLITS = ("train", "val", "test")


def _strings(value: Any, field: str) -> list[str]:
    """Answers/captions from the shapes hub data sets use: a string, a list of strings, or a list of
    dicts with an ``answer``/``raw``/``caption`` entry."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):  # columnar form, e.g. {"answer": [...], ...}
        for key in ("answer", "answers", "raw", "caption", "text"):
            if key in value:
                return _strings(value[key], field)
        raise ValueError(f"cannot read {field} from a dict with keys {sorted(value)}")
    out = []
    for item in value:
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, dict):
            keys = ("answer", "raw_answer", "raw", "caption", "text")
            text = next((item[k] for k in keys if k in item), None)
            if not isinstance(text, str):
                raise ValueError(f"cannot read {field} from an entry with keys {sorted(item)}")
            out.append(text)
        else:
            raise ValueError(f"{field} entries must be strings or dicts, got {type(item).__name__}")
    return out


def _record(rid: Any, image: Any, task: str, question: str, answers: list[str]) -> dict:
    return {"id": str(rid), "image": image, "task": task, "question": question, "answers": answers}


def map_flickr30k(row: dict, index: int) -> dict:
    """``nlphuji/flickr30k``: ``image``, ``caption`` (5 strings), ``img_id``/``filename``."""
    rid = row.get("img_id", row.get("filename", index))
    return _record(rid, row["image"], "caption", CAPTION_INSTRUCTION, _strings(row["caption"], "caption"))


def map_textcaps(row: dict, index: int) -> dict:
    """``lmms-lab/TextCaps``: ``image``, ``reference_strs`` (or ``caption_str``), ``image_id``."""
    refs = (_strings(row.get("reference_strs"), "reference_strs")
            or _strings(row.get("caption_str"), "caption_str"))
    rid = row.get("question_id", row.get("image_id", index))
    return _record(rid, row["image"], "caption", CAPTION_INSTRUCTION, refs)


def map_okvqa(row: dict, index: int) -> dict:
    """``HuggingFaceM4/OK-VQA`` (answers as dicts) or ``lmms-lab/OK-VQA`` (answers as strings)."""
    return _record(row.get("question_id", index), row["image"], "vqa", row["question"],
                   _strings(row["answers"], "answers"))


def map_aokvqa(row: dict, index: int) -> dict:
    """``HuggingFaceM4/A-OKVQA``: ``direct_answers`` (10 strings); multiple choice is not used."""
    return _record(row.get("question_id", index), row["image"], "vqa", row["question"],
                   _strings(row["direct_answers"], "direct_answers"))


def map_textvqa(row: dict, index: int) -> dict:
    """``facebook/textvqa``: ``question``, ``answers`` (10 strings), ``question_id``."""
    return _record(row.get("question_id", index), row["image"], "vqa", row["question"],
                   _strings(row["answers"], "answers"))


@dataclass(frozen=True)
class HubSource:
    path: str
    task: str
    splits: dict                        # our split -> the hub split
    mapper: Callable[[dict, int], dict]
    split_column: Optional[str] = None  # when one hub split holds all and a column says which


HUB_SOURCES = {
    "flickr30k": HubSource("nlphuji/flickr30k", "caption", {"train": "test", "val": "test", "test": "test"},
                           map_flickr30k, split_column="split"),
    "textcaps": HubSource("lmms-lab/TextCaps", "caption", {"train": "train", "val": "val", "test": "val"},
                          map_textcaps),
    "okvqa": HubSource("HuggingFaceM4/OK-VQA", "vqa", {"train": "train", "val": "validation",
                                                      "test": "validation"}, map_okvqa),
    "aokvqa": HubSource("HuggingFaceM4/A-OKVQA", "vqa", {"train": "train", "val": "validation",
                                                        "test": "validation"}, map_aokvqa),
    "textvqa": HubSource("facebook/textvqa", "vqa", {"train": "train", "val": "validation",
                                                    "test": "validation"}, map_textvqa),
}


class RecordDataset(Dataset):
    """Rows of a ``datasets.Dataset`` (or any indexable of dicts) mapped to records on access."""

    def __init__(self, rows, mapper: Callable[[dict, int], dict]):
        self.rows, self.mapper = rows, mapper

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        return self.mapper(self.rows[index], index)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def load_hub(name: str, split: str, limit: Optional[int] = None, path: Optional[str] = None,
             **load_kwargs) -> RecordDataset:
    """A hub source as records (``datasets.load_dataset``; needs the network or a warm cache)."""
    from datasets import load_dataset

    _check_split(split)
    if name not in HUB_SOURCES:
        raise ValueError(f"unknown data source {name!r}; hub sources are {sorted(HUB_SOURCES)}")
    src = HUB_SOURCES[name]
    rows = load_dataset(path or src.path, split=src.splits[split], **load_kwargs)
    if src.split_column is not None and src.split_column in rows.column_names:
        wanted = {"train": "train", "val": "val", "test": "test"}[split]
        rows = rows.filter(lambda s: s == wanted, input_columns=[src.split_column])
    if limit is not None:
        rows = rows.select(range(min(limit, len(rows))))
    return RecordDataset(rows, src.mapper)


# ---------------------------------------------------------------------- local folders


def _folder_record(root: Path, entry: dict, line: int, source: Path) -> dict:
    where = f"{source}:{line}"
    if not isinstance(entry, dict) or "image" not in entry:
        raise ValueError(f"{where}: each line must be a JSON object with an 'image' path")
    captions = entry.get("captions", entry.get("caption"))
    answers = entry.get("answers", entry.get("answer"))
    task = entry.get("task") or ("caption" if captions is not None else "vqa")
    if task not in ("caption", "vqa"):
        raise ValueError(f"{where}: task must be 'caption' or 'vqa', got {task!r}")
    refs = _strings(captions if task == "caption" and captions is not None else answers, "answers")
    if not refs:
        raise ValueError(f"{where}: a {task} record needs {'captions' if task == 'caption' else 'answers'}")
    question = entry.get("question") or (CAPTION_INSTRUCTION if task == "caption" else None)
    if not question:
        raise ValueError(f"{where}: a vqa record needs a 'question'")
    image_path = (root / entry["image"]).resolve()
    return {"id": str(entry.get("id", f"{source.stem}-{line}")), "image": image_path, "task": task,
            "question": question, "answers": refs}


class FolderDataset(Dataset):
    """A local folder in the format of the module docstring; images are opened on access."""

    def __init__(self, root: Union[str, Path], split: str = "train"):
        _check_split(split)
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
        missing = [r["image"] for r in self.records if not r["image"].is_file()]
        if missing:
            raise ValueError(f"{len(missing)} image(s) listed in {source} do not exist, e.g. {missing[0]}")

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        from PIL import Image

        record = dict(self.records[index])
        with Image.open(record["image"]) as im:
            record["image"] = im.convert("RGB")
        return record


def load_data(spec: str, split: str, limit: Optional[int] = None, seed: int = 0,
              synthetic_families: Optional[tuple] = None, image_size: int = 32,
              synthetic_domain: str = "standard") -> Dataset:
    """``synthetic``, a hub source name, or a folder path -> a data set of records."""
    _check_split(split)
    if spec == "synthetic":
        from .synthetic import FAMILIES, SyntheticShapes

        families = synthetic_families or FAMILIES
        scenes = None if limit is None else -(-limit // len(families))  # a scene gives one record per family
        data = SyntheticShapes(split, num_scenes=scenes, seed=seed, families=families, image_size=image_size,
                               domain=synthetic_domain)
        if limit is not None:
            data.records = data.records[:limit]
        return data
    if spec in HUB_SOURCES:
        return load_hub(spec, split, limit=limit)
    if Path(spec).is_dir():
        data = FolderDataset(spec, split)
        if limit is not None and limit < len(data):
            data.records = data.records[:limit]
        return data
    raise ValueError(f"data must be 'synthetic', one of {sorted(HUB_SOURCES)}, or an existing folder; "
                     f"got {spec!r}")


__all__ = ["FolderDataset", "HUB_SOURCES", "HubSource", "RecordDataset", "load_data", "load_hub",
           "map_aokvqa", "map_flickr30k", "map_okvqa", "map_textcaps", "map_textvqa"]
