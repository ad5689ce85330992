"""The plan of a grid: which experiments can run (and why not), the runs each needs, what they cost.

Every experiment of a setting gets the same budget: a learning-rate sweep at seed 0 (one run per rate of the
setting's ``lrs``), the rate chosen on val by the grid's ``select`` rule, then the remaining seeds at that
rate. Only the runs whose test counts are evaluated on test: a sweep run keeps its trained state until the
rate is chosen (:mod:`.execute`). An experiment that differs from another of the plan only by
``cache_image_features`` (the cache is exact) is its uncached twin's *cached twin*: it runs no sweep, but
every seed at the rate its twin chose. A run is keyed by a hash of everything that decides its outcome (the
resolved method config, not the preset's name; the base model; the data setting; the budget; evaluation; the
feature cache flag) plus its seed and learning rate, so an edited experiment reruns and two experiment files
that describe the same training share their runs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Optional

from . import model as models
from .experiment import Experiment
from .grid import Grid, Setting

KEY_VERSION = 1


@dataclass(frozen=True)
class Run:
    content_key: str
    lr: float
    seed: int

    @property
    def key(self) -> str:
        return _hash({"content": self.content_key, "lr": self.lr, "seed": self.seed})

    @property
    def file_name(self) -> str:
        return f"seed{self.seed}-lr{self.lr:g}.json"

    @property
    def state_file_name(self) -> str:
        """A sweep run's trained state, kept until its test evaluation (or the choice of another rate)."""
        return f"seed{self.seed}-lr{self.lr:g}.state.safetensors"


@dataclass
class ExperimentPlan:
    experiment: Experiment
    setting: Setting
    blocked: Optional[str] = None        # why it cannot run, or None
    content: dict = field(default_factory=dict)
    content_key: str = ""
    twin: Optional[ExperimentPlan] = field(default=None, repr=False)  # whose chosen rate this one takes

    @property
    def runnable(self) -> bool:
        return self.blocked is None

    def sweep_runs(self) -> list[Run]:
        """Seed 0 at every rate of the sweep (none for a cached twin, which takes its twin's rate)."""
        if self.twin is not None:
            return []
        return [Run(self.content_key, lr, 0) for lr in self.setting.budget.lrs]

    def seed_runs(self, lr: float) -> list[Run]:
        """The runs at the chosen rate after the sweep: seeds 1.. (0.. for a cached twin)."""
        first = 0 if self.twin is not None else 1
        return [Run(self.content_key, lr, s) for s in range(first, self.setting.budget.seeds)]

    @property
    def defers_test(self) -> bool:
        """Whether its sweep runs wait for the rate's choice before any is evaluated on test (a sweep of one
        rate chooses it: that run is evaluated at once)."""
        return len(self.sweep_runs()) > 1

    @property
    def run_count(self) -> int:
        """Trainings: the sweep and the other seeds."""
        return len(self.sweep_runs()) + len(self.seed_runs(0.0))

    @property
    def test_count(self) -> int:
        """Test evaluations: one per seed at the chosen rate."""
        return self.setting.budget.seeds


@dataclass
class Plan:
    grid: Grid
    experiments: list[ExperimentPlan]

    @property
    def runnable(self) -> list[ExperimentPlan]:
        return [e for e in self.experiments if e.runnable]

    @property
    def blocked(self) -> list[ExperimentPlan]:
        return [e for e in self.experiments if not e.runnable]

    def unique(self) -> list[ExperimentPlan]:
        """One runnable experiment per distinct content (files describing the same training share runs)."""
        seen, out = set(), []
        for e in self.runnable:
            if e.content_key not in seen:
                seen.add(e.content_key)
                out.append(e)
        return out

    @property
    def run_count(self) -> int:
        return sum(e.run_count for e in self.unique())

    @property
    def test_count(self) -> int:
        return sum(e.test_count for e in self.unique())


def make_plan(grid: Grid, only: Optional[set] = None) -> Plan:
    """Resolve every experiment of ``grid`` (those of the tables in ``only``, if given)."""
    plans = []
    for exp in grid.experiments:
        if only and exp.table not in only:
            continue
        setting = grid.setting(exp.setting)
        plan = ExperimentPlan(exp, setting)
        try:
            config = exp.petal_config()
        except ValueError as e:
            plan.blocked = str(e)
            plans.append(plan)
            continue
        plan.content = {"version": KEY_VERSION, "model": models.identity(setting.model), "data": setting.data,
                        "budget": setting.budget.run_part(), "eval": grid.eval, "petal": config.to_dict(),
                        "cache_image_features": exp.cache_image_features}
        plan.content_key = _hash(plan.content)
        plans.append(plan)
    _pair_twins(plans)
    return Plan(grid, plans)


def _pair_twins(plans: list[ExperimentPlan]) -> None:
    """Point each cached experiment at a runnable experiment of the plan with the same content but the
    cache off, if there is one: the cache is exact, so the two choose the same rate. Of several experiment
    files sharing the twin's runs, one of the main table's is named in the report."""
    uncached: dict = {}
    for p in sorted(plans, key=lambda p: p.experiment.table != "main"):
        if p.runnable and not p.content["cache_image_features"]:
            uncached.setdefault(p.content_key, p)
    for p in plans:
        if p.runnable and p.content["cache_image_features"]:
            p.twin = uncached.get(_hash({**p.content, "cache_image_features": False}))


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


__all__ = ["ExperimentPlan", "KEY_VERSION", "Plan", "Run", "make_plan"]
