"""Result files and ``results.json``: writing them atomically, reading them back, choosing each
experiment's learning rate on val, and the rows of ``results.json``.

One result file per run, ``<output>/runs/<content key>/seed<S>-lr<LR>.json``; ``results.json`` is a list
of rows ``{"table", "method", "setting", "seed", "lr", "selected", "trainable_parameters", "metrics",
"train_seconds", ...}`` (``metrics``: the test metrics; ``selected``: the run used the learning rate
chosen on val, so it counts in the report's mean ± std; ``test_evaluated``: false for a sweep run whose rate
was not chosen, which is never evaluated on test, so its ``metrics`` are ``{}``).
"""

from __future__ import annotations

import json
import math
import os
import statistics
import tempfile
from pathlib import Path
from typing import Optional

from .plan import ExperimentPlan, Plan, Run

RUNS_DIR = "runs"
RESULTS_FILE = "results.json"


def write_json(path: Path, obj) -> None:
    """Write ``obj`` as JSON so that ``path`` holds either the old content or the new one, never a part."""
    write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True, default=_jsonable) + "\n").encode())


def write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` into a temporary file next to ``path``, then rename it over ``path`` (atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _jsonable(x):
    if isinstance(x, (tuple, set)):
        return list(x)
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"cannot write {type(x).__name__} to JSON")


def result_path(output: Path, run: Run) -> Path:
    return Path(output) / RUNS_DIR / run.content_key / run.file_name


def state_path(output: Path, run: Run) -> Path:
    return Path(output) / RUNS_DIR / run.content_key / run.state_file_name


def read_result(output: Path, run: Run) -> Optional[dict]:
    """The finished run's result, or ``None`` (no file, or a file of another run under that name)."""
    path = result_path(output, run)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None  # cannot happen with write_json; a hand-edited file is rerun rather than trusted
    return data if data.get("key") == run.key else None


def metric(result: dict, split: str, name: str) -> Optional[float]:
    """``name`` of a result's ``split``: ``loss``, a metric (``vqa_accuracy``) or a nested one
    (``by_family.colour.vqa_accuracy``)."""
    part = result.get(split) or {}
    if name == "loss":
        value = part.get("loss")
    else:
        value = part.get("metrics") or {}
        for piece in name.split("."):
            value = value.get(piece) if isinstance(value, dict) else None
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def choose_lr(plan: ExperimentPlan, output: Path) -> Optional[float]:
    """The sweep's best learning rate on val by its setting's ``select`` (first in sweep order on ties);
    ``None`` until every sweep run has finished. A run whose val metric is missing or not finite (diverged)
    never wins unless all are. A cached twin takes its twin's choice."""
    if plan.twin is not None:
        return choose_lr(plan.twin, output)
    select = plan.setting.select
    scores = []
    for run in plan.sweep_runs():
        result = read_result(output, run)
        if result is None:
            return None
        value = metric(result, "val", select["metric"])
        scores.append((run.lr, value))
    valid = [(lr, v) for lr, v in scores if v is not None]
    if not valid:
        return scores[0][0]
    best = min if select["mode"] == "min" else max
    return best(valid, key=lambda lv: lv[1])[0]


def experiment_runs(plan: ExperimentPlan, output: Path) -> tuple[Optional[float], list[Run]]:
    """(chosen lr or None, every run of the experiment known so far: the sweep, then the other seeds)."""
    lr = choose_lr(plan, output)
    runs = plan.sweep_runs()
    if lr is not None:
        runs += plan.seed_runs(lr)
    return lr, runs


def rows(plan: Plan, output: Path) -> list[dict]:
    """The rows of ``results.json``: one per finished run of every runnable experiment."""
    out = []
    for ep in plan.runnable:
        lr, runs = experiment_runs(ep, output)
        for run in runs:
            result = read_result(output, run)
            if result is None:
                continue
            exp = ep.experiment
            out.append({
                "table": exp.table, "method": exp.method, "setting": exp.setting, "experiment": exp.name,
                "seed": run.seed, "lr": run.lr, "selected": lr is not None and run.lr == lr,
                "trainable_parameters": result["trainable_parameters"],
                "test_evaluated": result.get("test") is not None,
                "metrics": (result.get("test") or {}).get("metrics", {}),
                "test_loss": (result.get("test") or {}).get("loss"),
                "val_loss": (result.get("val") or {}).get("loss"),
                "train_seconds": result["train_seconds"], "seconds_per_step": result["seconds_per_step"],
                "peak_memory_bytes": result.get("peak_memory_bytes"),
                "cache_image_features": bool(ep.content.get("cache_image_features")),
                "result_file": str(result_path(output, run).relative_to(output)),
            })
    return out


def write_results(plan: Plan, output: Path) -> list[dict]:
    found = rows(plan, output)
    write_json(Path(output) / RESULTS_FILE, found)
    return found


def mean_std(values: list) -> tuple[Optional[float], Optional[float], int]:
    values = [v for v in values if v is not None]
    if not values:
        return None, None, 0
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return statistics.fmean(values), std, len(values)


__all__ = ["RESULTS_FILE", "RUNS_DIR", "choose_lr", "experiment_runs", "mean_std", "metric", "read_result",
           "result_path", "rows", "state_path", "write_bytes", "write_json", "write_results"]
