"""ROUGE-1 and ROUGE-L (F1 and recall, fractions) in two stated variants.

``"rouge-score"`` (the default): Google's ``rouge_score`` package (lower-cased, non-alphanumerics as
spaces, Porter stemming), each prediction scored against its best reference (``score_multi``).

``"petal-paper"``: what the PETAL paper's released code (GitHub melonking32/PETAL,
``lavis/tasks/cider/caption_metric.py``) computes with the ``rouge`` package (pltrdy/rouge 1.0.1), averaged
over the references of each image: captions are split into sentences at every ".", words at single spaces
(case kept, no stemming); ROUGE-1 compares the *sets* of words, ROUGE-L is the summary-level union-LCS over
sets of words; ``f = 2pr / (p + r + 1e-8)``. An empty prediction scores 0 (the package raises). Note: that
code stores ROUGE-1 under all three names it reports (``result_dict['Rogue_l'] = Rogue_score_1``), so the
paper's "ROUGE-L" column is this variant's ``rouge1``, not its ``rougeL``.
"""

from __future__ import annotations

from collections.abc import Sequence

from ._inputs import check_captions

VARIANTS = ("rouge-score", "petal-paper")
KEYS = ("rouge1_f", "rouge1_r", "rougeL_f", "rougeL_r")


def _sentences(text: str) -> list[list[str]]:
    return [" ".join(s.split()).split(" ") for s in text.split(".") if s]


def _lcs_words(ref: list[str], hyp: list[str]) -> set:
    """The words of one longest common subsequence, chosen with pltrdy/rouge's tie-breaking."""
    n, m = len(ref), len(hyp)
    table = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            table[i][j] = (table[i - 1][j - 1] + 1 if ref[i - 1] == hyp[j - 1]
                           else max(table[i - 1][j], table[i][j - 1]))
    words, i, j = set(), n, m
    while i and j:
        if ref[i - 1] == hyp[j - 1]:
            words.add(ref[i - 1])
            i, j = i - 1, j - 1
        elif table[i - 1][j] > table[i][j - 1]:
            i -= 1
        else:
            j -= 1
    return words


def _prf(overlap: int, hyp_count: int, ref_count: int) -> tuple[float, float]:
    p = overlap / hyp_count if hyp_count else 0.0
    r = overlap / ref_count if ref_count else 0.0
    return 2.0 * p * r / (p + r + 1e-8), r


def _paper_pair(hyp: str, ref: str) -> tuple[float, float, float, float]:
    hyp_s, ref_s = _sentences(hyp), _sentences(ref)
    if not hyp_s or not ref_s:
        return 0.0, 0.0, 0.0, 0.0
    hyp_w = {w for s in hyp_s for w in s}
    ref_w = {w for s in ref_s for w in s}
    f1, r1 = _prf(len(hyp_w & ref_w), len(hyp_w), len(ref_w))
    union = set().union(*(_lcs_words(r, h) for r in ref_s for h in hyp_s))
    fl, rl = _prf(len(union), len(hyp_w), len(ref_w))
    return f1, r1, fl, rl


def _paper(predictions, references) -> list[tuple]:
    out = []
    for pred, refs in zip(predictions, references):
        pairs = [_paper_pair(pred, r) for r in refs]
        out.append(tuple(sum(p[k] for p in pairs) / len(pairs) for k in range(4)))
    return out


def _rouge_score(predictions, references) -> list[tuple]:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)
    out = []
    for pred, refs in zip(predictions, references):
        s = scorer.score_multi(list(refs), pred)
        out.append((s["rouge1"].fmeasure, s["rouge1"].recall, s["rougeL"].fmeasure, s["rougeL"].recall))
    return out


def rouge(predictions: Sequence[str], references: Sequence[Sequence[str]],
          variant: str = "rouge-score") -> dict:
    """Mean ROUGE-1 / ROUGE-L F1 and recall over the predictions, plus ``rouge_variant`` naming the
    variant (see the module docstring)."""
    if variant not in VARIANTS:
        raise ValueError(f"rouge variant must be one of {VARIANTS}, got {variant!r}")
    check_captions(predictions, references)
    rows = (_paper if variant == "petal-paper" else _rouge_score)(predictions, references)
    out = {k: sum(r[i] for r in rows) / len(rows) for i, k in enumerate(KEYS)}
    return {**out, "rouge_variant": variant}


__all__ = ["KEYS", "VARIANTS", "rouge"]
