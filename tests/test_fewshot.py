"""--few-shot N: a seeded random subset (questions for VQA, images for captions), recorded by id."""

import json

import datasets
import pytest

from petal.cli import main
from petal.data.fewshot import FEW_SHOT_FILE, few_shot, record_few_shot, take_few_shot
from petal.data.folder import FolderDataset
from petal.data.hub import RecordDataset, map_okvqa
from petal.data.synthetic import SyntheticShapes

from . import tiny_runs


def _ids(subset):
    return [subset.dataset[i]["id"] for i in subset.indices]


def test_two_seeds_give_two_subsets_and_one_seed_the_same():
    data = SyntheticShapes("train", num_scenes=30, families=("colour",))
    a, ids_a = few_shot(data, 8, seed=1)
    b, ids_b = few_shot(data, 8, seed=1)
    c, ids_c = few_shot(data, 8, seed=2)
    assert ids_a == ids_b == _ids(a) and len(a) == 8 and len(set(ids_a)) == 8
    assert ids_a != ids_c and set(ids_a) != set(ids_c)
    assert ids_a != [r["id"] for r in list(data)[:8]]  # not the first N (that is --train-limit)
    assert list(a.indices) == sorted(a.indices)         # data order kept
    with pytest.raises(ValueError, match="more examples than the 30"):
        few_shot(data, 31, seed=0)


def test_vqa_samples_questions_and_captions_sample_images(tmp_path):
    from PIL import Image

    (tmp_path / "images").mkdir()
    lines = []
    for i in range(6):
        Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(tmp_path / "images" / f"{i}.png")
        lines += [{"image": f"images/{i}.png", "captions": [f"caption {k} of {i}"]} for k in range(3)]
        lines.append({"image": f"images/{i}.png", "question": "q?", "answers": ["a"]})
    (tmp_path / "annotations.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    data = FolderDataset(tmp_path, "train")
    subset, ids = few_shot(data, 4, seed=3)
    chosen = [data.records[i] for i in subset.indices]
    captions = [r for r in chosen if r["task"] == "caption"]
    images = {r["image"] for r in captions}
    assert len(captions) == 3 * len(images)             # every caption record of a chosen image
    assert len(images) + sum(r["task"] == "vqa" for r in chosen) == 4  # 4 examples: images + questions


def test_hub_rows_are_examples_read_without_images():
    rows = datasets.Dataset.from_dict({"question_id": list(range(10)), "question": ["q"] * 10,
                                       "answers": [["a", "b"]] * 10, "image": [None] * 10})
    data = RecordDataset(rows, map_okvqa, "question_id")
    subset, ids = few_shot(data, 3, seed=0)
    assert len(subset) == 3 and ids == [str(rows[i]["question_id"]) for i in subset.indices]


def test_ids_are_recorded_and_a_resume_must_draw_the_same(tmp_path):
    data = SyntheticShapes("train", num_scenes=12, families=("shape",))
    subset, entry = take_few_shot(data, 5, seed=4, run_dir=tmp_path)
    assert not (tmp_path / FEW_SHOT_FILE).exists()  # choosing writes nothing
    record_few_shot(tmp_path, entry)
    saved = json.loads((tmp_path / FEW_SHOT_FILE).read_text())
    assert saved["ids"] == _ids(subset) and saved["few_shot"] == 5 and saved["seed"] == 4
    assert _ids(take_few_shot(data, 5, seed=4, run_dir=tmp_path, resume=True)[0]) == saved["ids"]
    with pytest.raises(ValueError, match="other training records"):
        take_few_shot(data, 5, seed=5, run_dir=tmp_path, resume=True)


def test_cli_few_shot(tmp_path, capsys):
    config = tiny_runs.tiny_run_config(tmp_path)
    run = tmp_path / "run"
    args = ["train", "--config", str(config), "--families", "colour", "--few-shot", "6", "--seed", "7",
            "--max-steps", "2", "--output-dir", str(run), "--no-progress"]
    assert main(args) == 0
    assert "6 train / 2 val records" in capsys.readouterr().out
    saved = json.loads((run / FEW_SHOT_FILE).read_text())
    assert saved["seed"] == 7 and len(saved["ids"]) == 6
    assert json.loads((run / "run.json").read_text())["few_shot"] == 6
    assert main(["train", "--output-dir", str(run), "--resume", "--max-steps", "3", "--no-progress"]) == 0
    assert json.loads((run / FEW_SHOT_FILE).read_text()) == saved
    with pytest.raises(SystemExit) as e:
        main(args + ["--train-limit", "5"])
    assert e.value.code == 2 and "--few-shot and --train-limit" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["train", "--few-shot", "0"])
    assert e.value.code == 2 and "--few-shot" in capsys.readouterr().err
