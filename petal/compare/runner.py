"""Run a plan: pre-train (or load) the base models, then every experiment's learning-rate sweep (trained and
evaluated on val; their states kept), then, at the rate chosen on val, the chosen sweep run's test evaluation
and the other seeds (a cached twin's seeds at its twin's rate); the states of the other rates are deleted.
Finished work (result files, with their ``test`` where it is due) is skipped; one progress bar with an ETA
over the whole grid. Experiments that cannot run are refused, never dropped: they are listed
with the reason, here and in the report.
"""

from __future__ import annotations

import json
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from . import estimate, execute
from . import model as models
from .plan import ExperimentPlan, Plan, Run
from .results import choose_lr, read_result, result_path, state_path


@dataclass
class Summary:
    ran: int = 0                 # trainings
    tested: int = 0              # test evaluations (with their training, or of a kept sweep run)
    skipped: int = 0
    refused: dict = field(default_factory=dict)   # experiment name -> reason
    seconds: float = 0.0


def base_dir(model: dict) -> Path:
    """Where the grid's compare model is cached: the machine's base cache (``petal.embedded.base_path``,
    shared with ``demo``/``train``/``eval``), keyed by its spec and recipe; a checkpoint needs none."""
    from ..embedded import base_path, cache_root

    if model["kind"] != "compare":
        return cache_root()
    return base_path(None, *models.compare_spec(model))


def refusals(plan: Plan) -> dict:
    return {ep.experiment.name: ep.blocked for ep in plan.blocked}


def run_plan(plan: Plan, output: Path, jobs: int = 1, progress: bool = True,
             log: Callable[[str], None] = print) -> Summary:
    import time

    import torch

    start = time.perf_counter()
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    summary = Summary(refused=refusals(plan))
    for name, reason in summary.refused.items():
        log(f"refused {name}: {reason}")
    unique = plan.unique()
    for model in {json.dumps(ep.setting.model, sort_keys=True): ep.setting.model for ep in unique}.values():
        execute.base_for(model, log=log)  # pre-trains once, before any worker starts
    est = plan.grid.estimate
    cost = {ep.content_key: {"train": estimate.train_seconds(ep, est), "test": estimate.test_seconds(ep, est)}
            for ep in unique}
    work = {ep.content_key: _work(ep, output) for ep in unique}
    trainings = sum(mode != "test" for modes in work.values() for mode in modes)
    summary.skipped = plan.run_count - trainings
    if summary.skipped:
        log(f"{summary.skipped} of {plan.run_count} runs already finished in {output}: skipped")
    bar = _bar(sum(_seconds(cost[k], m) for k, modes in work.items() for m in modes), trainings, progress)
    # in this process the caller's thread count stands (petal --threads); workers split it between them
    threads = max(1, torch.get_num_threads() // jobs) if jobs > 1 else None
    refused_keys: dict = {}
    try:
        with _Executor(jobs, threads) as pool:
            for phase in ("sweep", "chosen"):
                tasks = []
                for ep in unique:
                    twin = ep.twin
                    if twin is not None and twin.content_key in refused_keys:
                        refused_keys.setdefault(ep.content_key, f"its uncached twin {twin.experiment.name}, "
                                                f"whose rate it takes, was refused: "
                                                f"{refused_keys[twin.content_key]}")
                    if ep.content_key in refused_keys:
                        continue
                    if phase == "sweep":
                        tasks += _sweep_tasks(ep, output)
                    else:
                        _drop_states(ep, output)
                        tasks += _chosen_tasks(ep, output)
                items = [((ep, run, mode), _task(ep, run, mode, output, threads)) for ep, run, mode in tasks]
                for (ep, run, mode), error, _ in pool.run(items):
                    if error is not None:
                        refused_keys[ep.content_key] = error
                        log(f"refused {ep.experiment.name} (lr {run.lr:g}, seed {run.seed}): {error}")
                    elif mode == "test":
                        summary.tested += 1
                    else:
                        summary.ran += 1
                        summary.tested += mode == "full"
                    bar.update(_seconds(cost[ep.content_key], mode))
                    bar.set_description_str(f"petal compare: {summary.ran}/{trainings} runs")
    finally:
        bar.close()
    for ep in unique:
        _drop_states(ep, output)
    for ep in plan.runnable:
        if ep.content_key in refused_keys:
            summary.refused[ep.experiment.name] = refused_keys[ep.content_key]
    summary.seconds = time.perf_counter() - start
    return summary


def _seconds(cost: dict, mode: str) -> float:
    """Estimated seconds of a task: a "sweep" run trains, a "test" evaluates, a "full" run does both."""
    return (cost["train"] if mode != "test" else 0.0) + (cost["test"] if mode != "sweep" else 0.0)


def _sweep_tasks(ep: ExperimentPlan, output: Path) -> list[tuple]:
    """The sweep runs not finished yet; they wait for the choice of the rate to be tested (a sweep of one
    rate has chosen it: that run is tested at once)."""
    mode = "sweep" if ep.defers_test else "full"
    return [(ep, run, mode) for run in ep.sweep_runs() if read_result(output, run) is None]


def _chosen_tasks(ep: ExperimentPlan, output: Path) -> list[tuple]:
    """Once the rate is chosen: the chosen sweep run's test (trained again if its state file is gone), and
    the seeds at that rate not finished yet; nothing while the rate is not known."""
    lr = choose_lr(ep, output)
    if lr is None:
        return []
    tasks = []
    for run in ep.sweep_runs():
        result = read_result(output, run)
        if run.lr == lr and result is not None and result.get("test") is None:
            tasks.append((ep, run, "test" if state_path(output, run).is_file() else "full"))
    return tasks + [(ep, run, "full") for run in ep.seed_runs(lr) if read_result(output, run) is None]


def _work(ep: ExperimentPlan, output: Path) -> list[str]:
    """The modes of the tasks ``ep`` still needs (those after an unknown choice counted as they will be)."""
    modes = [mode for _, _, mode in _sweep_tasks(ep, output)]
    if choose_lr(ep, output) is not None:
        return modes + [mode for _, _, mode in _chosen_tasks(ep, output)]
    return modes + ["test"] * ep.defers_test + ["full"] * len(ep.seed_runs(0.0))


def _drop_states(ep: ExperimentPlan, output: Path) -> None:
    """Delete the kept states no test evaluation will read: those of the rates not chosen, and the chosen
    run's once its test is in its result file."""
    lr = choose_lr(ep, output)
    if lr is None:
        return
    for run in ep.sweep_runs():
        result = read_result(output, run)
        if run.lr != lr or (result is not None and result.get("test") is not None):
            state_path(output, run).unlink(missing_ok=True)


def _task(ep: ExperimentPlan, run: Run, mode: str, output: Path, threads: Optional[int]) -> execute.Task:
    return execute.Task(key=run.key, content_key=ep.content_key, content=ep.content, lr=run.lr, seed=run.seed,
                        result_file=str(result_path(output, run)),
                        select_metric=ep.setting.select["metric"], threads=threads, mode=mode,
                        state_file=str(state_path(output, run)))


def _attempt(task: execute.Task):
    """Run a task; a ``ValueError`` (the run is refused: e.g. the method does not fit the model, or the
    feature cache would not be exact) comes back as its message instead of stopping the grid."""
    try:
        return None, execute.execute(task)
    except ValueError as e:
        return str(e), None


def _ignore_interrupts() -> None:
    """Workers leave Ctrl-C to the main process, which stops them."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


class _Executor:
    """Runs tasks in this process (``jobs=1``) or in ``jobs`` worker processes; yields as they finish."""

    def __init__(self, jobs: int, threads: Optional[int]):
        self.jobs, self.threads, self.pool = jobs, threads, None

    def __enter__(self):
        if self.jobs > 1:
            import multiprocessing

            self.pool = ProcessPoolExecutor(self.jobs, mp_context=multiprocessing.get_context("spawn"),
                                            initializer=_ignore_interrupts)
        return self

    def __exit__(self, kind, value, tb):
        if self.pool is None:
            return
        if kind is not None:  # Ctrl-C or an error: stop the runs in progress (their results are not written)
            for process in list(getattr(self.pool, "_processes", {}).values()):
                process.terminate()
        self.pool.shutdown(wait=kind is None, cancel_futures=True)

    def run(self, items):
        """``items``: ``(tag, task)`` pairs; yields ``(tag, error, result)`` as each task finishes."""
        if self.pool is None:
            for tag, task in items:
                error, result = _attempt(task)
                yield tag, error, result
            return
        pending = {self.pool.submit(_attempt, task): tag for tag, task in items}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                tag = pending.pop(future)
                error, result = future.result()
                yield tag, error, result


def _bar(total_seconds: float, runs: int, show: bool):
    from tqdm.auto import tqdm

    # progress in estimated seconds of work, so the ETA weighs a full fine-tuning run above a head run
    return tqdm(total=max(total_seconds, 1e-9), disable=not show or runs == 0,
                desc=f"petal compare: 0/{runs} runs", dynamic_ncols=True,
                bar_format="{desc} {percentage:3.0f}%|{bar}| [{elapsed} elapsed, ETA {remaining}]")


__all__ = ["Summary", "base_dir", "refusals", "run_plan"]
