"""``petal compare``: the papers' tables regenerated side by side (a grid of experiment files)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .args import positive_int


def add_parser(sub) -> None:
    p = sub.add_parser("compare", help="run a grid of methods x settings and write REPORT.md with the "
                       "papers' tables and plots")
    p.add_argument("--grid", default="quick",
                   help="a shipped grid ('quick': the compare model on the CPU, the default; 'paper': the "
                        "real InstructBLIP checkpoints and data sets) or a folder with grid.json + "
                        "experiments/")
    p.add_argument("--output", help="output folder (default runs/compare-<grid name>)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan and its estimated time (GPU hours for the paper grid); load nothing")
    p.add_argument("--only", help="comma-separated tables to run: main, few-shot, ablation, timing, experts, "
                   "vl-pet")
    p.add_argument("--jobs", type=positive_int, default=None,
                   help="runs in parallel, each in its own process with cores/jobs torch threads (default: "
                        "one per core for the compare model, whose small ops use one core best; 1 for "
                        "checkpoints)")
    p.add_argument("--cache-image-features", action="store_true",
                   help="every experiment caches its frozen vision encoder's outputs (computed once per "
                        "image, reused in later epochs; exact, refused where it would not be)")
    p.add_argument("--report-only", action="store_true",
                   help="rewrite results.json, REPORT.md and the plots from the finished runs; train nothing")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)


def default_jobs(grid) -> int:
    import os

    if any(s.model.get("kind") != "compare" for s in grid.settings.values()):
        return 1
    return max(1, min(os.cpu_count() or 1, 8))


def run(args) -> int:
    import dataclasses

    from ..compare import grid as grids
    from ..compare.experiment import TABLES
    from ..compare.plan import make_plan
    from ..compare.plan_text import plan_text
    from ..compare.report import write_report
    from ..compare.results import write_results
    from ..compare.runner import refusals, run_plan

    grid = grids.load_grid(args.grid)
    only = None
    if args.only:
        only = {t.strip() for t in args.only.split(",") if t.strip()}
        bad = sorted(only - set(TABLES))
        if bad or not only:
            raise ValueError(f"--only takes tables from {', '.join(TABLES)}; got {args.only!r}")
    if args.cache_image_features:
        grid.experiments[:] = [dataclasses.replace(e, cache_image_features=True) for e in grid.experiments]
    output = Path(args.output or f"runs/compare-{grid.name}")
    plan = make_plan(grid, only)
    jobs = args.jobs or default_jobs(grid)
    if args.dry_run:
        print(plan_text(plan, output if output.is_dir() else None, jobs))
        return 0
    if args.report_only:
        refused = refusals(plan)
    else:
        print(plan_text(plan, output if output.is_dir() else None, jobs))
        print()
        try:
            summary = run_plan(plan, output, jobs=jobs, progress=args.progress)
        except KeyboardInterrupt:
            print(f"\ninterrupted: every finished run is kept in {output / 'runs'}; run the same command "
                  "again to continue (finished runs are skipped)", file=sys.stderr)
            return 130
        refused = summary.refused
        print(f"ran {summary.ran} runs ({summary.tested} test evaluations), skipped {summary.skipped} "
              f"finished ones, in {summary.seconds / 60:.1f} min")
    rows = write_results(plan, output)
    report = write_report(plan, output, refused)
    print(f"wrote {output / 'results.json'} ({len(rows)} rows), {report} and its plots")
    if refused:
        print(f"incomplete: {len(refused)} experiments were refused (listed in {report}):")
        for name, reason in refused.items():
            print(f"  {name}: {reason}")
        return 1
    return 0
