"""A grid: ``grid.json`` (the model, the budget every method gets, the data settings, evaluation) and
``experiments/**/*.json`` (one file per method and setting, see :mod:`.experiment`).

    grid.json
    {"name": "quick", "description": "...",
     "model": {"kind": "compare"} | {"kind": "hf", "name": "Salesforce/instructblip-flan-t5-xxl"},
     "budget": {"max_steps": 60, "batch_size": 16, "lrs": [3e-4, 1e-3, 3e-3], "seeds": 3, ...},
     "select": {"metric": "loss", "mode": "min"},        # the learning rate chosen on val by this
     "eval": {"num_beams": 5, "max_new_tokens": 12, "batch_size": 64,
              "cider_tokenizer": "auto", "rouge_variant": "petal-paper"},   # the scorers' choices
     "settings": {"rotated": {"data": {...}, "budget": {...optional overrides...}, "model": {...optional},
                              "select": {...optional}}}}

The shipped grids live in ``petal/compare/grids/<name>``; ``--grid`` takes such a name or a folder.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from .data import check as check_data
from .experiment import Experiment

GRIDS_DIR = Path(__file__).parent / "grids"
GRID_FILE = "grid.json"
SELECT_MODES = ("min", "max")
EVAL_KEYS = ("num_beams", "max_new_tokens", "batch_size", "cider_tokenizer", "rouge_variant")


@dataclass(frozen=True)
class Budget:
    """What every method of a setting gets: the same data, steps, batch and learning-rate sweep."""

    lrs: tuple = (1e-3,)
    seeds: int = 3
    max_steps: Optional[int] = None
    epochs: float = 5.0
    batch_size: int = 16
    weight_decay: float = 0.02
    warmup_steps: Optional[int] = None
    max_grad_norm: float = 1.0

    @classmethod
    def from_dict(cls, data: dict, where: str) -> Budget:
        _known(data, cls, where)
        data = dict(data)
        if "lrs" in data:
            lrs = data["lrs"]
            if isinstance(lrs, (str, bytes)) or not isinstance(lrs, (list, tuple)) or not lrs or not all(
                    _number(x) and x > 0 for x in lrs):
                raise ValueError(f"{where}: lrs must be a non-empty list of positive numbers, got {lrs!r}")
            data["lrs"] = tuple(float(x) for x in lrs)
        budget = cls(**data)
        for name in ("seeds", "batch_size"):
            if not _integer(getattr(budget, name), 1):
                raise ValueError(f"{where}: {name} must be a positive integer, got {getattr(budget, name)!r}")
        for name in ("max_steps",):
            value = getattr(budget, name)
            if value is not None and not _integer(value, 1):
                raise ValueError(f"{where}: {name} must be null or a positive integer, got {value!r}")
        if budget.warmup_steps is not None and not _integer(budget.warmup_steps, 0):
            raise ValueError(f"{where}: warmup_steps must be null or an integer >= 0, got "
                             f"{budget.warmup_steps!r}")
        if not (_number(budget.epochs) and budget.epochs > 0):
            raise ValueError(f"{where}: epochs must be a positive number, got {budget.epochs!r}")
        if not (_number(budget.weight_decay) and budget.weight_decay >= 0):
            raise ValueError(f"{where}: weight_decay must be a number >= 0, got {budget.weight_decay!r}")
        if not (_number(budget.max_grad_norm) and budget.max_grad_norm > 0):
            raise ValueError(f"{where}: max_grad_norm must be a positive number, got "
                             f"{budget.max_grad_norm!r}")
        return budget

    def run_part(self) -> dict:
        """What a single run trains with (the sweep and the seed count are the grid's, not the run's)."""
        out = asdict(self)
        out.pop("lrs")
        out.pop("seeds")
        return out


@dataclass(frozen=True)
class Setting:
    name: str
    data: dict
    budget: Budget
    model: dict
    select: dict                    # how its learning rate is chosen on val

    @property
    def source(self) -> str:
        return self.data.get("source", "synthetic")


@dataclass(frozen=True)
class Grid:
    name: str
    root: Path
    description: str
    model: dict
    budget: Budget
    select: dict
    eval: dict
    settings: dict                  # name -> Setting
    experiments: list = field(default_factory=list)
    estimate: dict = field(default_factory=dict)

    def setting(self, name: str) -> Setting:
        if name not in self.settings:
            raise ValueError(f"setting {name!r} is not defined in {self.root / GRID_FILE} "
                             f"(settings: {sorted(self.settings)})")
        return self.settings[name]


def budget_text(grid: Grid) -> str:
    """The budgets of a grid's settings in words (settings that share one are listed together)."""
    groups: dict = {}
    for name, s in grid.settings.items():
        groups.setdefault(json.dumps([asdict(s.budget), s.select], sort_keys=True), []).append(name)
    parts = []
    for key, names in groups.items():
        b, select = json.loads(key)
        length = f"{b['max_steps']} steps" if b["max_steps"] else f"{b['epochs']:g} epochs"
        parts.append(f"{', '.join(names)}: learning rates {b['lrs']} at seed 0, the best on val by "
                     f"{select['mode']} {select['metric']}, then seeds 1..{b['seeds'] - 1} at it; batch "
                     f"{b['batch_size']}, {length}, weight decay {b['weight_decay']:g}")
    return "; ".join(parts)


def shipped_grids() -> list[str]:
    return sorted(p.name for p in GRIDS_DIR.iterdir() if (p / GRID_FILE).is_file())


def grid_root(spec: str) -> Path:
    path = Path(spec)
    if (path / GRID_FILE).is_file():
        return path
    if (GRIDS_DIR / spec / GRID_FILE).is_file():
        return GRIDS_DIR / spec
    if path.exists():
        raise ValueError(f"--grid {spec}: {path} has no {GRID_FILE}")
    raise ValueError(f"--grid {spec!r} is neither a shipped grid ({', '.join(shipped_grids())}) nor a folder "
                     f"holding {GRID_FILE}")


def load_grid(spec: str) -> Grid:
    """The grid named ``spec`` (shipped) or in the folder ``spec``, with every experiment file."""
    root = grid_root(spec)
    path = root / GRID_FILE
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from None
    allowed = {"name", "description", "model", "budget", "select", "eval", "settings", "estimate"}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ValueError(f"{path}: unknown keys {unknown}; a grid has {sorted(allowed)}")
    model = _model(data.get("model", {"kind": "compare"}), f"{path}: model")
    budget = Budget.from_dict(data.get("budget", {}), f"{path}: budget")
    select = _select(data.get("select", {"metric": "loss", "mode": "min"}), f"{path}: select")
    settings = {}
    raw_settings = data.get("settings")
    if not isinstance(raw_settings, dict) or not raw_settings:
        raise ValueError(f"{path}: settings must be a non-empty object of named data settings")
    for name, s in raw_settings.items():
        where = f"{path}: settings.{name}"
        if not isinstance(s, dict) or not isinstance(s.get("data"), dict):
            raise ValueError(f"{where} must be an object with a 'data' object")
        extra = sorted(set(s) - {"data", "budget", "model", "select"})
        if extra:
            raise ValueError(f"{where}: unknown keys {extra}; a setting has data, budget, model, select")
        check_data(s["data"], f"{where}.data")
        merged = {**asdict(budget), **s.get("budget", {})}
        settings[name] = Setting(name, dict(s["data"]), Budget.from_dict(merged, f"{where}.budget"),
                                 _model(s.get("model", model), f"{where}.model"),
                                 _select(s.get("select", select), f"{where}.select"))
    grid = Grid(name=str(data.get("name", root.name)), root=root,
                description=str(data.get("description", "")), model=model, budget=budget, select=select,
                eval=_eval(data.get("eval", {}), f"{path}: eval"), settings=settings,
                estimate=dict(data.get("estimate", {})))
    grid.experiments.extend(_experiments(root))
    for exp in grid.experiments:
        grid.setting(exp.setting)
    return grid


def _experiments(root: Path) -> list[Experiment]:
    folder = root / "experiments"
    if not folder.is_dir():
        raise ValueError(f"grid {root} has no experiments/ folder")
    files = sorted(folder.rglob("*.json"))
    if not files:
        raise ValueError(f"grid {root}: experiments/ holds no .json files")
    return [Experiment.from_file(f, f.relative_to(folder).with_suffix("").as_posix()) for f in files]


def _eval(data, where: str) -> dict:
    """Beam search and the scorers' choices (:func:`petal.evaluate.evaluate`'s arguments of those names)."""
    from ..metrics import ROUGE_VARIANTS, TOKENIZERS

    if not isinstance(data, dict):
        raise ValueError(f"{where} must be an object, got {data!r}")
    unknown = sorted(set(data) - set(EVAL_KEYS))
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; known keys are {list(EVAL_KEYS)}")
    for name in ("num_beams", "max_new_tokens", "batch_size"):
        if name in data and not _integer(data[name], 1):
            raise ValueError(f"{where}: {name} must be a positive integer, got {data[name]!r}")
    for name, choices in (("cider_tokenizer", TOKENIZERS), ("rouge_variant", ROUGE_VARIANTS)):
        if name in data and data[name] not in choices:
            raise ValueError(f"{where}: {name} must be one of {list(choices)}, got {data[name]!r}")
    return dict(data)


def _select(data, where: str) -> dict:
    ok = isinstance(data, dict) and isinstance(data.get("metric"), str) and data.get("mode") in SELECT_MODES
    if not ok:
        raise ValueError(f"{where} needs a metric name and mode 'min' or 'max', got {data!r}")
    return dict(data)


def _model(data, where: str) -> dict:
    if not isinstance(data, dict) or data.get("kind") not in ("compare", "hf"):
        raise ValueError(f"{where} must be {{'kind': 'compare'}} or {{'kind': 'hf', 'name': <checkpoint>}}, "
                         f"got {data!r}")
    if data["kind"] == "hf" and not isinstance(data.get("name"), str):
        raise ValueError(f"{where}: an 'hf' model needs a 'name' (a checkpoint), got {data!r}")
    return dict(data)


def _known(data, cls, where: str) -> None:
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be an object, got {data!r}")
    known = set(cls.__dataclass_fields__)
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; known keys are {sorted(known)}")


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _integer(x, low: int) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= low


__all__ = ["Budget", "GRIDS_DIR", "GRID_FILE", "Grid", "Setting", "budget_text", "load_grid", "shipped_grids"]
