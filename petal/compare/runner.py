"""Run a plan: pre-train (or load) the base models, then every experiment's learning-rate sweep, then its
other seeds at the rate chosen on val; finished runs (their result files) are skipped; one progress bar
with an ETA over the whole grid. Experiments that cannot run are refused, never dropped: they are listed
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
from .results import choose_lr, read_result, result_path


@dataclass
class Summary:
    ran: int = 0
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
    per_run = {ep.content_key: estimate.run_seconds(ep, plan.grid.estimate) for ep in unique}
    todo = {ep.content_key: _count_todo(ep, output) for ep in unique}
    summary.skipped = plan.run_count - sum(todo.values())
    if summary.skipped:
        log(f"{summary.skipped} of {plan.run_count} runs already finished in {output}: skipped")
    bar = _bar(sum(per_run[k] * n for k, n in todo.items()), sum(todo.values()), progress)
    # in this process the caller's thread count stands (petal --threads); workers split it between them
    threads = max(1, torch.get_num_threads() // jobs) if jobs > 1 else None
    refused_keys: dict = {}
    try:
        with _Executor(jobs, threads) as pool:
            for phase in ("sweep", "seeds"):
                tasks = []
                for ep in unique:
                    if ep.content_key in refused_keys:
                        continue
                    if phase == "sweep":
                        runs = ep.sweep_runs()
                    else:
                        lr = choose_lr(ep, output)
                        runs = ep.seed_runs(lr) if lr is not None else []
                    tasks += [(ep, run) for run in runs if read_result(output, run) is None]
                for ep, run, error, _ in pool.run(
                        [(ep, run, _task(ep, run, output, plan, threads)) for ep, run in tasks]):
                    if error is not None:
                        refused_keys[ep.content_key] = error
                        log(f"refused {ep.experiment.name} (lr {run.lr:g}, seed {run.seed}): {error}")
                    else:
                        summary.ran += 1
                    bar.update(per_run[ep.content_key])
                    bar.set_description_str(f"petal compare: {summary.ran}/{sum(todo.values())} runs")
    finally:
        bar.close()
    for ep in plan.runnable:
        if ep.content_key in refused_keys:
            summary.refused[ep.experiment.name] = refused_keys[ep.content_key]
    summary.seconds = time.perf_counter() - start
    return summary


def _count_todo(ep: ExperimentPlan, output: Path) -> int:
    todo = sum(read_result(output, r) is None for r in ep.sweep_runs())
    lr = choose_lr(ep, output)
    return todo + ((ep.setting.budget.seeds - 1) if lr is None else sum(
        read_result(output, r) is None for r in ep.seed_runs(lr)))


def _task(ep: ExperimentPlan, run: Run, output: Path, plan: Plan, threads: Optional[int]) -> execute.Task:
    return execute.Task(key=run.key, content_key=ep.content_key, content=ep.content, lr=run.lr, seed=run.seed,
                        result_file=str(result_path(output, run)),
                        select_metric=ep.setting.select["metric"], threads=threads)


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
        if self.pool is None:
            for ep, run, task in items:
                error, result = _attempt(task)
                yield ep, run, error, result
            return
        pending = {self.pool.submit(_attempt, task): (ep, run) for ep, run, task in items}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                ep, run = pending.pop(future)
                error, result = future.result()
                yield ep, run, error, result


def _bar(total_seconds: float, runs: int, show: bool):
    from tqdm.auto import tqdm

    # progress in estimated seconds of work, so the ETA weighs a full fine-tuning run above a head run
    return tqdm(total=max(total_seconds, 1e-9), disable=not show or runs == 0,
                desc=f"petal compare: 0/{runs} runs", dynamic_ncols=True,
                bar_format="{desc} {percentage:3.0f}%|{bar}| [{elapsed} elapsed, ETA {remaining}]")


__all__ = ["Summary", "base_dir", "refusals", "run_plan"]
