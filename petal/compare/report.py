"""``<output>/REPORT.md``: the papers' tables regenerated from the finished runs (mean ± std over seeds at
the learning rate chosen on val), the plots, and a paragraph on where the numbers agree with the papers.

Every table is always written; a table without rows says why (its experiments were refused, not in the
grid, or not run yet), and a refused experiment keeps its row with the reason.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from pathlib import Path
from typing import Optional

from . import agreement, estimate
from .grid import budget_text
from .plan import Plan
from .plots import experts_of, write_plots
from .results import RESULTS_FILE, read_result, write_json
from .summary import (
    ABLATION_METRICS,
    VL_PET_METRICS,
    ExperimentSummary,
    ablation_avg,
    by_method,
    first_stat,
    is_reference_petal,
    summarize,
    vl_pet_avg,
)

REPORT_FILE = "REPORT.md"
PAPER_NUMBERS = Path(__file__).parent / "paper_numbers.json"
CAPTION_SOURCES = ("flickr30k", "textcaps")
VQA_SOURCES = ("okvqa", "aokvqa", "textvqa")
_NAMES = {"vqa_accuracy": "VQA acc", "cider": "CIDEr", "rouge1_f": "ROUGE-1 F1", "rouge1_r": "ROUGE-1 R",
          "rougeL_f": "ROUGE-L F1", "rougeL_r": "ROUGE-L R"}
CAPTION_COLUMNS = ("cider", "rouge1_f", "rouge1_r", "rougeL_f", "rougeL_r")   # the paper's Table 1
# the text fields each evaluation writes beside its numbers, and what they say
SCORER_FIELDS = {"vqa_scorer": "VQA accuracy by", "cider_tokenizer": "CIDEr-D tokenised by",
                 "rouge_variant": "ROUGE variant"}
PAPER_ROUGE_NOTE = ("The paper's \"ROUGE-L\" columns are ROUGE-1: its code stores ROUGE-1 under that "
                    "name (`result_dict['Rogue_l'] = Rogue_score_1`), so they compare with the ROUGE-1 "
                    "columns here (with the `petal-paper` variant, the same rules as that code); the ROUGE-L "
                    "columns here are ROUGE-L.")


def paper_numbers() -> dict:
    return json.loads(PAPER_NUMBERS.read_text())


def write_report(plan: Plan, output: Path, refused: Optional[dict] = None) -> Path:
    output = Path(output)
    summaries = summarize(plan, output, refused)
    plots = write_plots(summaries, output)
    paper = paper_numbers()
    parts = [_header(plan, summaries, output),
             table1(summaries, plan), table2(summaries, plan), table3(summaries), table4(summaries),
             table5(summaries, paper), table_experts(summaries, plots.get("experts")),
             table_vl_pet(summaries), _plots(plots),
             "## Against the papers\n\n" + agreement.paragraph(summaries, paper),
             _refused(summaries)]
    path = output / REPORT_FILE
    tmp = path.with_name(f".{REPORT_FILE}.tmp")
    tmp.write_text("\n\n".join(p for p in parts if p).rstrip() + "\n")
    tmp.replace(path)
    write_json(output / "summary.json", [_summary_json(s) for s in summaries])
    return path


# ---------------------------------------------------------------------- helpers


def params(n: Optional[int]) -> str:
    if n is None:
        return "-"
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}" if n < 10 * size else f"{n / size:.1f}{unit}"
    return str(n)


def md_table(header: list, rows: list) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _of(summaries, table: str) -> list[ExperimentSummary]:
    return [s for s in summaries if s.table == table]


def _empty(title: str, summaries: list, what: str) -> str:
    if not summaries:
        why = f"the grid has no `{what}` experiments (or `--only` left them out)"
    elif all(s.refused for s in summaries):
        why = "every experiment of this table was refused (see the end of this report)"
    else:
        why = "its experiments have not finished a run yet (rerun `petal compare` to continue)"
    return f"{title}\n\n_No rows: {why}._"


def _by_method(summaries: list) -> OrderedDict[str, dict]:
    rows: OrderedDict = OrderedDict()
    for s in summaries:
        rows.setdefault(s.method, {})[s.setting] = s
    return rows


def setting_tasks(plan: Plan, name: str) -> set:
    data = plan.grid.settings[name].data
    source = data.get("source", "synthetic")
    if source == "synthetic":
        families = data.get("families") or ["caption", "colour", "shape", "spatial"]
        return ({"caption"} if "caption" in families else set()) | (
            {"vqa"} if any(f != "caption" for f in families) else set())
    if source in CAPTION_SOURCES:
        return {"caption"}
    if source in VQA_SOURCES:
        return {"vqa"}
    return {"caption", "vqa"}


def _cell(s: Optional[ExperimentSummary], metric: str) -> str:
    if s is None:
        return ""
    if s.status:
        return "-"
    return s.stat(metric).text()


def _note(cells) -> str:
    """The notes of one method's summaries, each once."""
    return "; ".join(sorted({s.note for s in cells if s.note}))


def scorer_line(summaries: list, fields=tuple(SCORER_FIELDS)) -> str:
    """Which scorer, tokenizer and ROUGE variant produced a table's numbers, from the runs' own result files
    (per setting when settings differ)."""
    found: dict = {}
    for s in summaries:
        for name in fields:
            value = s.scorers.get(name)
            if value:
                found.setdefault((name, value), []).append(s.setting)
    if not found:
        return ""
    settings = {s.setting for s in summaries if s.scorers}
    parts = []
    for (name, value), where in found.items():
        where = list(dict.fromkeys(where))
        scope = "" if set(where) == settings else f" ({', '.join(where)})"
        parts.append(f"{SCORER_FIELDS[name]} `{value}`{scope}")
    return "Scored by the runs' evaluation: " + "; ".join(parts) + "."


def _matrix(summaries: list, columns: list, extra_header=(), extra=lambda cells: []) -> str:
    header = ["Method", "Tunable", *extra_header, *[c[2] for c in columns], "lr (val)", "seeds", "note"]
    rows = []
    for method, cells in _by_method(summaries).items():
        trainable = next((c.trainable for c in cells.values() if c.trainable), None)
        lrs = sorted({f"{c.lr:g}" for c in cells.values() if c.lr is not None})
        seeds = sorted({str(c.seeds) for c in cells.values() if c.seeds})
        rows.append([method, params(trainable), *extra(cells),
                     *[_cell(cells.get(setting), metric) for setting, metric, _ in columns],
                     ",".join(lrs) or "-", ",".join(seeds) or "0", _note(cells.values())])
    return md_table(header, rows)


# ---------------------------------------------------------------------- the tables


def _with_notes(title: str, body: str, *notes: str) -> str:
    return "\n\n".join([title, body, *[n for n in notes if n]])


def table1(summaries: list, plan: Plan) -> str:
    title = "## Table 1 — captioning (test; CIDEr and ROUGE x100)"
    rows = _of(summaries, "main")
    settings = [n for n in dict.fromkeys(s.setting for s in rows) if "caption" in setting_tasks(plan, n)]
    if not settings or not any(s.seeds for s in rows):
        return _empty(title, rows, "main")
    columns = [(st, m, f"{st} {_NAMES[m]}") for st in settings for m in CAPTION_COLUMNS]
    used = [s for s in rows if s.setting in settings]
    return _with_notes(title, _matrix(rows, columns),
                       scorer_line(used, ("cider_tokenizer", "rouge_variant")), PAPER_ROUGE_NOTE)


def table2(summaries: list, plan: Plan) -> str:
    title = "## Table 2 — VQA accuracy (test, x100)"
    rows = _of(summaries, "main")
    settings = [n for n in dict.fromkeys(s.setting for s in rows) if "vqa" in setting_tasks(plan, n)]
    if not settings or not any(s.seeds for s in rows):
        return _empty(title, rows, "main")
    columns = []
    for st in settings:
        columns.append((st, "vqa_accuracy", f"{st} all"))
        fams = sorted({m.split(".")[1] for s in rows if s.setting == st for m in s.metrics
                       if m.startswith("by_family.") and m.endswith(".vqa_accuracy")})
        columns += [(st, f"by_family.{f}.vqa_accuracy", f"{st} {f}") for f in fams]
    note = ("VQA accuracy is GT-Vision-Lab's `vqaEval` on ten-answer data (OK-VQA, TextVQA), A-OKVQA's own "
            "direct-answer metric (`aokvqa-da`, its difficult questions skipped) on A-OKVQA, and exact match "
            "(`exact-match`) on single-answer data such as the synthetic questions.")
    used = [s for s in rows if s.setting in settings]
    return _with_notes(title, _matrix(rows, columns), scorer_line(used, ("vqa_scorer",)), note)


def table3(summaries: list) -> str:
    title = "## Table 3 — few-shot (test, x100)"
    rows = _of(summaries, "few-shot")
    if not any(s.seeds for s in rows):
        return _empty(title, rows, "few-shot")
    settings = list(dict.fromkeys(s.setting for s in rows))
    columns = [(st, m, f"{st} {_NAMES.get(m, m)}") for st in settings
               for m in ("vqa_accuracy", "cider", "rouge1_f")
               if any(s.stat(m).mean is not None for s in rows if s.setting == st)]
    return _with_notes(title, _matrix(rows, columns), scorer_line(rows))


def instructions_read(content: dict) -> str:
    """What the Q-Former reads per image in a run of ``content``."""
    from .estimate import instructions_per_image

    n = instructions_per_image(content)
    if n == 1:
        return "prompt"
    source = ((content.get("petal") or {}).get("instructions") or {}).get("source", "record")
    return f"{n} " + {"focus": "focus", "random": "random", "record": "of the data"}[source]


def table4(summaries: list) -> str:
    title = ("## Table 4 — ablations (test, x100; Avg as the paper's: VQA acc, CIDEr, and its \"ROUGE-L\" F1 "
             "and recall, which are ROUGE-1)")
    rows = _of(summaries, "ablation")
    if not any(s.seeds for s in rows):
        return _empty(title, rows, "ablation")
    groups = by_method(rows)
    # the paper's order: the variants, random instruction, then PETAL itself last
    ordered = sorted(groups.items(), key=lambda kv: any(is_reference_petal(s) for s in kv[1]))
    ref = next((cells for _, cells in ordered if any(is_reference_petal(s) and s.seeds for s in cells)), None)
    ref_avg = ablation_avg(ref) if ref else None
    paper = paper_numbers()["table4_ablation"]["rows"]
    paper_ref = paper["petal"][-1]
    out = []
    for method, cells in ordered:
        first = cells[0]
        cfg = first.plan.content.get("petal", {})
        ticks = [("✓" if cfg.get(part, {}).get("enabled") else "×") if cfg.get("method") == "petal" else "?"
                 for part in ("dma", "aim", "sib")]
        avg = ablation_avg(cells)
        delta = (f" ({avg - ref_avg:+.1f})" if avg is not None and ref_avg is not None and cells is not ref
                 else "")
        theirs = paper.get(first.row)
        their_avg = "" if theirs is None else f"{theirs[-1]:.1f}" + (
            f" ({theirs[-1] - paper_ref:+.1f})" if first.row != "petal" else "")
        trainable = next((c.trainable for c in cells if c.trainable), None)
        out.append([method, *ticks, instructions_read(first.plan.content) if first.plan.content else "-",
                    params(trainable), *[first_stat(cells, m).text() for m in ABLATION_METRICS],
                    f"{avg:.1f}{delta}" if avg is not None else "-", their_avg, _note(cells)])
    header = ["Method", "DMA", "AIM", "SIB", "Q-Former reads", "Tunable", "VQA acc", "CIDEr",
              "ROUGE-1 F1 (paper: \"ROUGE-L\")", "ROUGE-1 R (paper: \"ROUGE-L\")", "Avg (Δ PETAL)",
              "paper Avg (Δ)", "note"]
    note = ("Q-Former reads: the prompt (one instruction), or several instructions per image merged by AIM "
            "(the paper's three of different focus, or three drawn at random from InstructBLIP's templates); "
            "methods without AIM read the prompt.")
    return _with_notes(title, md_table(header, out), scorer_line(rows), note)


def table5(summaries: list, paper: dict) -> str:
    title = ("## Table 5 — training time relative to full fine-tuning (median seconds per optimizer step, "
             "mean ± std over seeds; same data, batch and steps)")
    rows = [s for s in summaries if s.table in ("main", "timing")]
    if not any(s.seeds for s in rows):
        return _empty(title, rows, "main")
    ref = {}
    for s in rows:
        if s.preset == "full" and not s.cached and s.seconds_per_step.mean:
            ref.setdefault(s.setting, s.seconds_per_step.mean)
    paper_rows = paper["table5_training_time"]["rows"]
    out = []
    for s in rows:
        per = s.seconds_per_step
        base = ref.get(s.setting)
        rel = f"{per.mean / base:.2f}" if per.mean and base else "-"
        rel_wall = "-"
        full_wall = next((f.train_seconds.mean for f in rows if f.preset == "full" and not f.cached
                          and f.setting == s.setting and f.train_seconds.mean), None)
        if s.train_seconds.mean and full_wall:
            rel_wall = f"{s.train_seconds.mean / full_wall:.2f}"
        p = paper_rows.get(s.row)
        prange = f"{min(p[1:]):.2f}–{max(p[1:]):.2f}" if p and not s.cached else ""
        mem = f"{s.peak_memory_bytes / 2**20:.0f} MiB" if s.peak_memory_bytes else "-"
        step = per.text(scale=1000.0, digits=0) + (" ms" if per.mean else "")
        out.append([s.method, s.setting, "yes" if s.cached else "no", params(s.trainable), step, rel,
                    rel_wall, mem, prange, s.note])
    header = ["Method", "Setting", "cached image features", "Tunable", "s/step", "relative (step)",
              "relative (train wall)", "peak memory", "paper (5 data sets)", "note"]
    projection = estimate.projected_table5()
    return (f"{title}\n\n{_load_note(rows)}{md_table(header, out)}"
            + (f"\n\n{projection}" if projection else ""))


def _load_note(rows: list) -> str:
    """How busy the machine was: times measured on a CPU shared with other work are inflated unevenly."""
    loads = [s.load_average for s in rows if s.load_average is not None]
    cpus = next((s.cpus for s in rows if s.cpus), None)
    if not loads or not cpus:
        return ""
    busy = max(loads) > 1.25 * cpus  # the grid's own workers (one per core) make a load of about the cores
    return (f"The 1-minute load average around these runs reached {max(loads):.1f} on {cpus} cores"
            + (" (well above the cores: other processes shared the CPU, so these times are inflated, "
               "unevenly across methods; rerun on a quiet machine into a new --output to time them)"
               if busy else
               " (the grid's own runs: no other load)")
            + ".\n\n")


def table_experts(summaries: list, figure: Optional[Path]) -> str:
    title = "## Number of experts (AIM) — PETAL with K experts (test, x100)"
    rows = [s for s in _of(summaries, "experts")]
    if not any(s.seeds for s in rows):
        return _empty(title, rows, "experts")
    rows.sort(key=lambda s: (experts_of(s) is None, experts_of(s) or 0))
    metrics = [m for m in ("vqa_accuracy", "cider", "rougeL_f")
               if any(s.stat(m).mean is not None for s in rows)]
    out = [[experts_of(s) if experts_of(s) is not None else "-", s.method,
            instructions_read(s.plan.content) if s.plan.content else "-", params(s.trainable),
            *[_cell(s, m) for m in metrics], s.note] for s in rows]
    fig = f"![experts curve]({figure.name})" if figure else ""
    header = ["K", "Method", "Q-Former reads", "Tunable", *[_NAMES[m] for m in metrics], "note"]
    return _with_notes(title, md_table(header, out), scorer_line(rows), fig)


def table_vl_pet(summaries: list) -> str:
    title = ("## VL-PET — granularities and multi-head designs against VL-Adapter and LoRA, on the T5 "
             "(test, x100; Avg: mean of the columns)")
    rows = _of(summaries, "vl-pet")
    if not any(s.seeds for s in rows):
        return _empty(title, rows, "vl-pet")
    out = []
    for method, cells in by_method(rows).items():
        vl = (cells[0].plan.content.get("petal") or {}).get("vl_pet") or {}
        avg = vl_pet_avg(cells)
        trainable = next((c.trainable for c in cells if c.trainable), None)
        out.append([method, vl.get("granularity", "-"), vl.get("variant", "-"), params(trainable),
                    *[first_stat(cells, m).text() for m in VL_PET_METRICS],
                    f"{avg:.1f}" if avg is not None else "-", _note(cells)])
    header = ["Method", "granularity", "heads", "Tunable", *[_NAMES[m] for m in VL_PET_METRICS], "Avg",
              "note"]
    return _with_notes(title, md_table(header, out), scorer_line(rows))


# ---------------------------------------------------------------------- the rest


def _header(plan: Plan, summaries: list, output: Path) -> str:
    grid = plan.grid
    results = [read_result(output, r) for ep in plan.unique() for r in ep.sweep_runs()]
    results = [r for r in results if r]
    totals = [r["total_parameters"] - (r["trainable_parameters"] if r["content"]["petal"]["method"] not in (
        "full", "head") else 0) for r in results]
    base_info = _base_info(plan)
    env = results[0]["environment"] if results else {}
    run_seconds = sum(r["train_seconds"] + r.get("eval_seconds", 0) for r in _all_results(plan, output))
    lines = [f"# petal compare — grid `{grid.name}`", "", grid.description, "",
             f"- Model: `{json.dumps(grid.model, sort_keys=True)}`"
             + (f" — {params(min(totals))} parameters before patching" if totals else ""),
             f"- Budget, the same for every method of a setting: {budget_text(grid)}. Every number below is "
             "the mean ± std over the seeds at the chosen rate, on the test split.",
             "- Settings: " + "; ".join(f"`{n}`: `{json.dumps(s.data, sort_keys=True)}`"
                                         for n, s in grid.settings.items()),
             f"- Evaluation: `{json.dumps(grid.eval, sort_keys=True)}`",
             f"- Runs: {sum(1 for _ in _all_results(plan, output))} finished, {run_seconds / 60:.1f} min of "
             f"training + evaluation" + (f"; base pre-training {base_info}" if base_info else ""),
             f"- Environment: {env.get('processor', '?')}, torch {env.get('torch', '?')}, "
             f"{env.get('threads', '?')} thread(s) per run, device {env.get('device', '?')}",
             f"- Written {time.strftime('%Y-%m-%d %H:%M')}; rows per run in `{RESULTS_FILE}`, one result "
             "file per run under `runs/`."]
    return "\n".join(lines)


def _all_results(plan: Plan, output: Path):
    from .results import experiment_runs

    for ep in plan.unique():
        _, runs = experiment_runs(ep, output)
        for run in runs:
            r = read_result(output, run)
            if r:
                yield r


def _base_info(plan: Plan) -> str:
    from .runner import base_dir

    found = []
    models = {json.dumps(ep.setting.model, sort_keys=True): ep.setting.model for ep in plan.unique()}
    for marker in sorted({base_dir(m) / "pretrain.json" for m in models.values()}):
        if not marker.is_file():
            continue
        info = json.loads(marker.read_text())
        found.append(f"{info.get('steps')} steps in {info.get('seconds', 0):.0f} s, final loss "
                     f"{info.get('final_loss', float('nan')):.3f}")
    return "; ".join(found)


def _plots(plots: dict) -> str:
    lines = ["## Plots"]
    names = {"params": "metric vs trainable parameters, with the Pareto front",
             "time": "metric vs training time per step", "experts": "metric vs number of experts"}
    for key, label in names.items():
        path = plots.get(key)
        lines.append(f"- {label}: " + (f"![{key}]({path.name})" if path else "_not drawn: no finished runs_"))
    return "\n".join(lines)


def _refused(summaries: list) -> str:
    refused = [s for s in summaries if s.refused]
    if not refused:
        return "## Refused experiments\n\nNone: every experiment of the grid ran."
    lines = ["## Refused experiments", "",
             "These experiments were not started; their rows above are marked so. They run once the reason "
             "is gone (rerun `petal compare`: finished runs are kept)."]
    lines += [f"- `{s.name}` ({s.method}): {s.refused}" for s in refused]
    return "\n".join(lines)


def _summary_json(s: ExperimentSummary) -> dict:
    stat = lambda x: {"mean": x.mean, "std": x.std, "n": x.n}
    return {"experiment": s.name, "table": s.table, "method": s.method, "setting": s.setting,
            "preset": s.preset, "refused": s.refused, "lr": s.lr, "seeds": s.seeds,
            "trainable_parameters": s.trainable, "metrics": {k: stat(v) for k, v in s.metrics.items()},
            "seconds_per_step": stat(s.seconds_per_step), "train_seconds": stat(s.train_seconds),
            "peak_memory_bytes": s.peak_memory_bytes}


__all__ = ["REPORT_FILE", "md_table", "params", "paper_numbers", "write_report"]
