"""``petal presets``: every preset with its trainable parameters on the embedded model."""

from __future__ import annotations

import copy

from .common import fmt_count, table


def add_parser(sub) -> None:
    sub.add_parser("presets", help="list the presets with their trainable parameters on the embedded model")


def run(args) -> int:
    import petal

    from ..embedded import build_embedded_model

    base, _ = build_embedded_model()
    total = sum(p.numel() for p in base.parameters())
    rows = []
    for name in sorted(petal.PRESETS):
        model = copy.deepcopy(base)
        try:
            petal.patch(model, petal.PetalConfig.from_preset(name))
            rows.append([name, petal.PRESETS[name].method, fmt_count(petal.trainable_parameters(model))])
        except Exception as e:  # noqa: BLE001 - report and keep listing
            rows.append([name, petal.PRESETS[name].method, f"n/a ({type(e).__name__}: {e})"])
    print(f"presets on the embedded model ({total:,} parameters before patching):")
    print(table(["preset", "method", "trainable params (% of all parameters after patching)"], rows))
    return 0
