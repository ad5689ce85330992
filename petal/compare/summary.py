"""Each experiment's runs at its chosen learning rate, reduced to mean ± std: what the report, the plots and
the comparison with the papers read."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .plan import ExperimentPlan, Plan
from .results import experiment_runs, mean_std, read_result


@dataclass
class Stat:
    mean: Optional[float]
    std: Optional[float]
    n: int

    def text(self, scale: float = 100.0, digits: int = 1) -> str:
        if self.mean is None:
            return "-"
        body = f"{self.mean * scale:.{digits}f}"
        return body + (f" ± {self.std * scale:.{digits}f}" if self.n > 1 else "")


@dataclass
class ExperimentSummary:
    plan: ExperimentPlan
    refused: Optional[str] = None           # why it did not run
    lr: Optional[float] = None              # chosen on val
    seeds: int = 0                          # finished runs at that rate
    trainable: Optional[int] = None
    metrics: dict = field(default_factory=dict)   # flattened test metric name -> Stat
    scorers: dict = field(default_factory=dict)   # the test metrics' text fields: which scorer, tokenizer,
    #                                               variant produced them (e.g. "vqa_scorer": "exact-match")
    seconds_per_step: Stat = field(default_factory=lambda: Stat(None, None, 0))
    train_seconds: Stat = field(default_factory=lambda: Stat(None, None, 0))
    peak_memory_bytes: Optional[int] = None
    load_average: Optional[float] = None          # the highest 1-minute load average seen around its runs
    cpus: Optional[int] = None

    @property
    def name(self) -> str:
        return self.plan.experiment.name

    @property
    def preset(self) -> str:
        return self.plan.experiment.preset

    @property
    def method(self) -> str:
        return self.plan.experiment.method

    @property
    def row(self) -> str:
        """The papers' row it is compared with (``Experiment.row``)."""
        return self.plan.experiment.row

    @property
    def table(self) -> str:
        return self.plan.experiment.table

    @property
    def setting(self) -> str:
        return self.plan.experiment.setting

    @property
    def cached(self) -> bool:
        return self.plan.experiment.cache_image_features

    def stat(self, name: str) -> Stat:
        return self.metrics.get(name, Stat(None, None, 0))

    @property
    def note(self) -> str:
        """The status, or where the rate came from: a cached twin's from its twin's sweep, and a warning that
        the chosen rate is the sweep's smallest or largest."""
        if self.status:
            return self.status
        notes = []
        twin = self.plan.twin
        if twin is not None and self.lr is not None:
            notes.append(f"lr from {twin.experiment.name} (the same training without the cache)")
        lrs = self.plan.setting.budget.lrs
        if len(lrs) > 1 and self.lr in (min(lrs), max(lrs)):
            notes.append(f"chosen lr at the edge of the sweep {list(lrs)}")
        return "; ".join(notes)

    @property
    def status(self) -> str:
        if self.refused:
            return f"refused: {self.refused}"
        if self.seeds == 0:
            return "not run yet"
        return ""


def flatten(metrics: dict, prefix: str = "", text: bool = False) -> dict:
    """``{"by_family.colour.vqa_accuracy": 0.5, ...}``: the numbers of a nested metrics dict, or with
    ``text`` its strings (``vqa_scorer``, ``cider_tokenizer``, ``rouge_variant``); anything else is left."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}.", text))
        elif text and isinstance(value, str):
            out[f"{prefix}{key}"] = value
        elif not text and isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = float(value)
    return out


def summarize(plan: Plan, output: Path, refused: Optional[dict] = None) -> list[ExperimentSummary]:
    refused = refused or {}
    out = []
    for ep in plan.experiments:
        s = ExperimentSummary(ep, refused=ep.blocked or refused.get(ep.experiment.name))
        out.append(s)
        if not ep.runnable:
            continue
        lr, runs = experiment_runs(ep, Path(output))
        s.lr = lr
        # the runs at the chosen rate that have their test (the chosen sweep run's comes after the choice)
        results = [r for r in (read_result(output, run) for run in runs if run.lr == lr)
                   if r is not None and r.get("test") is not None]
        if lr is None or not results:
            continue
        s.seeds = len(results)
        s.trainable = results[0]["trainable_parameters"]
        per_metric: dict = {}
        per_text: dict = {}
        for r in results:
            metrics = (r.get("test") or {}).get("metrics") or {}
            for name, value in flatten(metrics).items():
                per_metric.setdefault(name, []).append(value)
            for name, value in flatten(metrics, text=True).items():
                per_text.setdefault(name, set()).add(value)
        s.metrics = {name: Stat(*mean_std(values)) for name, values in per_metric.items()}
        s.scorers = {name: " / ".join(sorted(values)) for name, values in per_text.items()}
        s.seconds_per_step = Stat(*mean_std([r.get("seconds_per_step") for r in results]))
        s.train_seconds = Stat(*mean_std([r.get("train_seconds") for r in results]))
        loads = [x for r in results for x in (r.get("environment", {}).get("load_average") or [])
                 if x is not None]
        s.load_average = max(loads) if loads else None
        s.cpus = results[0].get("environment", {}).get("cpus")
        peaks = [r.get("peak_memory_bytes") for r in results if r.get("peak_memory_bytes")]
        s.peak_memory_bytes = max(peaks) if peaks else None
    return out


# the paper's Table 4 columns: A-OKVQA accuracy, Flickr30K CIDEr and "ROUGE-L" F1 / recall, which its code
# computes as ROUGE-1 (README, "Training and evaluation"): our rouge1 keys compare like with like
ABLATION_METRICS = ("vqa_accuracy", "cider", "rouge1_f", "rouge1_r")


def first_stat(cells, metric: str) -> Stat:
    """``metric`` of the first of ``cells`` (one method's summaries, one per setting) that has it, so a row
    can take its accuracy from a VQA setting and its CIDEr from a captioning one, as the papers' tables do."""
    for s in cells:
        if not s.status and s.stat(metric).mean is not None:
            return s.stat(metric)
    return Stat(None, None, 0)


def ablation_avg(cells) -> Optional[float]:
    """The paper's Table 4 average over one method's summaries: VQA accuracy, CIDEr, ROUGE-1 F1 and recall
    (its "ROUGE-L"), each x100; ``None`` unless all four were measured."""
    values = [first_stat(cells, m).mean for m in ABLATION_METRICS]
    return None if any(v is None for v in values) else 100 * sum(values) / len(values)


def is_reference_petal(s: ExperimentSummary) -> bool:
    """The experiment standing for the papers' PETAL itself (``Experiment.row``)."""
    return s.row == "petal"


VL_PET_METRICS = ("vqa_accuracy", "cider", "rougeL_f")


def vl_pet_avg(cells) -> Optional[float]:
    """Mean (x100) of the VL-PET table's columns that one method's summaries measured."""
    values = [first_stat(cells, m).mean for m in VL_PET_METRICS]
    values = [v for v in values if v is not None]
    return 100 * sum(values) / len(values) if values else None


def by_method(summaries: list) -> dict:
    """``{method: [its summaries, one per setting]}`` in grid order."""
    out: dict = {}
    for s in summaries:
        out.setdefault(s.method, []).append(s)
    return out


__all__ = ["ABLATION_METRICS", "VL_PET_METRICS", "ExperimentSummary", "Stat", "ablation_avg", "by_method",
           "first_stat", "flatten", "is_reference_petal", "summarize", "vl_pet_avg"]
