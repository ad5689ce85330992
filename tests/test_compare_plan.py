"""The planner on the shipped grids (quick and paper, dry run: nothing loaded or downloaded), run keys,
refusals, bad grid files, the estimates and the comparison with the papers."""

import json

import pytest

import petal
from petal.cli import main
from petal.compare import agreement, estimate
from petal.compare.experiment import Experiment
from petal.compare.grid import load_grid, shipped_grids
from petal.compare.plan import make_plan
from petal.compare.plots import pareto_front
from petal.compare.report import paper_numbers


@pytest.fixture
def no_loading(monkeypatch):
    """Any attempt to load a model or a data set fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("a dry run must not load models or data")

    import petal.compare.data as compare_data
    import petal.compare.model as compare_model
    import petal.data.sources as sources
    import petal.runs as runs

    for module, name in ((runs, "load_model"), (sources, "load_data"), (sources, "load_hub"),
                         (compare_model, "load"), (compare_data, "load_splits")):
        monkeypatch.setattr(module, name, refuse)


def test_shipped_grids_are_quick_and_paper():
    assert {"quick", "paper"} <= set(shipped_grids())


@pytest.mark.parametrize("name", ["quick", "paper"])
def test_shipped_grid_plans_every_experiment_or_says_why_not(name):
    plan = make_plan(load_grid(name))
    tables = {ep.experiment.table for ep in plan.experiments}
    assert tables == {"main", "few-shot", "ablation", "timing", "experts", "vl-pet"}
    for ep in plan.experiments:
        if ep.runnable:
            assert len(ep.content_key) == 16
            assert ep.setting.budget.seeds >= 3
        else:  # today only presets that other work will add are missing
            assert "does not exist in this petal" in ep.blocked
            assert ep.experiment.preset not in petal.PRESETS
    assert all(ep.runnable for ep in plan.experiments if ep.experiment.preset in petal.PRESETS)
    # every method gets the same budget in a setting: the budget lives in the setting, not the experiment
    for ep in plan.runnable:
        assert ep.content["budget"] == ep.setting.budget.run_part()


def test_quick_grid_compare_model_is_low_rank_as_in_the_paper():
    grid = load_grid("quick")
    spec = grid.model["spec"]
    assert spec["qformer_hidden"] == 768
    plan = make_plan(grid)
    petal_cfg = next(ep for ep in plan.runnable if ep.experiment.name == "main/petal").content["petal"]
    lora_cfg = next(ep for ep in plan.runnable if ep.experiment.name == "main/lora").content["petal"]
    assert petal_cfg["dma"]["rank"] == lora_cfg["lora"]["rank"] == 64


def test_experiment_files_describing_the_same_training_share_runs():
    plan = make_plan(load_grid("quick"))
    keys = {ep.experiment.name: ep.content_key for ep in plan.runnable}
    assert keys["experts/petal-k6"] == keys["main/petal"] == keys["ablation/petal"]
    assert keys["experts/petal-k5"] != keys["main/petal"]
    assert keys["timing/petal-cached"] != keys["main/petal"]  # the cache flag is part of a run's identity
    assert plan.run_count == sum(ep.run_count for ep in plan.unique())
    assert len(plan.unique()) < len(plan.runnable)


def test_quick_dry_run_prints_the_plan_and_refusals(capsys, no_loading, tmp_path):
    assert main(["compare", "--dry-run", "--output", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "grid 'quick'" in out and "estimate:" in out and "main/petal" in out
    for missing in ("maple", "llama-adapter", "vl-adapter"):
        if missing not in petal.PRESETS:
            assert f"preset '{missing}' does not exist in this petal" in out
    assert not (tmp_path / "out").exists()


def test_paper_dry_run_estimates_gpu_hours_without_downloading(capsys, no_loading, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["compare", "--grid", "paper", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "Salesforce/instructblip-flan-t5-xxl" in json.dumps(load_grid("paper").model)
    assert "GPU hours" in out and "from a FLOP count, not a measurement" in out
    assert "lr" in out and "main/flickr30k/petal" in out and "main/okvqa/petal" in out


def test_paper_recipe_is_five_epochs_with_the_papers_learning_rates():
    grid = load_grid("paper")
    caption, vqa = grid.setting("flickr30k"), grid.setting("okvqa")
    assert caption.budget.epochs == vqa.budget.epochs == 5 and caption.budget.max_steps is None
    assert 1e-5 in caption.budget.lrs and 2e-5 in vqa.budget.lrs
    assert caption.budget.weight_decay == 0.05 and vqa.budget.weight_decay == 0.02
    assert grid.setting("flickr30k-50-shot").data["few_shot"] == 50


def test_gpu_estimate_counts_the_cache_and_the_method():
    plan = make_plan(load_grid("paper"))
    by = {ep.experiment.name: ep for ep in plan.runnable}
    est = plan.grid.estimate
    full, adapter = by["main/flickr30k/full"], by["main/flickr30k/petal"]
    assert estimate.gpu_example_flops(adapter, est) < estimate.gpu_example_flops(full, est)
    cached = by["timing/flickr30k/petal-cached"]
    assert estimate.run_seconds(cached, est) < 0.85 * estimate.run_seconds(adapter, est)


def test_refusals_and_bad_files_name_what_is_wrong(tmp_path):
    with pytest.raises(ValueError, match="unknown keys \\['lr'\\]"):
        Experiment.from_dict({"table": "main", "method": "x", "preset": "petal", "setting": "s", "lr": 1},
                             "e")
    with pytest.raises(ValueError, match="table must be one of"):
        Experiment.from_dict({"table": "nope", "method": "x", "preset": "petal", "setting": "s"}, "e")
    exp = Experiment.from_dict({"table": "main", "method": "x", "preset": "petal", "setting": "s",
                                "overrides": {"aim": {"num_experts": 0}}}, "e")
    with pytest.raises(ValueError, match="do not fit preset 'petal'.*num_experts"):
        exp.petal_config()
    with pytest.raises(ValueError, match="neither a shipped grid"):
        load_grid(str(tmp_path / "missing"))
    (tmp_path / "grid.json").write_text(json.dumps({"settings": {"s": {"data": {"source": "synthetic"}}},
                                                    "budget": {"lrs": []}}))
    (tmp_path / "experiments").mkdir()
    with pytest.raises(ValueError, match="lrs must be a non-empty list"):
        load_grid(str(tmp_path))


def test_pareto_front_keeps_the_undominated_points():
    assert pareto_front([(1, 5), (2, 4), (3, 7), (4, 7), (5, 9)]) == [(1, 5), (3, 7), (5, 9)]


def test_kendall_tau_and_the_papers_numbers():
    assert agreement.kendall_tau({"a": 1, "b": 2, "c": 3}, {"a": 10, "b": 20, "c": 30}) == (1.0, 3)
    assert agreement.kendall_tau({"a": 1, "b": 2, "c": 3}, {"a": 3, "b": 2, "c": 1}) == (-1.0, 3)
    assert agreement.kendall_tau({"a": 1, "b": 2}, {"a": 1, "b": 2}) is None
    paper = paper_numbers()
    assert paper["table1_captioning"]["rows"]["petal"][1] == 63.3   # Flickr30K CIDEr, FlanT5-xxl
    assert paper["table5_training_time"]["rows"]["petal"][1:] == [0.85, 0.88, 0.86, 0.85, 0.91]
    assert "source" in paper["table4_ablation"]
