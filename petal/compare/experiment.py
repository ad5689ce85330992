"""One experiment file: a method (a preset, optionally with config overrides) in one setting of a grid.

    {"table": "main", "method": "PETAL", "preset": "petal", "setting": "rotated",
     "overrides": {"aim": {"num_experts": 4}},      # optional: merged into the preset's PetalConfig
     "cache_image_features": false,                 # optional
     "note": "..."}                                 # optional, shown in the plan

``table`` says where its rows go in the report (:data:`TABLES`). Nothing about the budget (steps, batch,
learning rates, seeds) is set here: a grid gives every method of a setting the same budget.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

TABLES = ("main", "few-shot", "ablation", "timing", "experts", "vl-pet")
_REQUIRED = {"table": str, "method": str, "preset": str, "setting": str}
_OPTIONAL = {"overrides": dict, "cache_image_features": bool, "note": str}


@dataclass(frozen=True)
class Experiment:
    name: str                       # path of the file inside the grid's experiments/ folder, without .json
    table: str
    method: str
    preset: str
    setting: str
    overrides: dict = field(default_factory=dict)
    cache_image_features: bool = False
    note: str = ""
    path: Optional[Path] = None

    @classmethod
    def from_file(cls, path: Path, name: str) -> Experiment:
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"experiment file {path} is not valid JSON ({e})") from None
        return cls.from_dict(data, name, path)

    @classmethod
    def from_dict(cls, data, name: str, path: Optional[Path] = None) -> Experiment:
        where = f"experiment file {path}" if path else f"experiment {name!r}"
        if not isinstance(data, dict):
            raise ValueError(f"{where} must hold a JSON object, got {type(data).__name__}")
        unknown = sorted(set(data) - set(_REQUIRED) - set(_OPTIONAL))
        if unknown:
            raise ValueError(f"{where}: unknown keys {unknown}; an experiment has "
                             f"{sorted(_REQUIRED)} and optionally {sorted(_OPTIONAL)}")
        for key, kind in {**_REQUIRED, **_OPTIONAL}.items():
            if key in data and not isinstance(data[key], kind):
                raise ValueError(f"{where}: {key!r} must be a {kind.__name__}, got {data[key]!r}")
        missing = [k for k in _REQUIRED if not data.get(k)]
        if missing:
            raise ValueError(f"{where}: missing {missing} (each needs a non-empty string)")
        if data["table"] not in TABLES:
            raise ValueError(f"{where}: table must be one of {TABLES}, got {data['table']!r}")
        return cls(name=name, path=path, **data)

    def petal_config(self):
        """The preset with the overrides merged in (``ValueError`` naming the problem if it cannot be)."""
        import petal

        from ..presets import PRESETS, preset

        if self.preset not in PRESETS:
            raise ValueError(f"preset {self.preset!r} does not exist in this petal (`petal presets` lists "
                             f"the {len(PRESETS)} it has)")
        config = preset(self.preset).to_dict()
        for section, values in self.overrides.items():
            if section not in config:
                raise ValueError(f"overrides: {section!r} is not a PetalConfig section "
                                 f"(sections: {sorted(config)})")
            if isinstance(values, dict) and isinstance(config[section], dict):
                config[section] = {**config[section], **values}
            else:
                config[section] = values
        try:
            return petal.PetalConfig.from_dict(config)
        except (TypeError, ValueError) as e:
            raise ValueError(f"overrides {self.overrides} do not fit preset {self.preset!r}: {e}") from None


__all__ = ["Experiment", "TABLES"]
