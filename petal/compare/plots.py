"""The report's figures (matplotlib, Agg): a metric against trainable parameters with the Pareto front,
against training time, and against the number of AIM experts. Each returns the file it wrote, or ``None``
with nothing written when there is nothing to plot."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from .summary import ExperimentSummary

TRADEOFF_TABLES = ("main", "vl-pet", "ablation")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def headline_metrics(summaries: list[ExperimentSummary]) -> list[str]:
    found = {name for s in summaries for name in s.metrics}
    return [m for m in ("vqa_accuracy", "cider") if m in found]


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not dominated by one with fewer (or equal) parameters and a higher (or equal) score."""
    front, best = [], float("-inf")
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if y > best:
            front.append((x, y))
            best = y
    return front


def _ran(summaries, tables) -> list[ExperimentSummary]:
    """Finished, uncached experiments of ``tables``, one per distinct training (the first table wins)."""
    out, seen = [], set()
    for table in tables:
        for s in summaries:
            if s.table == table and s.seeds and not s.cached and s.plan.content_key not in seen:
                seen.add(s.plan.content_key)
                out.append(s)
    return out


def tradeoff(summaries: list[ExperimentSummary], out: Path, x: str) -> Optional[Path]:
    """Headline metrics against ``x``: ``"params"`` (log scale, with the Pareto front) or ``"time"``."""
    rows = _ran(summaries, TRADEOFF_TABLES)
    metrics = headline_metrics(rows)
    if not rows or not metrics:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(metrics), figsize=(6.0 * len(metrics), 4.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        pts = []
        for s in rows:
            stat = s.stat(metric)
            xv = s.trainable if x == "params" else s.seconds_per_step.mean
            if stat.mean is None or not xv:
                continue
            pts.append((xv, 100 * stat.mean))
            ax.errorbar(xv, 100 * stat.mean, yerr=100 * (stat.std or 0), fmt="o", capsize=3,
                        color="C0" if s.table == "main" else ("C1" if s.table == "vl-pet" else "C2"))
            ax.annotate(s.method, (xv, 100 * stat.mean), textcoords="offset points", xytext=(4, 4),
                        fontsize=7)
        if x == "params":
            ax.set_xscale("log")
            front = pareto_front(pts)
            if len(front) > 1:
                ax.step(*zip(*front), where="post", color="C3", alpha=0.6, label="Pareto front")
                ax.legend(loc="lower right", fontsize=8)
            ax.set_xlabel("trainable parameters")
        else:
            ax.set_xlabel("training seconds per step (median)")
        ax.set_ylabel(f"{metric} (x100, test, mean ± std over seeds)")
        ax.grid(alpha=0.3)
    fig.suptitle("blue: PETAL's table (Q-Former methods); orange: VL-PET's (T5); green: PETAL ablations",
                 fontsize=9)
    fig.tight_layout()
    path = Path(out) / f"{'params' if x == 'params' else 'time'}_tradeoff.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def experts_curve(summaries: list[ExperimentSummary], out: Path) -> Optional[Path]:
    rows = [s for s in _ran(summaries, ("experts",)) if experts_of(s) is not None]
    metrics = headline_metrics(rows)
    if not rows or not metrics:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.0 * len(metrics), 3.8), squeeze=False)
    rows.sort(key=experts_of)
    for ax, metric in zip(axes[0], metrics):
        ks = [experts_of(s) for s in rows if s.stat(metric).mean is not None]
        ys = [100 * s.stat(metric).mean for s in rows if s.stat(metric).mean is not None]
        es = [100 * (s.stat(metric).std or 0) for s in rows if s.stat(metric).mean is not None]
        ax.errorbar(ks, ys, yerr=es, marker="o", capsize=3)
        ax.set_xlabel("AIM experts (K)")
        ax.set_ylabel(f"{metric} (x100, test)")
        ax.set_xticks(ks)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(out) / "experts_curve.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def experts_of(s: ExperimentSummary) -> Optional[int]:
    aim = s.plan.content.get("petal", {}).get("aim", {})
    return aim.get("num_experts") if aim.get("enabled", True) else None


def write_plots(summaries: list[ExperimentSummary], out: Path) -> dict:
    return {"params": tradeoff(summaries, out, "params"), "time": tradeoff(summaries, out, "time"),
            "experts": experts_curve(summaries, out)}


__all__ = ["experts_curve", "experts_of", "headline_metrics", "pareto_front", "tradeoff", "write_plots"]
