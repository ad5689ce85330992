"""What several ``petal`` commands share: tables and counts for the terminal, the run configuration
from flags, the data splits of a run, and the flags every model-loading command takes."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Optional, Sequence


def fmt_count(params) -> str:
    """``84,810 (17.8%)`` from a ``petal.trainable_parameters`` result (one denominator everywhere)."""
    return f"{params.trainable:,} ({params.percent_text})"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def metric_text(metrics: dict) -> str:
    parts = []
    if "vqa_accuracy" in metrics:
        parts.append(f"VQA acc {100 * metrics['vqa_accuracy']:.1f}% ({metrics.get('vqa_scorer', '?')})")
    if metrics.get("vqa_skipped_difficult"):
        parts.append(f"{metrics['vqa_skipped_difficult']} difficult question(s) not scored")
    if "cider" in metrics:
        parts.append(f"CIDEr {100 * metrics['cider']:.1f} ({metrics.get('cider_tokenizer', '?')})")
        parts.append(f"ROUGE-L F1 {100 * metrics['rougeL_f']:.1f} ({metrics.get('rouge_variant', '?')})")
    return ", ".join(parts) or "-"


def pct(fraction: float) -> str:
    return f"{100 * fraction:.1f}%"


def read_jsonl(path: Path) -> list:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def add_model_flags(parser: argparse.ArgumentParser, default=None) -> None:
    """``--cache-dir`` and ``--progress``: where the embedded base is cached, and progress bars."""
    parser.add_argument("--cache-dir", default=None, help="where the embedded base model is cached (default "
                        "$PETAL_CACHE, else $XDG_CACHE_HOME/petal or ~/.cache/petal)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=default,
                        help="progress bars (default: when the terminal shows them)")


def run_config(args):
    """The run configuration from ``--config`` (or, on ``--resume``, the run's ``run.json``) and the
    flags given explicitly; the second value names where it came from (for error messages)."""
    from ..runs import RUN_FILE, RunConfig

    explicit = {k: v for k, v in vars(args).items() if k in RunConfig.keys()}
    out = Path(explicit.get("output_dir", RunConfig.output_dir))
    source, given = "the flags", set(explicit)
    if args.config:
        base, source = RunConfig.from_file(args.config).to_dict(), args.config
        given |= set(json.loads(Path(args.config).read_text()))
    elif args.resume and (out / RUN_FILE).is_file():
        base, source = RunConfig.from_file(out / RUN_FILE, what="run file").to_dict(), str(out / RUN_FILE)
        given |= set(base)
    else:
        base = RunConfig().to_dict()
    launched = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    if "mixed_precision" not in given and launched in ("fp16", "bf16"):
        base["mixed_precision"] = launched  # accelerate launch --mixed_precision, if petal's flag is absent
    base.update(explicit)
    if "preset" in explicit:
        base["petal"] = None  # an explicit --preset replaces a config file's full petal section
    return RunConfig.from_dict(base, source), source


def load_split(run, split: str, limit: Optional[int], image_size: int):
    """``split`` of the run's data, the first ``limit`` records (a ``ValueError`` when it cannot be read)."""
    from ..data.sources import HUB_SOURCES, load_data

    families = tuple(run.families) if run.families else None
    try:
        data = load_data(run.data, split, limit=limit, seed=run.seed, synthetic_families=families,
                         image_size=image_size, synthetic_domain=run.domain, path=run.data_path,
                         revision=run.data_revision, skip_bad_images=run.skip_bad_images, log=print)
    except ValueError:
        raise
    except Exception as e:  # noqa: BLE001 - datasets raises connection, file and format errors of many kinds
        if run.data not in HUB_SOURCES:
            raise
        raise ValueError(f"--data {run.data}: could not load its {split} split through datasets "
                         f"({type(e).__name__}: {e}); it needs the network, a warm datasets cache or "
                         "--data-path") from None
    if len(data) == 0:
        raise ValueError(f"--data {run.data}: the {split} split has no records")
    return data
