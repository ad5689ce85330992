"""The plan as text: what ``petal compare --dry-run`` prints (and the runner prints before it starts)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..cli.common import table
from . import estimate
from .grid import budget_text
from .plan import Plan
from .results import experiment_runs, read_result


def measured_step_seconds(plan: Plan, output: Optional[Path]) -> dict:
    """``{content_key: median seconds per step}`` of runs already finished in ``output``."""
    found = {}
    if output is None:
        return found
    for ep in plan.unique():
        _, runs = experiment_runs(ep, output)
        times = [r["seconds_per_step"] for r in (read_result(output, run) for run in runs)
                 if r is not None and r.get("seconds_per_step")]
        if times:
            found[ep.content_key] = sorted(times)[len(times) // 2]
    return found


def plan_text(plan: Plan, output: Optional[Path] = None, jobs: int = 1) -> str:
    """The plan; CPU estimates are wall time with ``jobs`` runs in parallel."""
    grid, est = plan.grid, plan.grid.estimate
    gpu = est.get("device", "cpu") == "gpu"
    measured = {} if gpu else measured_step_seconds(plan, output)
    seconds = estimate.plan_seconds(plan, measured)
    lines = [f"grid {grid.name!r} ({grid.root}): {len(plan.experiments)} experiments, "
             f"{len(plan.runnable)} runnable ({len(plan.unique())} distinct trainings), "
             f"{len(plan.blocked)} refused", grid.description, ""]
    rows = []
    shared = set()
    for ep in plan.experiments:
        exp = ep.experiment
        if not ep.runnable:
            rows.append([exp.name, exp.table, exp.preset, exp.setting, "-", "-", "REFUSED (see below)"])
            continue
        b = ep.setting.budget
        first = ep.content_key not in shared
        shared.add(ep.content_key)
        cost = _duration(seconds[ep.content_key], gpu) if first else "(shares the runs above)"
        records = est.get("train_records", {}).get(ep.setting.source)
        steps = estimate.steps_of(ep, records, est.get("gpus", 1) if gpu else 1) if (
            b.max_steps or gpu) else f"{b.epochs:g} epochs"
        runs = (f"{b.seeds} seeds at {ep.twin.experiment.name}'s lr" if ep.twin is not None
                else f"{len(b.lrs)} lr x seed 0 + {b.seeds - 1} seeds")
        rows.append([exp.name, exp.table, exp.preset + (" +overrides" if exp.overrides else ""), exp.setting,
                     runs if first else "-", str(steps), cost])
    lines.append(table(["experiment", "table", "preset", "setting", "runs", "steps/run", "estimate"], rows))
    lines.append("")
    lines.append(f"budget (every method of a setting alike) - {budget_text(grid)}")
    total = sum(seconds.values())
    pre = estimate.pretrain_seconds(plan)
    if gpu:
        node_hours = total / 3600
        lines.append(f"estimate: {_runs(plan)}, {node_hours:.1f} hours on {est['gpus']} GPUs = "
                     f"{node_hours * est['gpus']:.0f} GPU hours" + _uncounted(plan))
        lines.append(f"  from a FLOP count, not a measurement: {est.get('source', '')}")
        lines.append("  " + _table5_check(plan))
    else:
        where = (f"{len(measured)} experiments from their finished runs in {output}, the rest from "
                 if measured else "")
        from .runner import base_dir

        cached = (base_dir(grid.model) / "pretrain.json").is_file()
        pre = 0.0 if cached else pre
        lines.append(f"estimate: {_runs(plan)}, {_duration(total / jobs, False)} with {jobs} run(s) "
                     f"at a time, plus pre-training the compare model: "
                     f"{'cached' if cached else _duration(pre, False)} "
                     f"(total {_duration(total / jobs + pre, False)})" + _uncounted(plan))
        lines.append(f"  step times: {where}{est.get('source', 'the grid estimate table')}")
    if plan.blocked:
        lines.append("")
        lines.append(f"refused ({len(plan.blocked)}): these experiments cannot run with this petal and will "
                     "not be started; their rows in REPORT.md say why:")
        lines += [f"  {ep.experiment.name}: {ep.blocked}" for ep in plan.blocked]
    return "\n".join(lines)


def _runs(plan: Plan) -> str:
    return f"{plan.run_count} runs ({plan.test_count} evaluated on test: those at the chosen rate)"


def _uncounted(plan: Plan) -> str:
    return f"; the {len(plan.blocked)} refused experiments are not counted" if plan.blocked else ""


def _table5_check(plan: Plan) -> str:
    """The FLOP model's Table-5 ratios next to the paper's, so the estimate can be judged."""
    est = plan.grid.estimate
    flops: dict = {}
    for ep in plan.unique():
        if ep.experiment.table == "main" and ep.setting.model.get("name") in est.get("models", {}):
            flops.setdefault(ep.experiment.row, (estimate.gpu_example_flops(ep, est),
                                                 estimate.instructions_per_image(ep.content)))
    if "full" not in flops:
        return ""
    parts = [f"{row}'s step at {flops[row][0] / flops['full'][0]:.2f}x"
             + (f" ({flops[row][1]} instructions per image in the Q-Former)" if flops[row][1] > 1 else "")
             for row in ("petal", "lora") if row in flops]
    if not parts:
        return ""
    return (f"the FLOP model puts {' and '.join(parts)} full fine-tuning's (paper Table 5: PETAL 0.85-0.91x, "
            "LoRA 0.86-0.93x)")


def _duration(seconds: float, gpu: bool) -> str:
    if gpu:
        return f"{seconds / 3600:.2f} node-h"
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min"


__all__ = ["measured_step_seconds", "plan_text"]
