"""VQA accuracy exactly as the official evaluation computes it, quirks included.

This reproduces ``PythonEvaluationTools/vqaEvaluation/vqaEval.py`` of GitHub GT-Vision-Lab/VQA (the
script behind the VQA, OK-VQA and TextVQA leaderboards), rule for rule:

* Newlines and tabs become spaces and both ends are stripped, for the prediction and every answer.
* Only when the human answers *disagree* (more than one distinct answer after that) are the prediction
  and the answers normalised; ten identical answers are compared as they are, so "Dog" does not match
  ten "dog".
* Normalisation, punctuation first: each of ``; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !`` is deleted
  when it touches a space somewhere in the text (or when the text holds a digit-comma-digit group
  anywhere), otherwise replaced by a space. Then the official period regex ``(?!<=\\d)(\\.)(?!\\d)`` is
  applied: its ``(?!<=\\d)`` is a look-*ahead* that never fires (the author meant a look-behind), so every
  period not followed by a digit goes ("2." -> "2", "u.s." -> "us", "3.5" kept); and because the script
  passes ``re.UNICODE`` where ``re.sub`` expects ``count``, at most 32 periods are removed.
* Then words: lower-cased, split on whitespace, the number words zero..ten (and "none") become digits,
  the articles a/an/the are dropped, and apostrophe-less contractions get their apostrophe from the
  official table (which has no "im", "ive" or "lets"; its "Im"/"Ive"/"Id've" keys are capitalised and
  so never match, and it maps "somebody'd" to "somebodyd").
* Score: with ``n`` human answers, the mean over the ``n`` leave-one-out subsets (each answer left out
  once, by position, as the official script does through each answer's distinct ``answer_id``) of
  ``min(1, #answers in the subset equal to the prediction / 3)``.

Fewer than ten answers: the same formula applies to any ``n``, as in the official script. With ``n``
answers a prediction can reach at most ``min(1, (n - 1) / 3)``: 1 from four answers on, 2/3 with three,
and **0 with a single answer** (its only subset is empty). Single-answer data (the synthetic set, a
folder with one answer per question) is therefore scored with :func:`exact_match` instead (see
:mod:`petal.metrics.scores`), and the result names which scorer produced the number.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from ._inputs import check_answers

# the official punctuation list
_PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`",
                ",", "?", "!")
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")  # sic: a look-ahead that never fires, see the module docstring
_PERIOD_COUNT = re.UNICODE  # sic: the official script passes re.UNICODE (32) as re.sub's count
_DIGIT_COMMA_DIGIT = re.compile(r"(\d)(,)(\d)")
_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
            "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = frozenset(("a", "an", "the"))
# the official contraction table, lower-case keys only (its capitalised keys never see a lower-cased word)
_CONTRACTIONS = dict(pair.split("=") for pair in """
aint=ain't arent=aren't cant=can't couldve=could've couldnt=couldn't couldn'tve=couldn't've
couldnt've=couldn't've didnt=didn't doesnt=doesn't dont=don't hadnt=hadn't hadnt've=hadn't've
hadn'tve=hadn't've hasnt=hasn't havent=haven't hed=he'd hed've=he'd've he'dve=he'd've hes=he's
howd=how'd howll=how'll hows=how's isnt=isn't itd=it'd itd've=it'd've it'dve=it'd've itll=it'll
let's=let's maam=ma'am mightnt=mightn't mightnt've=mightn't've mightn'tve=mightn't've mightve=might've
mustnt=mustn't mustve=must've neednt=needn't notve=not've oclock=o'clock oughtnt=oughtn't
ow's'at='ow's'at 'ows'at='ow's'at 'ow'sat='ow's'at shant=shan't shed've=she'd've she'dve=she'd've
she's=she's shouldve=should've shouldnt=shouldn't shouldnt've=shouldn't've shouldn'tve=shouldn't've
somebody'd=somebodyd somebodyd've=somebody'd've somebody'dve=somebody'd've somebodyll=somebody'll
somebodys=somebody's someoned=someone'd someoned've=someone'd've someone'dve=someone'd've
someonell=someone'll someones=someone's somethingd=something'd somethingd've=something'd've
something'dve=something'd've somethingll=something'll thats=that's thered=there'd
thered've=there'd've there'dve=there'd've therere=there're theres=there's theyd=they'd
theyd've=they'd've they'dve=they'd've theyll=they'll theyre=they're theyve=they've twas='twas
wasnt=wasn't wed've=we'd've we'dve=we'd've weve=we've werent=weren't whatll=what'll whatre=what're
whats=what's whatve=what've whens=when's whered=where'd wheres=where's whereve=where've whod=who'd
whod've=who'd've who'dve=who'd've wholl=who'll whos=who's whove=who've whyll=why'll whyre=why're
whys=why's wont=won't wouldve=would've wouldnt=wouldn't wouldnt've=wouldn't've wouldn'tve=wouldn't've
yall=y'all yall'll=y'all'll y'allll=y'all'll yall'd've=y'all'd've y'alld've=y'all'd've
y'all'dve=y'all'd've youd=you'd youd've=you'd've you'dve=you'd've youll=you'll youre=you're
youve=you've
""".split())


def _strip_whitespace(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def _process_punctuation(text: str) -> str:
    out = text
    glued = _DIGIT_COMMA_DIGIT.search(text) is not None
    for p in _PUNCTUATION:
        # the test reads the *original* text, the replacement acts on the running one (as official)
        out = out.replace(p, "" if glued or p + " " in text or " " + p in text else " ")
    return _PERIOD.sub("", out, count=_PERIOD_COUNT)


def _process_digits_and_articles(text: str) -> str:
    words = [_NUMBERS.get(w, w) for w in text.lower().split()]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES)


def normalize_answer(text: str) -> str:
    """The official normalisation of one answer (whitespace, punctuation, numbers, articles,
    contractions). :func:`vqa_accuracy` applies it only when the human answers disagree."""
    if not isinstance(text, str):
        raise TypeError(f"answer must be a str, got {type(text).__name__}")
    return _process_digits_and_articles(_process_punctuation(_strip_whitespace(text)))


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """Accuracy of one prediction against the human answers, exactly as the official ``vqaEval.py``
    (see the module docstring; a single answer always scores 0 under this formula)."""
    check_answers(prediction, answers)
    pred = _strip_whitespace(prediction)
    gts = [_strip_whitespace(a) for a in answers]
    if len(set(gts)) > 1:
        pred = normalize_answer(pred)
        gts = [normalize_answer(a) for a in gts]
    matches = sum(g == pred for g in gts)
    # leaving out answer i removes one match exactly when answer i matches
    return sum(min(1.0, (matches - (g == pred)) / 3.0) for g in gts) / len(gts)


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    """1.0 when the prediction equals one of the answers after :func:`normalize_answer` (always
    applied), else 0.0. Not an official metric: the scorer for single-answer VQA data."""
    check_answers(prediction, answers)
    return float(normalize_answer(prediction) in {normalize_answer(a) for a in answers})


__all__ = ["exact_match", "normalize_answer", "vqa_accuracy"]
