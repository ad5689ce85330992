import pytest

from petal.metrics import (
    caption_scores,
    cider,
    normalize_answer,
    rouge,
    task_scores,
    vqa_accuracy,
    vqa_score,
)

REFS = [["a red circle left of a blue square", "a blue square right of a red circle"],
        ["a green cross above a white triangle", "a white triangle below a green cross"],
        ["a yellow square and a purple circle", "a purple circle right of a yellow square"]]


def test_cider_identical_beats_partial_beats_wrong():
    exact = cider([r[0] for r in REFS], REFS)
    partial = cider(["a red circle", "a green cross", "a yellow square"], REFS)
    wrong = cider(["the cat sat", "on the mat", "in the sun"], REFS)
    assert exact > partial > wrong >= 0.0
    assert exact > 1.0
    assert wrong == pytest.approx(0.0)


def test_cider_ignores_case_and_punctuation():
    a = cider(["A red circle, left of a blue square.", "a green cross above a white triangle",
               "a yellow square and a purple circle"], REFS)
    b = cider([r[0] for r in REFS], REFS)
    assert a == pytest.approx(b)


def test_rouge_exact_match_and_recall():
    scores = rouge(["a red circle left of a blue square"], [REFS[0]])
    assert scores["rouge1_f"] == pytest.approx(1.0)
    assert scores["rougeL_f"] == pytest.approx(1.0)
    assert scores["rougeL_r"] == pytest.approx(1.0)
    half = rouge(["red circle"], [["red circle blue square"]])
    assert half["rouge1_r"] == pytest.approx(0.5)
    assert half["rouge1_f"] == pytest.approx(2 * 1.0 * 0.5 / 1.5)


def test_rouge_uses_best_reference():
    one = rouge(["a blue square right of a red circle"], [REFS[0]])
    assert one["rougeL_f"] == pytest.approx(1.0)


@pytest.mark.parametrize("raw, normal", [
    ("Two", "2"), ("the dog.", "dog"), ("A Dog", "dog"), ("dont", "don't"), ("yes!", "yes"),
    ("3,000", "3000"), ("red, white", "red white"), ("0.5", "0.5"), ("  ten\n", "10"), ("an apple", "apple"),
])
def test_vqa_normalisation(raw, normal):
    assert normalize_answer(raw) == normal


def test_vqa_accuracy_ten_answers_is_leave_one_out_average():
    assert vqa_accuracy("2", ["two"] * 3 + ["2"] * 7) == pytest.approx(1.0)
    # 2 humans agree: each subset without one of them has 1 match (1/3), the others 2 (2/3)
    assert vqa_accuracy("2", ["2"] * 2 + ["3"] * 8) == pytest.approx((2 * (1 / 3) + 8 * (2 / 3)) / 10)
    assert vqa_accuracy("2", ["2"] * 3 + ["3"] * 7) == pytest.approx(0.9)
    assert vqa_accuracy("2", ["2"] * 4 + ["3"] * 6) == pytest.approx(1.0)
    assert vqa_accuracy("4", ["2"] * 10) == 0.0


def test_vqa_accuracy_few_answers_is_exact_match_after_normalisation():
    assert vqa_accuracy("The dog.", ["dog"]) == 1.0
    assert vqa_accuracy("cat", ["dog", "puppy"]) == 0.0
    assert vqa_score(["red", "blue"], [["red"], ["green"]]) == pytest.approx(0.5)


def test_task_scores_splits_by_task():
    out = task_scores(["vqa", "caption", "caption", "vqa"],
                      ["red", REFS[0][0], REFS[1][0], "blue"],
                      [["red"], REFS[0], REFS[1], ["green"]])
    assert out["vqa_accuracy"] == pytest.approx(0.5)
    assert out["cider"] > 0 and out["rougeL_f"] == pytest.approx(1.0)
    assert set(caption_scores([REFS[0][0]], [REFS[0]])) == {"cider", "rouge1_f", "rouge1_r", "rougeL_f",
                                                             "rougeL_r"}


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="same length"):
        vqa_score(["a"], [["a"], ["b"]])
    with pytest.raises(ValueError, match="answers"):
        vqa_accuracy("a", "a")
    with pytest.raises(ValueError, match="tasks"):
        task_scores(["bogus"], ["a"], [["a"]])
    with pytest.raises(TypeError, match="str"):
        normalize_answer(3)
