"""What several ``petal`` commands share: tables and counts for the terminal, the run configuration
from flags, and the data splits of a run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence


def fmt_count(n: int, total: Optional[int] = None) -> str:
    return f"{n:,}" + (f" ({100.0 * n / total:.1f}%)" if total else "")


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


def count_params(model) -> tuple[int, int]:
    import petal

    tp = petal.trainable_parameters(model)
    return tp.trainable, tp.total


def read_jsonl(path: Path) -> list:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_config(args):
    from ..runs import RUN_FILE, RunConfig

    explicit = {k: v for k, v in vars(args).items() if k in RunConfig.keys()}
    if args.config:
        base = RunConfig.from_file(args.config).to_dict()
    else:
        out = Path(explicit.get("output_dir", RunConfig.output_dir))
        base = (RunConfig.from_file(out / RUN_FILE).to_dict()
                if args.resume and (out / RUN_FILE).is_file() else RunConfig().to_dict())
    base.update(explicit)
    if "preset" in explicit:
        base["petal"] = None  # an explicit --preset replaces a config file's full petal section
    return RunConfig.from_dict(base)


def load_split(run, split: str, limit: Optional[int], image_size: int):
    from ..data.sources import load_data

    families = tuple(run.families) if run.families else None
    return load_data(run.data, split, limit=limit, seed=run.seed, synthetic_families=families,
                     image_size=image_size, synthetic_domain=run.domain, path=run.data_path,
                     revision=run.data_revision, skip_bad_images=run.skip_bad_images, log=print)
