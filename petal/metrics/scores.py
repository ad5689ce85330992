"""Scoring a set of records, each by the metric it names.

A record's ``metric`` says which scorer reads it:

* ``caption`` — CIDEr-D after PTB tokenisation (pycocoevalcap) and ROUGE-1/ROUGE-L (rouge-score, or the
  PETAL paper's code);
* ``vqa`` — :func:`~petal.metrics.vqa.vqa_accuracy` (GT-Vision-Lab/VQA ``vqaEval.py``);
* ``aokvqa`` — :func:`~petal.metrics.aokvqa.aokvqa_accuracy` (allenai/aokvqa ``eval_predictions.py``),
  records marked ``difficult`` left out;
* ``exact`` — :func:`~petal.metrics.vqa.exact_match` (no official counterpart: single-answer data).

A record without ``metric`` gets :func:`default_metric`: ``caption`` for captions; for VQA, ``vqa`` when it
has several answers and ``exact`` when it has one (the official formula scores a single answer 0 whatever
the prediction). The hub loaders set ``metric`` explicitly.

The result holds ``vqa_accuracy`` (the mean over the VQA-like records) with ``vqa_scorer`` naming the scorer
(``"vqaEval"``, ``"aokvqa-da"``, ``"exact-match"``, or ``"mixed"`` with ``vqa_accuracy_by_scorer``),
``vqa_skipped_difficult`` for A-OKVQA, and for captions ``cider``, ``cider_tokenizer``, the ROUGE keys and
``rouge_variant``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

from .aokvqa import aokvqa_accuracy
from .cider import cider
from .rouge import rouge
from .vqa import exact_match, vqa_accuracy

METRICS = ("caption", "vqa", "aokvqa", "exact")
_SCORERS = {"vqa": ("vqaEval", vqa_accuracy), "aokvqa": ("aokvqa-da", aokvqa_accuracy),
            "exact": ("exact-match", exact_match)}


def default_metric(task: str, answers: Sequence[str]) -> str:
    """The metric of a record that names none (see the module docstring)."""
    if task == "caption":
        return "caption"
    return "vqa" if len(answers) > 1 else "exact"


def caption_scores(predictions: Sequence[str], references: Sequence[Sequence[str]], tokenizer: str = "auto",
                   rouge_variant: str = "rouge-score") -> dict:
    c = cider(predictions, references, tokenizer)
    return {"cider": c.score, "cider_tokenizer": c.tokenizer, **rouge(predictions, references, rouge_variant)}


def vqa_scores(predictions: Sequence[str], answers: Sequence[Sequence[str]], metrics: Sequence[str],
               difficult: Optional[Sequence[bool]] = None) -> dict:
    """Mean accuracy of VQA-like records, each by its metric (``vqa``, ``aokvqa`` or ``exact``);
    ``aokvqa`` records marked ``difficult`` are counted in ``vqa_skipped_difficult`` instead."""
    difficult = difficult if difficult is not None else [False] * len(predictions)
    if not len(predictions) == len(answers) == len(metrics) == len(difficult):
        raise ValueError("predictions, answers, metrics and difficult must have the same length, got "
                         f"{len(predictions)}, {len(answers)}, {len(metrics)} and {len(difficult)}")
    by: dict = {}
    skipped = 0
    for pred, ans, metric, hard in zip(predictions, answers, metrics, difficult):
        if metric not in _SCORERS:
            raise ValueError(f"a VQA record's metric must be one of {sorted(_SCORERS)}, got {metric!r}")
        if metric == "aokvqa" and hard:
            skipped += 1
            continue
        name, scorer = _SCORERS[metric]
        by.setdefault(name, []).append(scorer(pred, ans))
    out: dict = {}
    if by:
        scores = [s for values in by.values() for s in values]
        out["vqa_accuracy"] = sum(scores) / len(scores)
        out["vqa_scorer"] = next(iter(by)) if len(by) == 1 else "mixed"
        if len(by) > 1:
            out["vqa_accuracy_by_scorer"] = {k: sum(v) / len(v) for k, v in sorted(by.items())}
    if "aokvqa" in metrics:
        out["vqa_skipped_difficult"] = skipped
    return out


def task_scores(records: Sequence[dict], predictions: Sequence[str], tokenizer: str = "auto",
                rouge_variant: str = "rouge-score") -> dict:
    """Caption metrics over the caption records and VQA accuracy over the others. ``records`` are dicts
    with ``task`` and ``answers`` and optionally ``metric`` and ``difficult``."""
    if len(records) != len(predictions):
        raise ValueError(f"records and predictions must have the same length, got {len(records)} and "
                         f"{len(predictions)}")
    if not records:
        raise ValueError("nothing to score: no records")
    metrics = []
    for r in records:
        if r.get("task") not in ("caption", "vqa"):
            raise ValueError(f"record {r.get('id')!r}: task must be 'caption' or 'vqa', got "
                             f"{r.get('task')!r}")
        metric = r.get("metric") or default_metric(r["task"], r["answers"])
        if metric not in METRICS or (metric == "caption") != (r["task"] == "caption"):
            raise ValueError(f"record {r.get('id')!r}: a {r['task']} record cannot be scored with metric "
                             f"{metric!r} (metrics: {METRICS})")
        metrics.append(metric)
    cap = [i for i, m in enumerate(metrics) if m == "caption"]
    vqa = [i for i, m in enumerate(metrics) if m != "caption"]
    out: dict = {}
    if cap:
        out.update(caption_scores([predictions[i] for i in cap], [records[i]["answers"] for i in cap],
                                  tokenizer, rouge_variant))
    if vqa:
        out.update(vqa_scores([predictions[i] for i in vqa], [records[i]["answers"] for i in vqa],
                              [metrics[i] for i in vqa], [bool(records[i].get("difficult")) for i in vqa]))
    return out


__all__ = ["METRICS", "caption_scores", "default_metric", "task_scores", "vqa_scores"]
