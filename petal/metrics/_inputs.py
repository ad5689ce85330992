"""Input checks shared by the scorers: each error names the argument and what was wrong."""

from __future__ import annotations


def check_answers(prediction, answers) -> None:
    """One prediction (a string) against a non-empty list of answer strings."""
    if not isinstance(prediction, str):
        raise TypeError(f"prediction must be a str, got {type(prediction).__name__}")
    if isinstance(answers, str) or not answers or not all(isinstance(a, str) for a in answers):
        raise ValueError(f"answers must be a non-empty list of strings, got {answers!r}")


def check_captions(predictions, references) -> None:
    """One prediction per image against that image's non-empty list of reference captions."""
    if isinstance(predictions, str) or isinstance(references, str):
        raise ValueError("predictions and references must be lists (one entry per image), not strings")
    if len(predictions) != len(references):
        raise ValueError(f"predictions and references must have the same length, got {len(predictions)} "
                         f"and {len(references)}")
    if not predictions:
        raise ValueError("nothing to score: predictions is empty")
    for i, refs in enumerate(references):
        if isinstance(refs, str) or not refs:
            raise ValueError(f"references[{i}] must be a non-empty list of captions, got {refs!r}")
