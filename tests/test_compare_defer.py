"""``petal compare`` evaluates on test only the runs at the chosen rate: a sweep run keeps its trained state
until the choice; the chosen one's test, from that state, equals an immediate evaluation; an interruption
between the sweep and the test loses nothing and trains nothing again; a cached twin takes its uncached
twin's rate and runs no sweep; the estimate counts what runs."""

import json
from dataclasses import replace

import pytest

import petal.evaluate
import petal.train
from petal.compare import estimate, execute, runner
from petal.compare.grid import load_grid
from petal.compare.plan import make_plan
from petal.compare.plan_text import plan_text
from petal.compare.report import write_report
from petal.compare.results import choose_lr, read_result, result_path, state_path
from petal.compare.results import rows as result_rows
from petal.compare.runner import run_plan
from petal.compare.summary import summarize

from .test_compare_run import GRID, SMALL, write_grid

CHOSEN_TASKS = runner._chosen_tasks  # as it is, for the tests that filter it

BUDGET = {**GRID["budget"], "lrs": [0.003, 0.03], "seeds": 3}
ESTIMATE = {"device": "cpu", "source": "test", "seconds_per_step": {"default": 0.01}, "batch_size": 4,
            "eval_seconds_per_record": 0.5, "run_overhead_seconds": 0.1}
EXPERIMENTS = {
    "main/petal": {"table": "main", "method": "PETAL", "preset": "petal", "setting": "s", "overrides": SMALL},
    "main/full": {"table": "main", "method": "Fine-tune", "preset": "full", "setting": "s"},
    "timing/full-cached": {"table": "timing", "method": "Fine-tune", "preset": "full", "setting": "s",
                           "cache_image_features": True},
}


def grid_root(root, experiments=EXPERIMENTS):
    root.mkdir(parents=True, exist_ok=True)
    write_grid(root, experiments)
    (root / "grid.json").write_text(json.dumps({**GRID, "budget": BUDGET, "estimate": ESTIMATE}))
    return root


def plan_of(root, only=None):
    return make_plan(load_grid(str(root)), only)


def by_name(plan):
    return {ep.experiment.name: ep for ep in plan.runnable}


def quiet(plan, out):
    return run_plan(plan, out, jobs=1, progress=False, log=lambda s: None)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, one_thread):
    root = grid_root(tmp_path_factory.mktemp("grid"))
    out = tmp_path_factory.mktemp("out")
    plan = plan_of(root)
    summary = quiet(plan, out)
    return plan, out, summary


def test_only_the_chosen_rate_is_tested_and_no_state_is_left(finished):
    plan, out, summary = finished
    assert summary.refused == {} and summary.ran == 2 * 4 + 3 and summary.tested == 3 * 3
    assert list(out.rglob("*.safetensors")) == []  # every kept state was deleted
    for name in ("main/petal", "main/full"):
        ep = by_name(plan)[name]
        lr = choose_lr(ep, out)
        for run in ep.sweep_runs():
            result = read_result(out, run)
            assert result["val"]["loss"] is not None
            if run.lr == lr:
                assert result["test"]["metrics"]["cider"] is not None and result["test_eval_seconds"] > 0
                assert set(result["test"]["predictions"]) == set(result["data"]["test_ids"])
            else:
                assert result["test"] is None and result["data"]["test_ids"] is None
        assert all(read_result(out, run)["test"] is not None for run in ep.seed_runs(lr))
    rows = json.loads(json.dumps(result_rows(plan, out)))
    losing = [r for r in rows if not r["selected"]]
    assert len(losing) == 2 and all(r["metrics"] == {} and r["test_evaluated"] is False for r in losing)
    assert all(r["test_evaluated"] and r["metrics"] for r in rows if r["selected"])
    # the report counts the three seeds at the chosen rate, each with its test
    summaries = {s.name: s for s in summarize(plan, out)}
    assert summaries["main/petal"].seeds == summaries["main/full"].seeds == 3
    assert summaries["main/petal"].stat("cider").n == 3


@pytest.mark.parametrize("name", ["main/petal", "main/full"])
def test_the_deferred_test_equals_an_immediate_evaluation(finished, name, tmp_path):
    """Bit for bit: the state file holds the trained tensors exactly, evaluation is deterministic."""
    plan, out, _ = finished
    ep = by_name(plan)[name]
    lr = choose_lr(ep, out)
    run = next(r for r in ep.sweep_runs() if r.lr == lr)
    deferred = read_result(out, run)
    task = replace(runner._task(ep, run, "full", out, None), result_file=str(tmp_path / "now.json"))
    immediate = execute.execute(task)
    assert immediate["val"] == deferred["val"]
    assert immediate["test"] == deferred["test"]  # loss, every metric, every prediction
    assert immediate["data"]["test_ids"] == deferred["data"]["test_ids"]


def test_a_cached_twin_runs_its_seeds_at_its_twins_rate(finished):
    plan, out, _ = finished
    eps = by_name(plan)
    twin, full = eps["timing/full-cached"], eps["main/full"]
    assert twin.twin is full and eps["main/full"].twin is None and eps["main/petal"].twin is None
    assert twin.sweep_runs() == [] and twin.run_count == 3
    files = sorted((out / "runs" / twin.content_key).iterdir())
    lr = choose_lr(full, out)
    assert [f.name for f in files] == [f"seed{s}-lr{lr:g}.json" for s in range(3)]  # no sweep: three runs
    for f in files:
        result = json.loads(f.read_text())
        assert result["content"]["cache_image_features"] and result["test"]["metrics"]
        assert result["feature_cache"]["hits"] > 0
    summaries = {s.name: s for s in summarize(plan, out)}
    assert summaries["timing/full-cached"].lr == lr and summaries["timing/full-cached"].seeds == 3
    assert "lr from main/full" in summaries["timing/full-cached"].note
    report_note = "lr from main/full (the same training without the cache)"
    assert report_note in write_report(plan, out, {}).read_text()


def test_without_its_twin_in_the_plan_a_cached_experiment_sweeps(tmp_path):
    root = grid_root(tmp_path)
    alone = by_name(plan_of(root, {"timing"}))["timing/full-cached"]
    assert alone.twin is None and len(alone.sweep_runs()) == 2 and alone.run_count == 4
    quick = by_name(make_plan(load_grid("quick")))
    assert quick["timing/petal-cached"].twin.content_key == quick["main/petal"].content_key
    assert quick["timing/full-cached"].twin.content_key == quick["main/full"].content_key
    assert by_name(make_plan(load_grid("quick"), {"timing"}))["timing/petal-cached"].twin is None


def test_the_estimate_counts_test_evaluation_for_the_chosen_rate_only(tmp_path):
    plan = plan_of(grid_root(tmp_path))
    eps = by_name(plan)
    train = 0.01 * 2 + 0.1        # 2 steps of batch 4 at 0.01 s, plus the run overhead
    test = 0.5 * 4                # 4 test records (2 scenes x 2 families)
    assert estimate.train_seconds(eps["main/full"], ESTIMATE) == pytest.approx(train)
    assert estimate.test_seconds(eps["main/full"], ESTIMATE) == pytest.approx(test)
    seconds = estimate.plan_seconds(plan)
    assert seconds[eps["main/full"].content_key] == pytest.approx(4 * train + 3 * test)  # 2 rates + 2 seeds
    assert seconds[eps["timing/full-cached"].content_key] == pytest.approx(3 * train + 3 * test)
    assert plan.run_count == 4 + 4 + 3 and plan.test_count == 9
    text = plan_text(plan)
    assert "3 seeds at main/full's lr" in text and "estimate: 11 runs (9 evaluated on test" in text
    total = sum(seconds.values())
    assert f"{total:.0f} s with 1 run(s) at a time" in text


def interrupt(*args, **kwargs):
    raise KeyboardInterrupt


def swept_and_interrupted(tmp_path, monkeypatch):
    """PETAL's sweep in a fresh output, interrupted after it, before anything that follows the choice."""
    plan = plan_of(grid_root(tmp_path / "grid", {"main/petal": EXPERIMENTS["main/petal"]}))
    out = tmp_path / "out"
    with monkeypatch.context() as m:
        m.setattr(runner, "_drop_states", interrupt)
        with pytest.raises(KeyboardInterrupt):
            quiet(plan, out)
    return plan, plan.runnable[0], out


def test_resume_between_the_sweep_and_the_test_trains_nothing_again(tmp_path, one_thread, monkeypatch):
    plan, ep, out = swept_and_interrupted(tmp_path, monkeypatch)
    sweep = ep.sweep_runs()
    assert all(state_path(out, run).is_file() and read_result(out, run)["test"] is None for run in sweep)
    before = {run.lr: read_result(out, run) for run in sweep}
    lr = choose_lr(ep, out)
    chosen = next(run for run in sweep if run.lr == lr)

    # the estimate of what is left: one test evaluation and two seeds (trainings with their tests)
    assert runner._work(ep, out) == ["test", "full", "full"]

    def no_training(*args, **kwargs):
        raise AssertionError("a finished sweep run was trained again")

    monkeypatch.setattr(petal.train, "train_model", no_training)

    # interrupted in the middle of the test evaluation: the result file stays whole, the state stays
    with monkeypatch.context() as m:
        m.setattr(runner, "_chosen_tasks", lambda ep, output: [
            t for t in CHOSEN_TASKS(ep, output) if t[2] == "test"])
        m.setattr(petal.evaluate, "evaluate", interrupt)
        with pytest.raises(KeyboardInterrupt):
            quiet(plan, out)
    assert read_result(out, chosen) == before[lr] and state_path(out, chosen).is_file()
    assert [state_path(out, run).is_file() for run in sweep] == [run is chosen for run in sweep]  # lost: gone
    assert not [p for p in result_path(out, chosen).parent.iterdir() if p.name.endswith(".tmp")]

    # the rerun (still no training allowed): the chosen run's test from its state; the other state deleted
    with monkeypatch.context() as m:
        m.setattr(runner, "_chosen_tasks", lambda ep, output: [
            t for t in CHOSEN_TASKS(ep, output) if t[2] == "test"])
        summary = quiet(plan, out)
    assert summary.ran == 0 and summary.tested == 1
    tested = read_result(out, chosen)
    assert tested["test"]["metrics"] and tested["test_finished_at"]
    for field in ("finished_at", "train_seconds", "val", "seconds_per_step", "final_train_loss"):
        assert tested[field] == before[lr][field]
    assert list(out.rglob("*.safetensors")) == []
    monkeypatch.undo()

    # the last rerun trains the two remaining seeds only; the sweep runs are left as they are
    mtimes = {run.lr: result_path(out, run).stat().st_mtime_ns for run in sweep}
    summary = quiet(plan, out)
    assert summary.ran == 2 and summary.tested == 2 and summary.skipped == 2
    assert {run.lr: result_path(out, run).stat().st_mtime_ns for run in sweep} == mtimes
    assert all(read_result(out, run)["test"] is not None for run in ep.seed_runs(lr))



def test_a_chosen_run_whose_state_is_gone_is_trained_again(tmp_path, one_thread, monkeypatch):
    plan, ep, out = swept_and_interrupted(tmp_path, monkeypatch)
    lr = choose_lr(ep, out)
    chosen = next(run for run in ep.sweep_runs() if run.lr == lr)
    val = read_result(out, chosen)["val"]
    state_path(out, chosen).unlink()  # e.g. deleted by hand
    assert runner._work(ep, out) == ["full", "full", "full"]
    summary = quiet(plan, out)
    assert summary.ran == 3 and summary.tested == 3
    assert read_result(out, chosen)["val"] == val and read_result(out, chosen)["test"]["metrics"]
    assert list(out.rglob("*.safetensors")) == []


def test_a_cached_twin_is_refused_with_its_twin(tmp_path, monkeypatch):
    root = grid_root(tmp_path / "grid", {n: EXPERIMENTS[n] for n in ("main/full", "timing/full-cached")})
    plan = plan_of(root)

    def refuse(task):
        raise ValueError("does not fit")

    monkeypatch.setattr(execute, "execute", refuse)
    summary = quiet(plan, tmp_path / "out")
    assert summary.refused["main/full"] == "does not fit"
    assert summary.refused["timing/full-cached"] == ("its uncached twin main/full, whose rate it takes, was "
                                                     "refused: does not fit")
