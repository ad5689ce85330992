"""``petal compare`` end to end on a tiny grid: result files, results.json, REPORT.md with all seven
tables, the plots; a rerun skips finished runs, an edited experiment reruns, a missing preset is refused."""

import json

import pytest

from petal.cli import main
from petal.compare.grid import load_grid
from petal.compare.plan import make_plan
from petal.compare.runner import run_plan

TABLE_TITLES = ("## Table 1 — captioning", "## Table 2 — VQA accuracy", "## Table 3 — few-shot",
                "## Table 4 — ablations", "## Table 5 — training time", "## Number of experts",
                "## VL-PET — granularities")

GRID = {
    "name": "tiny", "description": "a test grid",
    "model": {"kind": "compare",
              "spec": {"vision_hidden": 16, "vision_layers": 1, "qformer_hidden": 32, "qformer_layers": 1,
                       "num_query_tokens": 4, "lm_hidden": 16, "lm_layers": 1, "heads": 2},
              "pretrain": {"steps": 2, "batch_size": 8, "families": ["caption", "colour"]}},
    "budget": {"max_steps": 2, "batch_size": 4, "lrs": [0.003], "seeds": 1, "warmup_steps": 1},
    "eval": {"num_beams": 1, "max_new_tokens": 4, "batch_size": 16},
    "settings": {"s": {"data": {"source": "synthetic", "families": ["caption", "colour"], "domain": "rotated",
                                "seed": 1, "train_scenes": 4, "val_scenes": 2, "test_scenes": 2}}},
    "estimate": {"device": "cpu", "source": "test", "seconds_per_step": {"default": 0.01}},
}
SMALL = {"dma": {"rank": 4}, "aim": {"num_experts": 2, "expert_rank": 4}, "sib": {"proj_dim": 4}}
EXPERIMENTS = {
    "main/petal": {"table": "main", "method": "PETAL", "preset": "petal", "setting": "s", "overrides": SMALL},
    "main/lora": {"table": "main", "method": "LoRA", "preset": "lora", "setting": "s",
                  "overrides": {"lora": {"rank": 4}}},
    "main/maple": {"table": "main", "method": "MAPLE", "preset": "maple", "setting": "s"},
    "experts/k1": {"table": "experts", "method": "PETAL, 1 expert", "preset": "petal", "setting": "s",
                   "overrides": {**SMALL, "aim": {"num_experts": 1, "expert_rank": 4}}},
}


def write_grid(root, experiments=EXPERIMENTS):
    (root / "grid.json").write_text(json.dumps(GRID))
    for name, body in experiments.items():
        path = root / "experiments" / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(body))
    return root


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """The tiny grid run once through the CLI (one process)."""
    root = write_grid(tmp_path_factory.mktemp("grid"))
    out = tmp_path_factory.mktemp("out")
    code = main(["--threads", "1", "compare", "--grid", str(root), "--output", str(out), "--jobs", "1",
                 "--no-progress"])
    return root, out, code


def test_runs_write_result_files_results_json_report_and_plots(finished):
    root, out, code = finished
    assert code == 1  # maple was refused, so the grid is incomplete
    results = sorted((out / "runs").rglob("seed*.json"))
    assert len(results) == 3  # petal, lora, 1 expert: one learning rate, one seed each
    for path in results:
        r = json.loads(path.read_text())
        assert r["trainable_parameters"] > 0 and r["train_seconds"] > 0 and r["seconds_per_step"] > 0
        assert r["peak_memory_bytes"] > 0
        assert {"cider", "rougeL_f", "vqa_accuracy"} <= set(r["test"]["metrics"])
        assert r["val"]["loss"] is not None
        assert sum(r["data"]["train_ids_used"].values()) == 2 * 4  # 2 steps of batch 4
        assert len(r["data"]["test_ids"]) == len(r["data"]["val_ids"]) == 4  # 2 scenes x 2 families
        assert set(r["test"]["predictions"]) == set(r["data"]["test_ids"])  # kept for rescoring
    rows = json.loads((out / "results.json").read_text())
    assert {(r["table"], r["method"]) for r in rows} == {("main", "PETAL"), ("main", "LoRA"),
                                                         ("experts", "PETAL, 1 expert")}
    for row in rows:
        required = {"table", "method", "setting", "seed", "trainable_parameters", "metrics", "train_seconds"}
        assert required <= set(row)
        assert row["selected"]
    report = (out / "REPORT.md").read_text()
    positions = [report.find(title) for title in TABLE_TITLES]
    assert all(p >= 0 for p in positions) and positions == sorted(positions)
    assert report.count("_No rows:") == 3  # few-shot, ablations, VL-PET: none in this grid, said so
    assert "the grid has no `few-shot` experiments" in report
    assert "| MAPLE | - |" in report and "preset 'maple' does not exist" in report
    assert "## Against the papers" in report
    for png in ("params_tradeoff.png", "time_tradeoff.png", "experts_curve.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"


def test_a_rerun_skips_finished_runs(finished):
    root, out, _ = finished
    before = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("seed*.json")}
    summary = run_plan(make_plan(load_grid(str(root))), out, jobs=1, progress=False, log=lambda s: None)
    assert summary.ran == 0 and summary.skipped == 3
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("seed*.json")} == before


def test_an_edited_experiment_reruns_and_a_relabelled_one_does_not(finished, tmp_path):
    root, out, _ = finished
    edited = json.loads(json.dumps(EXPERIMENTS))
    edited["main/lora"]["overrides"] = {"lora": {"rank": 2}}   # what it trains: reruns
    edited["main/petal"]["method"] = "PETAL (renamed)"          # only its label: same runs
    root2 = write_grid(tmp_path, edited)
    summary = run_plan(make_plan(load_grid(str(root2))), out, jobs=1, progress=False, log=lambda s: None)
    assert summary.ran == 1 and summary.skipped == 2
    assert set(summary.refused) == {"main/maple"}


def test_a_missing_preset_is_refused_with_the_reason(finished, capsys):
    root, out, _ = finished
    code = main(["compare", "--grid", str(root), "--output", str(out), "--report-only"])
    printed = capsys.readouterr().out
    assert code == 1
    assert "incomplete: 1 experiments were refused" in printed
    assert "main/maple: preset 'maple' does not exist in this petal" in printed


def test_cache_image_features_flag_makes_every_run_cache(tmp_path):
    (tmp_path / "grid").mkdir()
    root = write_grid(tmp_path / "grid", {"main/lora": EXPERIMENTS["main/lora"]})
    out = tmp_path / "out"
    code = main(["--threads", "1", "compare", "--grid", str(root), "--output", str(out), "--jobs", "1",
                 "--no-progress", "--cache-image-features"])
    assert code == 0
    [path] = (out / "runs").rglob("seed*.json")
    result = json.loads(path.read_text())
    assert result["content"]["cache_image_features"] is True
    assert result["feature_cache"]["images"] == 4 + 2 + 2  # train, val, test scenes: one image each
    assert result["feature_cache"]["hits"] > 0
    assert "None: every experiment of the grid ran." in (out / "REPORT.md").read_text()
