"""CIDEr-D as the COCO caption pipeline computes it: PTB tokenisation (:mod:`petal.metrics.ptb`), then
pycocoevalcap's ``Cider`` scorer (n-grams up to 4, sigma 6, idf from the references of the scored set, so
it needs at least two images to be non-zero). Scores are pycocoevalcap's (papers print 100x)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ._inputs import check_captions
from .ptb import ptb_tokenize


@dataclass(frozen=True)
class CiderResult:
    score: float              # corpus CIDEr-D
    per_sample: list          # one score per prediction
    tokenizer: str            # "ptb-java" or "ptb-python"


def cider(predictions: Sequence[str], references: Sequence[Sequence[str]],
          tokenizer: str = "auto") -> CiderResult:
    """Corpus CIDEr-D of each prediction against its reference captions. All captions (references and
    predictions) are tokenised in one call, so Java starts once per evaluation set."""
    from pycocoevalcap.cider.cider import Cider

    check_captions(predictions, references)
    flat = [r for refs in references for r in refs] + list(predictions)
    tokens, used = ptb_tokenize(flat, tokenizer)
    gts, start = {}, 0
    for i, refs in enumerate(references):
        gts[i] = tokens[start:start + len(refs)]
        start += len(refs)
    res = {i: [tokens[start + i]] for i in range(len(predictions))}
    score, per_sample = Cider().compute_score(gts, res)
    return CiderResult(float(score), [float(s) for s in per_sample], used)


__all__ = ["CiderResult", "cider"]
