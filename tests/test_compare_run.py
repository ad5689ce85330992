"""``petal compare`` end to end on a tiny grid: result files, results.json, REPORT.md with all seven
tables, the plots; a multi-instruction PETAL (the paper's three instructions merged by AIM), a T5 method
(LoRA on the T5), a few-shot subset drawn by ``petal.data.fewshot``; a rerun skips finished runs, an edited
experiment reruns, a missing preset is refused."""

import json

import pytest

from petal.cli import main
from petal.compare.grid import load_grid
from petal.compare.plan import make_plan
from petal.compare.runner import run_plan
from petal.data.collate import WordCollator
from petal.data.fewshot import few_shot
from petal.data.synthetic import SyntheticShapes

TABLE_TITLES = ("## Table 1 — captioning", "## Table 2 — VQA accuracy", "## Table 3 — few-shot",
                "## Table 4 — ablations", "## Table 5 — training time", "## Number of experts",
                "## VL-PET — granularities")

DATA = {"source": "synthetic", "families": ["caption", "colour"], "domain": "rotated", "seed": 1,
        "train_scenes": 4, "val_scenes": 2, "test_scenes": 2}
GRID = {
    "name": "tiny", "description": "a test grid",
    "model": {"kind": "compare",
              "spec": {"vision_hidden": 16, "vision_layers": 1, "qformer_hidden": 32, "qformer_layers": 1,
                       "num_query_tokens": 4, "lm_hidden": 16, "lm_layers": 1, "heads": 2},
              "pretrain": {"steps": 2, "batch_size": 8, "families": ["caption", "colour"]}},
    "budget": {"max_steps": 2, "batch_size": 4, "lrs": [0.003], "seeds": 1, "warmup_steps": 1},
    "eval": {"num_beams": 1, "max_new_tokens": 4, "batch_size": 16, "cider_tokenizer": "ptb-python",
             "rouge_variant": "petal-paper"},
    "settings": {"s": {"data": DATA}, "few": {"data": {**DATA, "few_shot": 3, "few_shot_seed": 5}}},
    "estimate": {"device": "cpu", "source": "test", "seconds_per_step": {"default": 0.01}},
}
SMALL = {"dma": {"rank": 4}, "aim": {"num_experts": 2, "expert_rank": 4}, "sib": {"proj_dim": 4}}
PETAL = {"preset": "petal-focus", "paper_row": "petal", "setting": "s", "overrides": SMALL}
EXPERIMENTS = {
    "main/petal": {"table": "main", "method": "PETAL", **PETAL},
    "main/lora": {"table": "main", "method": "LoRA", "preset": "lora", "setting": "s",
                  "overrides": {"lora": {"rank": 4}}},
    "main/missing": {"table": "main", "method": "Missing", "preset": "no-such-preset", "setting": "s"},
    "ablation/petal": {"table": "ablation", "method": "PETAL", **PETAL},
    "ablation/one": {"table": "ablation", "method": "PETAL, one instruction", "preset": "petal",
                     "paper_row": "petal-one-instruction", "setting": "s", "overrides": SMALL},
    "ablation/random": {"table": "ablation", "method": "PETAL w. random instruction",
                        "preset": "random-instruction", "paper_row": "random-instruction", "setting": "s",
                        "overrides": SMALL},
    "few-shot/lora": {"table": "few-shot", "method": "LoRA", "preset": "lora", "setting": "few",
                      "overrides": {"lora": {"rank": 4}}},
    "experts/k1": {"table": "experts", "method": "PETAL, 1 expert", "preset": "petal-focus", "setting": "s",
                   "overrides": {**SMALL, "aim": {"num_experts": 1, "expert_rank": 4}}},
    "vl-pet/lora-t5": {"table": "vl-pet", "method": "LoRA (T5)", "preset": "lora-t5", "setting": "s",
                       "overrides": {"lora": {"rank": 2, "alpha": 0.5}}},
}
RUNS = 7  # petal-focus (main, ablation), lora, one instruction, random, few-shot lora, 1 expert, lora-t5


def write_grid(root, experiments=EXPERIMENTS):
    (root / "grid.json").write_text(json.dumps(GRID))
    for name, body in experiments.items():
        path = root / "experiments" / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(body))
    return root


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """The tiny grid run once through the CLI (one process), recording how many instructions per image
    the collator handed the Q-Former in each batch."""
    root = write_grid(tmp_path_factory.mktemp("grid"))
    out = tmp_path_factory.mktemp("out")
    seen = []
    with pytest.MonkeyPatch.context() as mp:
        collate = WordCollator.__call__

        def spy(self, records):
            batch = collate(self, records)
            ids = batch["qformer_input_ids"]
            seen.append(ids.shape[1] if ids.dim() == 3 else 1)
            return batch

        mp.setattr(WordCollator, "__call__", spy)
        code = main(["--threads", "1", "compare", "--grid", str(root), "--output", str(out), "--jobs", "1",
                     "--no-progress"])
    return root, out, code, seen


def results_by_experiment(root, out):
    found = {}
    for ep in make_plan(load_grid(str(root))).runnable:
        paths = list((out / "runs" / ep.content_key).glob("seed*.json"))
        found[ep.experiment.name] = json.loads(paths[0].read_text()) if paths else None
    return found


def test_runs_write_result_files_results_json_report_and_plots(finished):
    root, out, code, _ = finished
    assert code == 1  # the missing preset was refused, so the grid is incomplete
    results = sorted((out / "runs").rglob("seed*.json"))
    assert len(results) == RUNS  # one learning rate, one seed each; main and ablation PETAL share theirs
    for path in results:
        r = json.loads(path.read_text())
        assert r["trainable_parameters"] > 0 and r["train_seconds"] > 0 and r["seconds_per_step"] > 0
        assert r["peak_memory_bytes"] > 0
        metrics = r["test"]["metrics"]
        assert {"cider", "rouge1_f", "rougeL_f", "vqa_accuracy"} <= set(metrics)
        # the grid's scorer choices reached the evaluation, and each number says what produced it
        assert metrics["cider_tokenizer"] == "ptb-python" and metrics["rouge_variant"] == "petal-paper"
        assert metrics["vqa_scorer"] == "exact-match"
        assert r["val"]["loss"] is not None
        few = r["data"]["few_shot"]
        # 2 steps of batch 4 (of the 3 few-shot records: one batch of 3 per epoch)
        assert sum(r["data"]["train_ids_used"].values()) == 2 * (few["num_records"] if few else 4)
        assert len(r["data"]["test_ids"]) == len(r["data"]["val_ids"]) == 4  # 2 scenes x 2 families
        assert set(r["test"]["predictions"]) == set(r["data"]["test_ids"])  # kept for rescoring
    rows = json.loads((out / "results.json").read_text())
    assert {(r["table"], r["method"]) for r in rows} == {
        ("main", "PETAL"), ("main", "LoRA"), ("ablation", "PETAL"), ("ablation", "PETAL, one instruction"),
        ("ablation", "PETAL w. random instruction"), ("few-shot", "LoRA"), ("experts", "PETAL, 1 expert"),
        ("vl-pet", "LoRA (T5)")}
    for row in rows:
        required = {"table", "method", "setting", "seed", "trainable_parameters", "metrics", "train_seconds"}
        assert required <= set(row)
        assert row["selected"]
    report = (out / "REPORT.md").read_text()
    positions = [report.find(title) for title in TABLE_TITLES]
    assert all(p >= 0 for p in positions) and positions == sorted(positions)
    assert "_No rows:" not in report  # every table has a finished experiment
    assert "| Missing | - |" in report and "preset 'no-such-preset' does not exist" in report
    assert "## Against the papers" in report
    for png in ("params_tradeoff.png", "time_tradeoff.png", "experts_curve.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"


def test_petal_merges_the_papers_three_instructions_and_the_others_read_the_prompt(finished):
    root, out, _, seen = finished
    # petal-focus, random instruction and the 1-expert curve point batch three instructions per image; LoRA
    # (Q-Former and T5) and PETAL on one instruction the prompt
    assert set(seen) == {1, 3}
    found = results_by_experiment(root, out)
    one, focus = found["ablation/one"], found["main/petal"]
    # the same method, seed and rate: only what the Q-Former reads differs, so the losses do
    assert one["content"]["petal"]["dma"] == focus["content"]["petal"]["dma"]
    assert one["val"]["loss"] != focus["val"]["loss"]
    assert found["ablation/petal"] == focus  # the same training: one set of runs
    report = (out / "REPORT.md").read_text()
    table4 = report[report.index("## Table 4"):report.index("## Table 5")]
    lines = [line for line in table4.splitlines() if line.startswith("| PETAL")]
    assert [line.split(" | ")[0] for line in lines] == [
        "| PETAL, one instruction", "| PETAL w. random instruction", "| PETAL"]  # PETAL last, as the paper
    assert "| 3 focus |" in lines[2] and "| 3 random |" in lines[1] and "| prompt |" in lines[0]
    assert "46.9" in lines[2] and "44.8 (-2.1)" in lines[1]  # the paper's Avg beside ours


def test_a_t5_method_trains_in_the_language_model(finished):
    root, out, _, _ = finished
    found = results_by_experiment(root, out)
    t5 = found["vl-pet/lora-t5"]
    assert t5["content"]["petal"]["lora"]["target"] == "t5" and t5["content"]["petal"]["lora"]["rank"] == 2
    assert 0 < t5["trainable_parameters"] != found["main/lora"]["trainable_parameters"]
    report = (out / "REPORT.md").read_text()
    vl_pet = report[report.index("## VL-PET"):report.index("## Plots")]
    assert "| LoRA (T5) | - | - |" in vl_pet and "ROUGE variant `petal-paper`" in vl_pet


def test_few_shot_is_petals_own_subset_recorded_in_the_result(finished):
    root, out, _, _ = finished
    r = results_by_experiment(root, out)["few-shot/lora"]
    train = SyntheticShapes("train", num_scenes=4, seed=1, families=("caption", "colour"), domain="rotated")
    _, ids = few_shot(train, 3, 5)
    assert r["data"]["few_shot"] == {"few_shot": 3, "seed": 5, "num_records": 3, "ids": ids}
    assert set(r["data"]["train_ids_used"]) == set(ids)  # 2 steps of batch 4 cycle through the 3


def test_the_report_names_the_scorers_and_the_papers_rouge_columns(finished):
    _, out, _, _ = finished
    report = (out / "REPORT.md").read_text()
    table1 = report[report.index("## Table 1"):report.index("## Table 2")]
    columns = "| s CIDEr | s ROUGE-1 F1 | s ROUGE-1 R | s ROUGE-L F1 | s ROUGE-L R |"  # the paper's Table 1
    assert f"| Method | Tunable {columns}" in table1
    assert "CIDEr-D tokenised by `ptb-python`; ROUGE variant `petal-paper`" in table1
    assert "compare with the ROUGE-1 columns" in table1
    table2 = report[report.index("## Table 2"):report.index("## Table 3")]
    assert "VQA accuracy by `exact-match`" in table2
    summary = json.loads((out / "summary.json").read_text())
    petal_row = next(s for s in summary if s["experiment"] == "main/petal")
    assert "cider_tokenizer" not in petal_row["metrics"] and "cider" in petal_row["metrics"]


def test_a_rerun_skips_finished_runs(finished):
    root, out, _, _ = finished
    before = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("seed*.json")}
    summary = run_plan(make_plan(load_grid(str(root))), out, jobs=1, progress=False, log=lambda s: None)
    assert summary.ran == 0 and summary.skipped == RUNS
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("seed*.json")} == before


def test_an_edited_experiment_reruns_and_a_relabelled_one_does_not(finished, tmp_path):
    root, out, _, _ = finished
    edited = json.loads(json.dumps(EXPERIMENTS))
    edited["main/lora"]["overrides"] = {"lora": {"rank": 2}}   # what it trains: reruns
    edited["main/petal"]["method"] = "PETAL (renamed)"          # only its label: same runs
    root2 = write_grid(tmp_path, edited)
    summary = run_plan(make_plan(load_grid(str(root2))), out, jobs=1, progress=False, log=lambda s: None)
    assert summary.ran == 1 and summary.skipped == RUNS - 1
    assert set(summary.refused) == {"main/missing"}


def test_a_missing_preset_is_refused_with_the_reason(finished, capsys):
    root, out, _, _ = finished
    code = main(["compare", "--grid", str(root), "--output", str(out), "--report-only", "--only", "main"])
    printed = capsys.readouterr().out
    assert code == 1
    assert "incomplete: 1 experiments were refused" in printed
    assert "main/missing: preset 'no-such-preset' does not exist in this petal" in printed
    report = (out / "REPORT.md").read_text()
    assert "the grid has no `few-shot` experiments (or `--only` left them out)" in report


def test_cache_image_features_flag_makes_every_run_cache(finished, tmp_path):
    (tmp_path / "grid").mkdir()
    root = write_grid(tmp_path / "grid", {name: EXPERIMENTS[name] for name in ("main/lora", "main/petal")})
    out = tmp_path / "out"
    code = main(["--threads", "1", "compare", "--grid", str(root), "--output", str(out), "--jobs", "1",
                 "--no-progress", "--cache-image-features"])
    assert code == 0
    found = {}
    for path in (out / "runs").rglob("seed*.json"):
        result = json.loads(path.read_text())
        found[result["content"]["petal"]["method"]] = result
        assert result["content"]["cache_image_features"] is True
        assert result["feature_cache"]["images"] == 4 + 2 + 2  # train, val, test scenes: one image each
        assert result["feature_cache"]["hits"] > 0
    assert set(found) == {"lora", "petal"}
    # exact with three instructions per image too: the same losses as the uncached run
    uncached = results_by_experiment(finished[0], finished[1])["main/petal"]
    for split in ("val", "test"):
        assert found["petal"][split]["loss"] == pytest.approx(uncached[split]["loss"], rel=1e-5)
    assert "None: every experiment of the grid ran." in (out / "REPORT.md").read_text()
