"""Metrics on cases written from the reference scorers' rules (quirks included): VQA accuracy as
GT-Vision-Lab/VQA's vqaEval.py, A-OKVQA's direct-answer metric, the two ROUGE variants, and the dispatch
of records to their metric. CIDEr and the PTB tokenizer: tests/test_metrics_ptb.py."""

import pytest

from petal.metrics import (
    aokvqa_accuracy,
    aokvqa_score,
    default_metric,
    exact_match,
    normalize_answer,
    rouge,
    task_scores,
    vqa_accuracy,
    vqa_scores,
)


@pytest.mark.parametrize("raw, normal", [
    ("Two", "2"), ("none", "0"), ("ten", "10"), ("eleven", "eleven"),       # number words
    ("the dog", "dog"), ("an apple", "apple"), ("A Dog", "dog"),             # articles, case
    ("dont", "don't"), ("Dont", "don't"), ("couldnt've", "couldn't've"),     # contractions ...
    ("im", "im"), ("ive", "ive"), ("lets", "lets"), ("Im", "im"),           # ... not in the table
    ("somebody'd", "somebodyd"),                                             # the table's reversed entry
    ("2.", "2"), ("3.5", "3.5"), ("1.5.", "1.5"), ("u.s.", "us"), ("e.g", "eg"),  # periods not before digits
    ("red,white", "red white"), ("red, white", "red white"),                 # glued: a space; touching: gone
    ("t-shirt", "t shirt"), ("t-shirt and - x", "tshirt and x"),             # one "- " deletes every "-"
    ("3,000", "3000"), ("3,000 t-shirts", "3000 tshirts"),                   # digit,digit deletes them all
    ("yes!", "yes"), ("(red)", "red"), ("  ten\n", "10"), ("red\tcar", "red car"),
])
def test_vqa_normalisation(raw, normal):
    assert normalize_answer(raw) == normal


def test_vqa_period_removal_stops_after_32():
    # the official script passes re.UNICODE (32) where re.sub takes its count
    assert normalize_answer("a" + "." * 40) == "a" + "." * 8


def test_vqa_normalises_only_when_the_humans_disagree():
    assert vqa_accuracy("dog", ["Dog"] * 10) == 0.0           # ten identical answers: compared as they are
    assert vqa_accuracy("Dog", ["Dog"] * 10) == 1.0
    assert vqa_accuracy("2", ["2."] * 10) == 0.0
    assert vqa_accuracy("2", ["2."] * 4 + ["3"] * 6) == 1.0   # disagreeing: "2." becomes "2"
    assert vqa_accuracy("the dog.", ["Dog"] * 9 + ["cat"]) == 1.0
    assert vqa_accuracy(" Dog\n", ["Dog"] * 10) == 1.0        # whitespace is always stripped


def test_vqa_accuracy_is_the_leave_one_out_mean():
    assert vqa_accuracy("2", ["two"] * 3 + ["2"] * 7) == pytest.approx(1.0)
    # 2 humans agree: the 2 subsets without one of them hold 1 match (1/3), the other 8 hold 2 (2/3)
    assert vqa_accuracy("2", ["2"] * 2 + ["3"] * 8) == pytest.approx((2 * (1 / 3) + 8 * (2 / 3)) / 10)
    assert vqa_accuracy("2", ["2"] * 3 + ["3"] * 7) == pytest.approx(0.9)
    assert vqa_accuracy("2", ["2"] * 4 + ["3"] * 6) == pytest.approx(1.0)
    assert vqa_accuracy("4", ["2"] * 10) == 0.0


def test_vqa_accuracy_with_fewer_answers_is_the_official_formula():
    assert vqa_accuracy("dog", ["dog"]) == 0.0                 # the only subset is empty
    assert vqa_accuracy("dog", ["dog", "dog"]) == pytest.approx(1 / 3)
    assert vqa_accuracy("dog", ["dog"] * 3) == pytest.approx(2 / 3)
    assert vqa_accuracy("dog", ["dog"] * 4) == pytest.approx(1.0)
    assert exact_match("The dog.", ["dog"]) == 1.0             # the single-answer scorer normalises always
    assert exact_match("cat", ["dog", "puppy"]) == 0.0


def test_aokvqa_accuracy_is_exact_and_not_leave_one_out():
    answers = ["dog"] * 3 + ["cat"] * 7
    assert aokvqa_accuracy("dog", answers) == 1.0
    assert vqa_accuracy("dog", answers) == pytest.approx(0.9)  # the VQA formula differs here
    assert aokvqa_accuracy("cat", ["cat"] * 2 + ["x"] * 8) == pytest.approx(2 / 3)
    assert aokvqa_accuracy("Dog", answers) == 0.0              # no lower-casing ...
    assert aokvqa_accuracy("dog ", answers) == 0.0             # ... no stripping ...
    assert aokvqa_accuracy("the dog", ["dog"] * 10) == 0.0     # ... no articles removed
    mean, skipped = aokvqa_score(["dog", "cat", "dog"], [answers] * 3, [False, True, False])
    assert mean == 1.0 and skipped == 1                        # the difficult question is left out
    assert aokvqa_score(["dog"], [answers], [True]) == (None, 1)


REFS = [["a red circle left of a blue square", "a blue square right of a red circle"],
        ["a green cross above a white triangle", "a white triangle below a green cross"]]


def test_rouge_score_variant_uses_the_best_reference_and_stems():
    scores = rouge(["a blue square right of a red circle"], [REFS[0]])
    assert scores["rougeL_f"] == pytest.approx(1.0) and scores["rouge_variant"] == "rouge-score"
    half = rouge(["red circle"], [["red circle blue square"]])
    assert half["rouge1_r"] == pytest.approx(0.5) and half["rouge1_f"] == pytest.approx(2 * 0.5 / 1.5)
    assert rouge(["dogs running"], [["dog runs"]])["rouge1_f"] == pytest.approx(1.0)  # Porter stems


def test_rouge_paper_variant_averages_over_references():
    eps = 1e-8  # the package's f = 2pr / (p + r + 1e-8)
    one = rouge(["a dog runs"], [["a dog runs", "a cat sleeps"]], variant="petal-paper")
    f_same, f_third = 2 / (2 + eps), 2 * (1 / 9) / (2 / 3 + eps)
    assert one["rouge1_f"] == pytest.approx((f_same + f_third) / 2, abs=1e-12)
    assert one["rouge1_r"] == pytest.approx((1 + 1 / 3) / 2) and one["rouge_variant"] == "petal-paper"
    assert rouge(["A dog"], [["a dog"]], "petal-paper")["rouge1_r"] == pytest.approx(0.5)    # case kept
    assert rouge(["dog dog dog"], [["dog"]], "petal-paper")["rouge1_f"] == pytest.approx(1.0)  # word sets
    assert rouge(["dog dog dog"], [["dog"]])["rouge1_f"] == pytest.approx(0.5)  # rouge-score counts words
    swapped = rouge(["runs a dog"], [["a dog runs"]], "petal-paper")
    assert swapped["rouge1_f"] == pytest.approx(1.0) and swapped["rougeL_r"] == pytest.approx(2 / 3)
    split = rouge(["a dog. runs fast"], [["a dog runs fast"]], "petal-paper")  # sentences at "."
    assert split["rougeL_r"] == pytest.approx(1.0)
    assert rouge([""], [["a dog"]], "petal-paper")["rouge1_f"] == 0.0
    with pytest.raises(ValueError, match="variant"):
        rouge(["a"], [["a"]], variant="rouge-2")


def test_records_are_scored_by_their_metric():
    recs = [{"id": "1", "task": "vqa", "answers": ["red"]},                          # default: exact match
            {"id": "2", "task": "vqa", "answers": ["blue"]}]
    out = task_scores(recs, ["red", "green"])
    assert out == {"vqa_accuracy": 0.5, "vqa_scorer": "exact-match"}
    assert default_metric("vqa", ["a", "b"]) == "vqa" and default_metric("caption", ["a"]) == "caption"
    aok = [{"id": str(i), "task": "vqa", "metric": "aokvqa", "answers": ["dog"] * 3 + ["x"] * 7,
            "difficult": i == 1} for i in range(3)]
    out = task_scores(aok, ["dog", "x", "Dog"])
    assert out == {"vqa_accuracy": 0.5, "vqa_scorer": "aokvqa-da", "vqa_skipped_difficult": 1}
    mixed = vqa_scores(["dog", "dog"], [["dog"] * 3 + ["x"] * 7, ["dog"]], ["vqa", "exact"])
    assert mixed["vqa_scorer"] == "mixed"
    assert mixed["vqa_accuracy_by_scorer"] == {"exact-match": 1.0, "vqaEval": pytest.approx(0.9)}
    cap = [{"id": c, "task": "caption", "answers": refs} for c, refs in zip("cd", REFS)]
    out = task_scores(cap + recs, [REFS[0][0], REFS[1][0], "red", "red"], tokenizer="ptb-python")
    assert out["cider"] > 0 and out["cider_tokenizer"] == "ptb-python"
    assert out["rougeL_f"] == pytest.approx(1.0)
    assert out["vqa_accuracy"] == 0.5 and out["rouge_variant"] == "rouge-score"


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="same length"):
        task_scores([{"task": "vqa", "answers": ["a"]}], ["a", "b"])
    with pytest.raises(ValueError, match="answers"):
        vqa_accuracy("a", "a")
    with pytest.raises(TypeError, match="prediction"):
        aokvqa_accuracy(None, ["a"])
    with pytest.raises(ValueError, match="task"):
        task_scores([{"id": "x", "task": "bogus", "answers": ["a"]}], ["a"])
    with pytest.raises(ValueError, match="cannot be scored with metric 'caption'"):
        task_scores([{"id": "x", "task": "vqa", "metric": "caption", "answers": ["a"]}], ["a"])
    with pytest.raises(TypeError, match="str"):
        normalize_answer(3)
