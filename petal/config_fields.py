"""Validation shared by the sections of ``PetalConfig``: each check names the section, the field and
the value it got; ``Section`` gives every section ``from_dict`` (unknown keys are errors) and ``to_dict``."""

from __future__ import annotations

import dataclasses
import math
import numbers


def check_int(owner: str, name: str, value, low: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{owner}.{name} must be an integer >= {low}, got {value!r}")


def check_real(owner: str, name: str, value, low: float = -math.inf, high: float = math.inf,
          high_open: bool = False) -> None:
    ok = not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value)
    ok = ok and low <= value and (value < high if high_open else value <= high)
    if not ok:
        bracket = ")" if high_open else "]"
        raise ValueError(f"{owner}.{name} must be a finite number in [{low}, {high}{bracket}, got {value!r}")


def check_bool(owner: str, name: str, value) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{owner}.{name} must be True or False, got {value!r}")


def check_choice(owner: str, name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{owner}.{name} must be one of {choices}, got {value!r}")


def check_subset(owner: str, name: str, value, choices) -> tuple:
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"{owner}.{name} must be a non-empty list drawn from {choices}, got {value!r}")
    bad = [v for v in value if v not in choices]
    if bad or len(set(value)) != len(value):
        raise ValueError(f"{owner}.{name} must hold distinct entries of {choices}, got {list(value)!r}")
    return tuple(value)


def check_keys(cls, data) -> None:
    """``data`` must be a dict whose keys are fields of the dataclass ``cls``."""
    if not isinstance(data, dict):
        raise TypeError(f"{cls.__name__}.from_dict expects a dict, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown keys {unknown}; known keys are {sorted(known)}")


class Section:
    """from_dict with unknown-key errors, shared by every section."""

    @classmethod
    def from_dict(cls, data: dict):
        check_keys(cls, data)
        return cls(**data)

    def to_dict(self) -> dict:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
                for f in dataclasses.fields(self)}
