"""A-OKVQA's direct-answer accuracy, as its official evaluation computes it.

This reproduces ``eval_aokvqa`` in ``evaluation/eval_predictions.py`` of GitHub allenai/aokvqa (direct-answer
setting): a prediction scores ``min(1, #direct answers equal to it / 3)`` over all ten answers (no
leave-one-out), compared with ``==`` as they are: no lower-casing, no stripping, no punctuation or article
handling. Questions marked ``difficult_direct_answer`` are left out of the corpus score.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

from ._inputs import check_answers


def aokvqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """``min(1, #answers == prediction / 3)``, exact string equality."""
    check_answers(prediction, answers)
    return min(1.0, sum(prediction == a for a in answers) / 3.0)


def aokvqa_score(predictions: Sequence[str], answers: Sequence[Sequence[str]],
                 difficult: Sequence[bool]) -> tuple[Optional[float], int]:
    """Mean :func:`aokvqa_accuracy` over the questions not marked difficult, and how many were skipped.
    The mean is ``None`` when every question is difficult (the official script divides by zero)."""
    if not len(predictions) == len(answers) == len(difficult):
        raise ValueError(f"predictions, answers and difficult must have the same length, got "
                         f"{len(predictions)}, {len(answers)} and {len(difficult)}")
    kept = [aokvqa_accuracy(p, a) for p, a, d in zip(predictions, answers, difficult) if not d]
    return (sum(kept) / len(kept) if kept else None), len(predictions) - len(kept)


__all__ = ["aokvqa_accuracy", "aokvqa_score"]
