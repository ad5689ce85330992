"""Argument types for the ``petal`` command: every one names what it expected and what it got."""

from __future__ import annotations

import argparse
import math
from typing import Callable


def number(kind: type = int, low: float = 1, strict: bool = False) -> Callable[[str], float]:
    """An argparse type for a finite ``kind`` (int or float) ``>= low`` (``> low`` when ``strict``)."""
    noun = "an integer" if kind is int else "a number"
    what = f"{noun} {'>' if strict else '>='} {low:g}"
    if kind is int and low == 1 and not strict:
        what = "a positive integer"
    elif kind is float and low == 0 and strict:
        what = "a positive number"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not math.isfinite(value) or value < low or (strict and value == low):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    parse.__name__ = f"{kind.__name__}>{'' if strict else '='}{low:g}"
    return parse


positive_int = number(int, 1)
non_negative_int = number(int, 0)
positive_float = number(float, 0, strict=True)
non_negative_float = number(float, 0)


def families(text: str) -> list:
    from ..data.synthetic import FAMILIES

    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in FAMILIES]
    if not names or bad:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list drawn from {', '.join(FAMILIES)}, "
                                         f"got {text!r}")
    return names


def preset(text: str) -> str:
    from ..presets import PRESETS

    if text not in PRESETS:
        raise argparse.ArgumentTypeError(f"unknown preset {text!r}; choose from {', '.join(sorted(PRESETS))}")
    return text
