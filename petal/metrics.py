"""Metrics: CIDEr (pycocoevalcap's scorer), ROUGE-1 / ROUGE-L F1 and recall (rouge-score), VQA accuracy.

All scores are fractions (VQA accuracy and ROUGE in [0, 1]; CIDEr as pycocoevalcap computes it, where
papers print 100×). CIDEr skips the Java PTB tokenizer: captions are lower-cased and split on anything
that is not a letter, digit or apostrophe. Its idf comes from the references of the scored set, so it
needs at least two images to be non-zero.

VQA accuracy follows the official evaluation: answers are normalised (punctuation, articles, number
words, contractions), and with ``n`` human answers the score is the mean over the ``n`` leave-one-out
subsets of ``min(#matches in the subset / 3, 1)`` (for 10 answers: the 10-choose-9 average). With fewer
than 4 answers (no human consensus to measure, e.g. synthetic single answers) it is exact match
against any answer. One deliberate difference: the official script normalises only when the humans
disagree; here answers are always normalised, so "the dog." counts for "dog".
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`",
                ",", "?", "!")
_PERIOD = re.compile(r"(?<!\d)\.(?!\d)")
_DIGIT_COMMA = re.compile(r"(\d),(\d)")
_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
            "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
# apostrophe-less spellings -> the canonical contraction (the official map's idea, written out here)
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's",
    "im": "i'm", "ive": "i've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've",
    "it'dve": "it'd've", "itll": "it'll", "let's": "let's", "lets": "let's", "maam": "ma'am",
    "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've", "oclock": "o'clock",
    "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at",
    "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's",
    "shouldve": "should've", "shouldnt": "shouldn't", "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's", "thered": "there'd",
    "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're", "theres": "there's",
    "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've", "theyll": "they'll",
    "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've",
    "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're",
    "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd", "wheres": "where's",
    "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've", "wholl": "who'll",
    "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's",
    "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}


def _strip_punctuation(text: str) -> str:
    out = text
    for p in _PUNCTUATION:
        # glued to a word ("dog," "(red") it disappears; standing alone or inside a token it becomes a space
        if (p + " " in text or " " + p in text) or _DIGIT_COMMA.search(text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD.sub("", out)


def normalize_answer(text: str) -> str:
    """The official VQA answer normalisation."""
    if not isinstance(text, str):
        raise TypeError(f"answer must be a str, got {type(text).__name__}")
    text = _strip_punctuation(text.replace("\n", " ").replace("\t", " ").strip())
    words = []
    for word in text.lower().split():
        word = _NUMBERS.get(word, word)
        if word in _ARTICLES:
            continue
        words.append(_CONTRACTIONS.get(word, word))
    return " ".join(words)


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """Accuracy of one prediction against the human answers (see the module docstring)."""
    if isinstance(answers, str) or not answers:
        raise ValueError(f"answers must be a non-empty list of strings, got {answers!r}")
    pred = normalize_answer(prediction)
    gts = [normalize_answer(a) for a in answers]
    if len(gts) < 4:
        return float(pred in gts)
    total = 0.0
    for i in range(len(gts)):
        matches = sum(1 for j, g in enumerate(gts) if j != i and g == pred)
        total += min(1.0, matches / 3.0)
    return total / len(gts)


def vqa_score(predictions: Sequence[str], answers: Sequence[Sequence[str]]) -> float:
    _same_length(predictions, answers)
    return sum(vqa_accuracy(p, a) for p, a in zip(predictions, answers)) / len(predictions)


def caption_tokens(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9']+", text.lower()))


def cider(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus CIDEr-D (pycocoevalcap) of the predictions against their reference captions."""
    from pycocoevalcap.cider.cider import Cider

    _same_length(predictions, references)
    gts = {i: [caption_tokens(r) for r in refs] for i, refs in enumerate(references)}
    res = {i: [caption_tokens(p)] for i, p in enumerate(predictions)}
    score, _ = Cider().compute_score(gts, res)
    return float(score)


def rouge(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict:
    """Mean ROUGE-1 and ROUGE-L F1 and recall; each prediction scored against its best reference."""
    from rouge_score import rouge_scorer

    _same_length(predictions, references)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)
    sums = {"rouge1_f": 0.0, "rouge1_r": 0.0, "rougeL_f": 0.0, "rougeL_r": 0.0}
    for pred, refs in zip(predictions, references):
        scores = scorer.score_multi(list(refs), pred)
        for kind in ("rouge1", "rougeL"):
            sums[f"{kind}_f"] += scores[kind].fmeasure
            sums[f"{kind}_r"] += scores[kind].recall
    return {k: v / len(predictions) for k, v in sums.items()}


def caption_scores(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict:
    return {"cider": cider(predictions, references), **rouge(predictions, references)}


def task_scores(tasks: Sequence[str], predictions: Sequence[str],
                references: Sequence[Sequence[str]]) -> dict:
    """Caption metrics over the ``caption`` records and VQA accuracy over the ``vqa`` ones."""
    _same_length(predictions, references)
    if len(tasks) != len(predictions):
        raise ValueError(f"tasks and predictions must have the same length, got {len(tasks)} and "
                         f"{len(predictions)}")
    bad = sorted({t for t in tasks if t not in ("caption", "vqa")})
    if bad:
        raise ValueError(f"tasks must be 'caption' or 'vqa', got {bad}")
    out: dict = {}
    cap = [i for i, t in enumerate(tasks) if t == "caption"]
    vqa = [i for i, t in enumerate(tasks) if t == "vqa"]
    if cap:
        out.update(caption_scores([predictions[i] for i in cap], [references[i] for i in cap]))
    if vqa:
        out["vqa_accuracy"] = vqa_score([predictions[i] for i in vqa], [references[i] for i in vqa])
    return out


def _same_length(predictions, references) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"predictions and references must have the same length, got {len(predictions)} "
                         f"and {len(references)}")
    if not predictions:
        raise ValueError("nothing to score: predictions is empty")


__all__ = ["caption_scores", "caption_tokens", "cider", "normalize_answer", "rouge", "task_scores",
           "vqa_accuracy", "vqa_score"]
