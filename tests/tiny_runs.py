"""A tiny untrained embedded base and a run config using it, so CLI tests train in a second or two."""

from __future__ import annotations

import json
from pathlib import Path

import petal
from petal.embedded import EmbeddedSpec, build_embedded_model, save_base

SPEC = EmbeddedSpec(vision_hidden=32, qformer_hidden=32, lm_hidden=32, num_query_tokens=4, vision_layers=1,
                    qformer_layers=1, lm_layers=1)
SMALL = petal.PetalConfig(dma=petal.DMAConfig(rank=8), aim=petal.AIMConfig(num_experts=2, expert_rank=8),
                          sib=petal.SIBConfig(proj_dim=8))


def tiny_run_config(root: Path) -> Path:
    """``root/run.json`` for ``petal train --config``: the tiny base, a small PETAL config, beams 1."""
    model, tok = build_embedded_model(spec=SPEC)
    save_base(model, tok, root / "base", {"steps": 0, "note": "untrained, for tests"})
    config = root / "run.json"
    config.write_text(json.dumps({"model": str(root / "base"), "petal": SMALL.to_dict(), "batch_size": 2,
                                  "lr": 1e-3, "num_beams": 1, "max_new_tokens": 3, "eval_limit": 2}))
    return config
