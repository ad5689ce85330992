"""The five hub data sets of the papers, as records (:mod:`petal.data.records`), through ``datasets``.

Three of them (``nlphuji/flickr30k``, ``HuggingFaceM4/OK-VQA``, ``facebook/textvqa``) are loading-script
repositories, which current ``datasets`` refuses to run; they are read from the hub's parquet export of
the same data (``revision="refs/convert/parquet"``, one directory per config). The other two are parquet
repositories read as they are. ``path`` (CLI ``--data-path``) reads a local copy instead: a directory laid
out like the hub repository at that revision (the config directory or the repository root), or a data set
saved with ``save_to_disk``; ``revision`` (``--data-revision``) pins another hub revision. A parquet export
may hold only part of a split larger than 5 GB (directories named ``partial-<split>``); a local copy of the
full data avoids that.

Which hub split each of our splits reads (:data:`HUB_SOURCES`; :func:`split_table` prints it). No split is
mapped silently onto another: a split a data set does not have is refused with the reason.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from torch.utils.data import Dataset

from .records import CAPTION_INSTRUCTION, check_split, make_record


def strings(value: Any, field_name: str) -> list[str]:
    """Answers/captions from the shapes hub data sets use: a list of strings, a list of dicts with an
    ``answer``/``caption`` entry, or a columnar dict of lists (a ``datasets.Sequence`` of dicts)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        for key in ("answer", "caption", "text"):
            if key in value:
                return strings(value[key], field_name)
        raise ValueError(f"cannot read {field_name} from a dict with keys {sorted(value)}")
    out = []
    for item in value:
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, dict) and isinstance(item.get("answer", item.get("caption")), str):
            out.append(item.get("answer", item.get("caption")))
        else:
            raise ValueError(f"cannot read {field_name} from an entry {item!r}")
    return out


def parse_list_string(value: Any, field_name: str, rid: Any) -> list[str]:
    """A list of strings stored as the text of a Python list (A-OKVQA's hub ``direct_answers``), read
    with ``ast.literal_eval`` (never ``eval``); a real list passes through."""
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise ValueError(f"question {rid}: {field_name} is neither a list nor the text of one: "
                             f"{value[:80]!r}") from None
    if not isinstance(value, (list, tuple)) or not all(isinstance(a, str) for a in value):
        raise ValueError(f"question {rid}: {field_name} must be a list of strings, got {value!r}")
    return list(value)


def map_flickr30k(row: dict, index: int) -> dict:
    """``nlphuji/flickr30k``: ``image``, ``caption`` (5 strings), ``img_id``."""
    return make_record(row.get("img_id", index), row["image"], "caption", CAPTION_INSTRUCTION,
                       strings(row["caption"], "caption"), "caption")


def map_textcaps(row: dict, index: int) -> dict:
    """``lmms-lab/TextCaps``: one row per image, ``reference_strs`` (else ``caption_str``), ``image_id``."""
    refs = (strings(row.get("reference_strs"), "reference_strs")
            or strings(row.get("caption_str"), "caption_str"))
    return make_record(row.get("image_id", index), row["image"], "caption", CAPTION_INSTRUCTION, refs,
                       "caption")


def map_okvqa(row: dict, index: int) -> dict:
    """``HuggingFaceM4/OK-VQA``: ``answers`` as dicts whose ``answer`` (not ``raw_answer``) is scored."""
    return make_record(row.get("question_id", index), row["image"], "vqa", row["question"],
                       strings(row["answers"], "answers"), "vqa")


def map_aokvqa(row: dict, index: int) -> dict:
    """``HuggingFaceM4/A-OKVQA``: ``direct_answers`` (10 strings, stored as the text of a Python list),
    ``difficult_direct_answer``; the multiple-choice fields are not used."""
    rid = row.get("question_id", index)
    return make_record(rid, row["image"], "vqa", row["question"],
                       parse_list_string(row["direct_answers"], "direct_answers", rid), "aokvqa",
                       difficult=bool(row.get("difficult_direct_answer", False)))


def map_textvqa(row: dict, index: int) -> dict:
    """``facebook/textvqa``: ``question``, ``answers`` (10 strings), ``question_id``."""
    return make_record(row.get("question_id", index), row["image"], "vqa", row["question"],
                       strings(row["answers"], "answers"), "vqa")


@dataclass(frozen=True)
class HubSource:
    repo: str
    mapper: Callable[[dict, int], dict]
    id_column: str
    splits: dict                        # our split -> the hub split (None: the data set has none)
    no_split: str = ""                  # why a None split does not exist, and what to use
    revision: Optional[str] = None      # None: the repository's default branch
    config_dir: Optional[str] = None    # the config's directory at that revision
    split_column: Optional[str] = None  # one hub split holds all; this column says which is which
    split_values: dict = field(default_factory=dict)


_PARQUET_EXPORT = "refs/convert/parquet"
HUB_SOURCES = {
    "flickr30k": HubSource("nlphuji/flickr30k", map_flickr30k, "img_id",
                           {"train": "test", "val": "test", "test": "test"}, revision=_PARQUET_EXPORT,
                           config_dir="TEST", split_column="split",
                           split_values={"train": "train", "val": "val", "test": "test"}),
    "textcaps": HubSource("lmms-lab/TextCaps", map_textcaps, "image_id",
                          {"train": "train", "val": "val", "test": None},
                          no_split="TextCaps' test captions are withheld (evaluation server); the papers "
                          "report val"),
    "okvqa": HubSource("HuggingFaceM4/OK-VQA", map_okvqa, "question_id",
                       {"train": "train", "val": "validation", "test": None}, revision=_PARQUET_EXPORT,
                       config_dir="default", no_split="OK-VQA has train and val2014 only; the papers' OK-VQA "
                       "'test' numbers are on val2014, which is our 'val'"),
    "aokvqa": HubSource("HuggingFaceM4/A-OKVQA", map_aokvqa, "question_id",
                        {"train": "train", "val": "validation", "test": None},
                        no_split="A-OKVQA's test answers are hidden (leaderboard); the papers report val"),
    "textvqa": HubSource("facebook/textvqa", map_textvqa, "question_id",
                         {"train": "train", "val": "validation", "test": None}, revision=_PARQUET_EXPORT,
                         config_dir="textvqa", no_split="TextVQA's test answers are hidden (evaluation "
                         "server); the papers report val"),
}


def describe_split(name: str, split: str) -> str:
    """Where our ``split`` of hub source ``name`` comes from, in words."""
    src = HUB_SOURCES[name]
    hub = src.splits[split]
    if hub is None:
        return f"{name} has no '{split}' split: {src.no_split}"
    where = (src.repo + (f"@{src.revision}" if src.revision else "")
             + (f" {src.config_dir}/" if src.config_dir else ""))
    rows = f" rows with {src.split_column} == '{src.split_values[split]}'" if src.split_column else ""
    return f"{name} {split}: {where} split '{hub}'{rows}"


def split_table() -> str:
    return "\n".join(describe_split(n, s) for n in HUB_SOURCES for s in ("train", "val", "test"))


class RecordDataset(Dataset):
    """Rows of a ``datasets.Dataset`` mapped to records on access (images are decoded then)."""

    def __init__(self, rows, mapper: Callable[[dict, int], dict], id_column: Optional[str] = None):
        self.rows, self.mapper, self.id_column = rows, mapper, id_column

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        return self.mapper(self.rows[index], index)

    def record_ids(self) -> list[str]:
        """Every record's id, read from the id column alone (no image is decoded)."""
        if self.id_column is None or self.id_column not in self.rows.column_names:
            return [str(i) for i in range(len(self))]
        return [str(v) for v in self.rows[self.id_column]]


def _saved_dataset(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def _load_rows(name: str, src: HubSource, hub_split: str, path: Optional[str], revision: Optional[str]):
    from datasets import DatasetDict, load_dataset, load_from_disk

    if path is not None:
        local = Path(path)
        if not local.is_dir():
            raise ValueError(f"--data-path {path} is not a directory")
        if _saved_dataset(local):
            data = load_from_disk(str(local))
            if isinstance(data, DatasetDict):
                if hub_split not in data:
                    raise ValueError(f"--data-path {path} (a saved {name}) has splits {sorted(data)}, not "
                                     f"'{hub_split}'")
                return data[hub_split]
            if len(set(src.splits.values()) - {None}) > 1:
                raise ValueError(f"--data-path {path} holds one saved split; {name} needs a DatasetDict with "
                                 f"its splits {sorted(set(src.splits.values()) - {None})}")
            return data
        repo = str(local)
        config_dir = src.config_dir if src.config_dir and (local / src.config_dir).is_dir() else None
    else:
        repo, config_dir, revision = src.repo, src.config_dir, revision or src.revision
    try:
        return load_dataset(repo, data_dir=config_dir, revision=revision, split=hub_split)
    except ValueError as e:
        if "Unknown split" in str(e):
            raise ValueError(f"{name}: {repo} has no split '{hub_split}' ({e})") from None
        raise


def load_hub(name: str, split: str, limit: Optional[int] = None, path: Optional[str] = None,
             revision: Optional[str] = None, log: Optional[Callable[[str], None]] = None) -> RecordDataset:
    """Our ``split`` of hub source ``name`` as records; ``path``/``revision``: see the module docstring."""
    check_split(split)
    if name not in HUB_SOURCES:
        raise ValueError(f"unknown hub source {name!r}; hub sources are {sorted(HUB_SOURCES)}")
    src = HUB_SOURCES[name]
    hub_split = src.splits[split]
    if hub_split is None:
        raise ValueError(f"{describe_split(name, split)}; evaluate on split 'val' (petal eval --split val, "
                         "petal train --eval-split val)")
    if log is not None:
        log(describe_split(name, split) + (f" (local copy {path})" if path else ""))
    rows = _load_rows(name, src, hub_split, path, revision)
    if src.split_column is not None:
        if src.split_column not in rows.column_names:
            raise ValueError(f"{name}: the '{hub_split}' split has no '{src.split_column}' column to select "
                             f"'{split}' rows by (columns: {rows.column_names})")
        wanted = src.split_values[split]
        rows = rows.select([i for i, s in enumerate(rows[src.split_column]) if s == wanted])
    if limit is not None:
        rows = rows.select(range(min(limit, len(rows))))
    if len(rows) == 0:
        raise ValueError(f"{describe_split(name, split)} has no rows" + (f" in {path}" if path else ""))
    return RecordDataset(rows, src.mapper, src.id_column)


__all__ = ["HUB_SOURCES", "HubSource", "RecordDataset", "describe_split", "load_hub", "map_aokvqa",
           "map_flickr30k", "map_okvqa", "map_textcaps", "map_textvqa", "parse_list_string", "split_table",
           "strings"]
