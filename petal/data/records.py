"""The common record every data source yields, and the names all sources share.

A record is a dict::

    {"id": str, "image": PIL image | tensor | path, "task": "caption" | "vqa",
     "question": str,           # the VQA question, or the captioning instruction
     "answers": [str, ...],     # the human answers (VQA) or the reference captions
     "metric": str,             # optional: "caption" | "vqa" | "aokvqa" | "exact" (petal.metrics.scores)
     "difficult": bool}         # optional: A-OKVQA's difficult_direct_answer (left out of its score)
"""

from __future__ import annotations

from typing import Any

CAPTION_INSTRUCTION = "A short image caption:"
SPLITS = ("train", "val", "test")


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def make_record(rid: Any, image: Any, task: str, question: str, answers: list, metric: str, **extra) -> dict:
    return {"id": str(rid), "image": image, "task": task, "question": question, "answers": answers,
            "metric": metric, **extra}


__all__ = ["CAPTION_INSTRUCTION", "SPLITS", "check_split", "make_record"]
