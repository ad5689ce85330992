"""The hub loaders on local copies written in each data set's real schema (tests/hub_fixtures.py), through
the same ``load_dataset`` call the hub path makes; the split each of our splits reads; A-OKVQA's
string-encoded answers; saved data sets; and ``petal train --data <each> --max-steps 2`` end to end."""

import json
import shutil

import datasets
import pytest
import torch

from petal.cli import main
from petal.data import hub
from petal.data.hub import HUB_SOURCES, load_hub, map_aokvqa, map_okvqa, parse_list_string, strings
from petal.data.sources import load_data
from petal.metrics import aokvqa_accuracy

from . import hub_fixtures, tiny_runs

PARQUET_EXPORT = "refs/convert/parquet"
JAVA_OR_PYTHON = "ptb-java" if shutil.which("java") else "ptb-python"


@pytest.fixture(autouse=True)
def hf_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


@pytest.fixture(scope="module")
def copies(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    return {name: build(root / name) for name, build in hub_fixtures.BUILDERS.items()}


METRIC = {"flickr30k": "caption", "textcaps": "caption", "okvqa": "vqa", "aokvqa": "aokvqa", "textvqa": "vqa"}
EXPECTED = {  # our split -> (record ids, first record's answers)
    "flickr30k": {"train": ["0", "1", "2"], "val": ["3", "4", "5"], "test": ["6", "7", "8"]},
    "textcaps": {"train": ["train0000", "train0001", "train0002"], "val": ["val0000", "val0001", "val0002"]},
    "okvqa": {"train": ["0", "1", "2"], "val": ["10000", "10001", "10002"]},
    "aokvqa": {"train": ["tr0xq", "tr1xq", "tr2xq"], "val": ["va0xq", "va1xq", "va2xq"]},
    "textvqa": {"train": ["0", "1", "2"], "val": ["100", "101", "102"]},
}


@pytest.mark.parametrize("name", sorted(HUB_SOURCES))
def test_each_source_reads_its_splits_from_a_local_copy(name, copies):
    for split, ids in EXPECTED[name].items():
        data = load_hub(name, split, path=str(copies[name]))
        records = [data[i] for i in range(len(data))]
        assert [r["id"] for r in records] == ids and data.record_ids() == ids
        for r in records:
            assert r["image"].size == (12, 10)
            assert r["answers"] and all(isinstance(a, str) and a for a in r["answers"])
            assert r["metric"] == METRIC[name]
            assert r["task"] == ("caption" if r["metric"] == "caption" else "vqa")
    first = load_hub(name, "train", path=str(copies[name]))[0]
    expected = {"flickr30k": ["a red square on a grey wall.", "A red block.", "caption 0 of image 0",
                              "caption 1 of image 0", "caption 2 of image 0"],
                "textcaps": ['a sign that says "RED".', "the word red in red paint"],
                "okvqa": ["red"] * 6 + ["grey"] * 4,  # the processed `answer`, not `raw_answer`
                "aokvqa": ["red"] * 7 + ["grey", "light red", "redish"],
                "textvqa": ["red"] * 8 + ["RED", "sign"]}[name]
    assert first["answers"] == expected


def test_a_split_the_data_set_lacks_is_refused_not_mapped(copies):
    for name in ("textcaps", "okvqa", "aokvqa", "textvqa"):
        with pytest.raises(ValueError, match=f"{name} has no 'test' split.*split 'val'"):
            load_hub(name, "test", path=str(copies[name]))
    assert "split == 'test'" in hub.describe_split("flickr30k", "test")
    assert hub.describe_split("okvqa", "val") == ("okvqa val: HuggingFaceM4/OK-VQA@refs/convert/parquet "
                                                  "default/ split 'validation'")
    lines = hub.split_table().splitlines()
    assert len(lines) == 15 and sum("has no 'test' split" in line for line in lines) == 4


def test_aokvqa_answers_are_parsed_and_scored(copies):
    records = load_hub("aokvqa", "val", path=str(copies["aokvqa"]))
    assert [r["difficult"] for r in records] == [False, True, False]
    assert len(records[0]["answers"]) == 10
    assert aokvqa_accuracy("red", records[0]["answers"]) == 1.0  # the whole string as one answer scored 0
    assert aokvqa_accuracy("grey", records[0]["answers"]) == pytest.approx(1 / 3)
    row = {"question_id": "q", "question": "?", "image": None, "difficult_direct_answer": False,
           "direct_answers": "['a', \"b's\"]"}
    assert map_aokvqa(row, 0)["answers"] == ["a", "b's"]
    assert map_aokvqa({**row, "direct_answers": ["x", "y"]}, 0)["answers"] == ["x", "y"]  # a real list too
    for bad in ("__import__('os').getcwd()", "'just a string'", "[1, 2]", "['unclosed'"):
        with pytest.raises(ValueError, match="question q: direct_answers"):
            parse_list_string(bad, "direct_answers", "q")


def test_answer_shapes():
    dicts = [{"answer": "dog", "raw_answer": "dogs", "answer_confidence": "yes", "answer_id": 1}]
    columnar = {"answer": ["dog", "cat"], "raw_answer": ["dogs", "cats"], "answer_id": [1, 2]}
    assert strings(dicts, "answers") == ["dog"] and strings(columnar, "answers") == ["dog", "cat"]
    row = {"image": None, "question": "?", "question_id": 5, "answers": columnar}
    assert map_okvqa(row, 0)["answers"] == ["dog", "cat"] and map_okvqa(row, 0)["id"] == "5"
    with pytest.raises(ValueError, match="answers"):
        strings([3], "answers")


@pytest.mark.parametrize("name", sorted(HUB_SOURCES))
def test_hub_path_makes_the_same_call(name, copies, monkeypatch):
    """Without --data-path the call goes to the hub repository with its config directory and revision;
    with it, the same call goes to the local copy."""
    calls = []
    real = datasets.load_dataset

    def spy(repo, **kw):
        calls.append((repo, kw))
        if repo == HUB_SOURCES[name].repo:  # answer the hub call from the local copy
            data_dir = kw["data_dir"] if kw["data_dir"] and (copies[name] / kw["data_dir"]).is_dir() else None
            return real(str(copies[name]), **{**kw, "data_dir": data_dir})
        return real(repo, **kw)

    monkeypatch.setattr(datasets, "load_dataset", spy)
    src = HUB_SOURCES[name]
    from_hub = load_hub(name, "val")
    local = load_hub(name, "val", path=str(copies[name]), revision="v1")
    split = src.splits["val"]
    assert calls[0] == (src.repo, {"data_dir": src.config_dir, "revision": src.revision, "split": split})
    assert calls[1] == (str(copies[name]), {"data_dir": src.config_dir, "revision": "v1", "split": split})
    assert from_hub.record_ids() == local.record_ids()
    load_hub(name, "train", revision="abc123")
    assert calls[-1][1]["revision"] == "abc123"
    script_repos = {n for n, s in HUB_SOURCES.items() if s.revision == PARQUET_EXPORT}
    assert script_repos == {"flickr30k", "okvqa", "textvqa"}


def test_saved_data_sets_load(copies, tmp_path):
    rows = datasets.load_dataset(str(copies["okvqa"]), data_dir="default")
    rows.save_to_disk(str(tmp_path / "okvqa-saved"))
    saved = load_hub("okvqa", "val", path=str(tmp_path / "okvqa-saved"))
    assert saved.record_ids() == EXPECTED["okvqa"]["val"] and saved[0]["answers"][0] == "red"
    flickr = datasets.load_dataset(str(copies["flickr30k"]), data_dir="TEST", split="test")
    flickr.save_to_disk(str(tmp_path / "flickr-saved"))  # one split, with its `split` column
    assert load_hub("flickr30k", "val", path=str(tmp_path / "flickr-saved")).record_ids() == ["3", "4", "5"]
    rows["train"].save_to_disk(str(tmp_path / "okvqa-one-split"))
    with pytest.raises(ValueError, match="DatasetDict"):
        load_hub("okvqa", "val", path=str(tmp_path / "okvqa-one-split"))
    rows.pop("validation")
    rows.save_to_disk(str(tmp_path / "okvqa-train-only"))
    with pytest.raises(ValueError, match="splits \\['train'\\], not 'validation'"):
        load_hub("okvqa", "val", path=str(tmp_path / "okvqa-train-only"))


def test_bad_paths_and_arguments_are_named(copies, tmp_path):
    with pytest.raises(ValueError, match="--data-path .*missing is not a directory"):
        load_hub("okvqa", "val", path=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="okvqa: .* has no split 'validation'"):
        load_hub("okvqa", "val", path=str(copies["textcaps"]))  # textcaps' copy has train/val/test
    with pytest.raises(ValueError, match="hub sources"):
        load_data("synthetic", "train", path=str(copies["okvqa"]))
    with pytest.raises(ValueError, match="folder data"):
        load_data("okvqa", "train", skip_bad_images=True)
    limited = load_data("flickr30k", "test", limit=2, path=str(copies["flickr30k"]), log=lambda s: None)
    assert limited.record_ids() == ["6", "7"]


@pytest.fixture(scope="module")
def tiny_run_config(tmp_path_factory):
    return tiny_runs.tiny_run_config(tmp_path_factory.mktemp("tiny"))


@pytest.mark.parametrize("name", sorted(HUB_SOURCES))
def test_cli_trains_on_each_hub_schema(name, copies, tiny_run_config, tmp_path, capsys):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code = main(["train", "--config", str(tiny_run_config), "--data", name, "--data-path",
                     str(copies[name]), "--max-steps", "2", "--output-dir", str(tmp_path / "run"),
                     "--no-progress"])
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"{name} train:" in out and f"{name} val:" in out  # which hub split each split reads
    assert "trained 2 steps" in out
    final = json.loads((tmp_path / "run" / "eval_val.json").read_text())
    if METRIC[name] == "caption":
        assert final["cider_tokenizer"] == JAVA_OR_PYTHON and final["rouge_variant"] == "rouge-score"
        assert final["cider"] >= 0.0
    else:
        assert final["vqa_scorer"] == ("aokvqa-da" if name == "aokvqa" else "vqaEval")
        assert 0.0 <= final["vqa_accuracy"] <= 1.0
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["data_path"] == str(copies[name]) and run["data"] == name
