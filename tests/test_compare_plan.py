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
def test_shipped_grid_plans_every_experiment(name):
    plan = make_plan(load_grid(name))
    tables = {ep.experiment.table for ep in plan.experiments}
    assert tables == {"main", "few-shot", "ablation", "timing", "experts", "vl-pet"}
    assert [(ep.experiment.name, ep.blocked) for ep in plan.blocked] == []
    for ep in plan.runnable:
        assert len(ep.content_key) == 16
        assert ep.setting.budget.seeds >= 3
        # every method gets the same budget in a setting: the budget lives in the setting, not the experiment
        assert ep.content["budget"] == ep.setting.budget.run_part()
        assert ep.content["eval"]["rouge_variant"] == "petal-paper"  # the paper's ROUGE rules


@pytest.mark.parametrize("name", ["quick", "paper"])
def test_petal_rows_read_three_instructions_as_the_paper(name):
    """The papers' PETAL merges three instructions of different focus per image; random instruction draws
    three from InstructBLIP's templates; the variants without AIM (V1, V3) and every baseline read one."""
    plan = make_plan(load_grid(name))
    for ep in plan.runnable:
        exp, cfg = ep.experiment, ep.content["petal"]
        n = estimate.instructions_per_image(ep.content)
        # the quick grid's experts curve reads the prompt, to fit in 30 minutes (docs/COMPARE.md)
        curve = exp.table == "experts" and name == "paper"
        if exp.row == "petal" or exp.preset in ("petal-no-sib", "petal-no-dma") or curve:
            assert (n, cfg["instructions"]["source"]) == (3, "focus"), exp.name
        elif exp.preset == "random-instruction":
            assert (n, cfg["instructions"]["source"]) == (3, "random"), exp.name
        else:
            assert n == 1, exp.name
    rows = {ep.experiment.row for ep in plan.runnable if ep.experiment.table == "ablation"}
    assert set(paper_numbers()["table4_ablation"]["rows"]) <= rows  # V1-V4, random instruction, PETAL


def test_quick_grid_scales_the_t5_methods_to_its_width():
    """VL-PET's T5-base sizes (d 768) scaled to the compare model's T5 (d 64) by 64/768, in the sections the
    new presets read."""
    plan = make_plan(load_grid("quick"))
    assert plan.grid.model["spec"]["lm_hidden"] == 64
    by = {ep.experiment.name: ep.content["petal"] for ep in plan.runnable}
    assert by["vl-pet/vl-adapter"]["vl_adapter"]["reduction_dim"] == 96 * 64 // 768
    assert by["vl-pet/vl-adapter"]["vl_pet"] is None  # nothing of VL-PET added beside it
    lora = by["vl-pet/lora-t5"]["lora"]
    assert lora["target"] == "t5" and lora["rank"] == round(128 * 64 / 768)
    assert lora["alpha"] / lora["rank"] == 32 / 128  # the released script's alpha/r
    for name, cfg in by.items():
        if cfg["method"] == "vl-pet":
            vl = cfg["vl_pet"]
            assert (vl["reduction_dim"], vl["gate_dim"], vl["decoder_adapter_dim"]) == (16, 16, 8), name


def test_an_override_of_a_section_the_method_does_not_read_is_refused():
    exp = Experiment.from_dict({"table": "vl-pet", "method": "x", "preset": "vl-adapter", "setting": "s",
                                "overrides": {"vl_pet": {"reduction_dim": 16}}}, "e")
    with pytest.raises(ValueError, match="\\['vl_pet'\\] not read by method 'vl-adapter'.*vl_adapter"):
        exp.petal_config()
    exp = Experiment.from_dict({"table": "main", "method": "x", "preset": "petal", "setting": "s",
                                "overrides": {"lora": {"rank": 4}}}, "e")
    with pytest.raises(ValueError, match="not read by method 'petal'"):
        exp.petal_config()


def test_estimate_knows_every_method():
    plan = make_plan(load_grid("quick"))
    measured = plan.grid.estimate["seconds_per_step"]
    missing = {ep.experiment.preset for ep in plan.runnable} - set(measured)
    assert not missing, f"no measured step time for the quick grid's presets {sorted(missing)}"
    for name, config in petal.PRESETS.items():
        kind = estimate.flow(config.to_dict())
        assert kind == {"qformer": "qformer", "t5": "lm", "any": "qformer-weights"}[config.adapts] or (
            config.method == "head" and kind == "lm"), name


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
    assert keys["main/petal"] == keys["ablation/petal"]
    assert keys["experts/petal-k6"] == keys["ablation/petal-one-instruction"]
    assert keys["experts/petal-k5"] != keys["experts/petal-k6"]
    assert keys["ablation/petal-one-instruction"] != keys["main/petal"]  # the instructions are part of it
    assert keys["timing/petal-cached"] != keys["main/petal"]  # the cache flag is part of a run's identity
    assert plan.run_count == sum(ep.run_count for ep in plan.unique())
    assert len(plan.unique()) < len(plan.runnable)


def test_quick_dry_run_prints_the_plan(capsys, no_loading, tmp_path):
    assert main(["compare", "--dry-run", "--output", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "grid 'quick'" in out and "estimate:" in out and "main/petal" in out
    assert ", 0 refused" in out and "refused (" not in out
    assert not (tmp_path / "out").exists()


def test_paper_dry_run_estimates_gpu_hours_without_downloading(capsys, no_loading, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["compare", "--grid", "paper", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "Salesforce/instructblip-flan-t5-xxl" in json.dumps(load_grid("paper").model)
    assert "GPU hours" in out and "from a FLOP count, not a measurement" in out
    assert "lr" in out and "main/flickr30k/petal" in out and "main/okvqa/petal" in out
    assert ", 0 refused" in out and "refused (" not in out
    assert "petal's step at" in out and "(3 instructions per image in the Q-Former)" in out


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
    lora = by["main/flickr30k/lora"]
    assert estimate.gpu_example_flops(lora, est) < estimate.gpu_example_flops(full, est)
    cached = by["timing/flickr30k/petal-cached"]
    assert estimate.run_seconds(cached, est) < 0.85 * estimate.run_seconds(adapter, est)
    # three instructions run the Q-Former three times; the T5 methods back-propagate through the LM only
    one = by["ablation/flickr30k/petal-v1"]
    m = est["models"]["Salesforce/instructblip-flan-t5-xxl"]
    qformer = 2 * m["qformer_params"] * m["qformer_tokens"]
    assert estimate.gpu_example_flops(adapter, est) - estimate.gpu_example_flops(one, est) == pytest.approx(
        2 * 2 * qformer)
    t5 = [ep for ep in plan.runnable if ep.experiment.table == "vl-pet"]
    assert {estimate.flow(ep.content["petal"]) for ep in t5} == {"lm"}


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


def test_metric_text_fields_are_kept_apart_from_the_numbers():
    from petal.compare.summary import flatten

    metrics = {"cider": 1.5, "cider_tokenizer": "ptb-java", "rouge_variant": "petal-paper",
               "vqa_accuracy": 0.5, "vqa_scorer": "mixed",
               "vqa_accuracy_by_scorer": {"vqaEval": 0.4, "aokvqa-da": 0.6}, "vqa_skipped_difficult": 3,
               "flag": True, "by_family": {"colour": {"vqa_scorer": "exact-match", "vqa_accuracy": 1}}}
    assert flatten(metrics) == {"cider": 1.5, "vqa_accuracy": 0.5, "vqa_accuracy_by_scorer.vqaEval": 0.4,
                                "vqa_accuracy_by_scorer.aokvqa-da": 0.6, "vqa_skipped_difficult": 3.0,
                                "by_family.colour.vqa_accuracy": 1.0}
    assert flatten(metrics, text=True) == {"cider_tokenizer": "ptb-java", "rouge_variant": "petal-paper",
                                           "vqa_scorer": "mixed",
                                           "by_family.colour.vqa_scorer": "exact-match"}
