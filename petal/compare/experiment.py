"""One experiment file: a method (a preset, optionally with config overrides) in one setting of a grid.

    {"table": "main", "method": "PETAL", "preset": "petal", "setting": "rotated",
     "overrides": {"aim": {"num_experts": 4}},      # optional: merged into the preset's PetalConfig
     "cache_image_features": false,                 # optional
     "paper_row": "petal",                          # optional: the papers' row (default: the preset)
     "note": "..."}                                 # optional: for whoever reads the file

``table`` says where its rows go in the report (:data:`TABLES`). ``paper_row`` names the row of
``paper_numbers.json`` the experiment is compared with (the papers' PETAL reads three instructions per
image, so the PETAL experiments run the ``petal-focus`` preset with ``"paper_row": "petal"``; without it, an
experiment stands for its preset's row unless it has overrides); a row the papers do not have is compared
with nothing. Nothing about the budget (steps, batch,
learning rates, seeds) is set here: a grid gives every method of a setting the same budget.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

TABLES = ("main", "few-shot", "ablation", "timing", "experts", "vl-pet")
# the PetalConfig sections each method's patch reads; an override of another section would change a run's
# key and nothing it trains (or, for vl_pet on an InstructBLIP model, add VL-PET beside the method)
_READS = {"petal": {"dma", "aim", "sib"}, "lora": {"lora"}, "head": {"head"}, "full": set(),
          "maple": {"maple"}, "llama-adapter": {"llama_adapter"}, "vl-adapter": {"vl_adapter"},
          "vl-pet": {"vl_pet"}}
_ANY_METHOD = {"method", "instructions", "fast_paths"}
_REQUIRED = {"table": str, "method": str, "preset": str, "setting": str}
_OPTIONAL = {"overrides": dict, "cache_image_features": bool, "paper_row": str, "note": str}


@dataclass(frozen=True)
class Experiment:
    name: str                       # path of the file inside the grid's experiments/ folder, without .json
    table: str
    method: str
    preset: str
    setting: str
    overrides: dict = field(default_factory=dict)
    cache_image_features: bool = False
    paper_row: str = ""
    note: str = ""
    path: Optional[Path] = None

    @property
    def row(self) -> str:
        """The papers' row this experiment is compared with: ``paper_row``, else its preset, or its own name
        when overrides make it something other than the preset."""
        return self.paper_row or (self.name if self.overrides else self.preset)

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
        reads = _READS.get(config["method"], set()) | _ANY_METHOD
        unread = sorted(set(self.overrides) - reads)
        if unread:
            own = sorted(reads - _ANY_METHOD) or "no section"
            raise ValueError(f"overrides: {unread} not read by method {config['method']!r} of preset "
                             f"{self.preset!r} (it reads {own}): such an override leaves the method as it "
                             "is, or adds another beside it (a vl_pet section adds VL-PET); name a preset "
                             "for a combination of methods")
        try:
            return petal.PetalConfig.from_dict(config)
        except (TypeError, ValueError) as e:
            raise ValueError(f"overrides {self.overrides} do not fit preset {self.preset!r}: {e}") from None


__all__ = ["Experiment", "TABLES"]
