"""A plain paragraph, generated from the numbers, on where this grid agrees with the papers' tables and
where it does not: orderings of methods (Kendall's tau over the methods both have), whether the papers'
headline claims hold here, and whether a gap is larger than the spread over seeds."""

from __future__ import annotations

import re
from itertools import combinations
from typing import Optional

from .summary import ExperimentSummary, ablation_avg, by_method, is_reference_petal, vl_pet_avg

PET_PRESETS = ("head", "maple", "llama-adapter", "lora", "petal")


def kendall_tau(ours: dict, theirs: dict) -> Optional[tuple[float, int]]:
    """Kendall's tau-a between two score dicts over their common keys (``None`` under 3 keys)."""
    keys = sorted(set(ours) & set(theirs))
    if len(keys) < 3:
        return None
    agree = 0
    for a, b in combinations(keys, 2):
        x, y = ours[a] - ours[b], theirs[a] - theirs[b]
        agree += (x * y > 0) - (x * y < 0)
    return agree / (len(keys) * (len(keys) - 1) / 2), len(keys)


def _scores(summaries: list, table: str, metric: str, setting: Optional[str] = None) -> dict:
    out = {}
    for s in summaries:
        if s.table == table and not s.cached and s.seeds and (setting is None or s.setting == setting):
            stat = s.stat(metric)
            if stat.mean is not None:
                out.setdefault(s.row, (100 * stat.mean, 100 * (stat.std or 0)))
    return out


def _paper_column(paper: dict, table: str, column: str) -> dict:
    block = paper[table]
    i = block["columns"].index(column)
    return {k: float(v[i]) for k, v in block["rows"].items() if isinstance(v[i], (int, float))}


def _order(scores: dict) -> str:
    return " > ".join(k for k, _ in sorted(scores.items(), key=lambda kv: -kv[1]))


def _gap(a: tuple, b: tuple) -> str:
    diff = a[0] - b[0]
    spread = max(a[1], b[1])
    return f"{diff:+.1f}" + ("; within the spread over seeds" if abs(diff) <= spread else "")


def _ranking(summaries, paper, table_key, metric, paper_col, what, setting=None) -> list[str]:
    ours = _scores(summaries, "main", metric, setting)
    if len(ours) < 2:
        return [f"{what}: too few finished methods to compare."]
    theirs = _paper_column(paper, table_key, paper_col)
    means = {k: v[0] for k, v in ours.items()}
    out = [f"{what}: here {_order(means)}; the paper ({paper[table_key]['source']}, {paper_col}) has "
           f"{_order({k: theirs[k] for k in means if k in theirs})}."]
    tau = kendall_tau(means, theirs)
    if tau:
        word = "agree" if tau[0] > 0.3 else ("disagree" if tau[0] < -0.3 else "barely relate")
        out.append(f"The two orderings {word} (Kendall tau {tau[0]:+.2f} over {tau[1]} methods).")
    pet = {k: v for k, v in ours.items() if k in PET_PRESETS}
    if "petal" in pet and len(pet) > 1:
        best = max(pet, key=lambda k: pet[k][0])
        tied = [k for k in pet if k != "petal" and abs(pet[k][0] - pet["petal"][0]) < 0.05]
        if tied and pet["petal"][0] >= pet[best][0] - 0.05:
            out.append(f"PETAL ties with {', '.join(tied)} here (to 0.05 points), where the paper has it "
                       "ahead of every parameter-efficient method.")
        elif best == "petal":
            second = max((k for k in pet if k != "petal"), key=lambda k: pet[k][0])
            out.append(f"As in the paper, PETAL is the best parameter-efficient method here, ahead of "
                       f"{second} ({_gap(pet['petal'], pet[second])}).")
        else:
            out.append(f"Unlike the paper, where PETAL is the best parameter-efficient method, {best} beats "
                       f"it here ({_gap(pet[best], pet['petal'])}).")
    if "full" in ours and "petal" in ours:
        side = "above" if ours["petal"][0] > ours["full"][0] else "below"
        paper_side = "above" if theirs.get("petal", 0) > theirs.get("full", 0) else "below"
        out.append(f"PETAL is {side} full fine-tuning ({_gap(ours['petal'], ours['full'])}); in the paper it "
                   f"is {paper_side}.")
    return out


def _few_shot(summaries, paper) -> list[str]:
    """Each few-shot setting against the paper's rows for the same shot count (its data set when the
    setting names one of the paper's, else A-OKVQA for accuracy and Flickr30K for CIDEr)."""
    out = []
    for setting in dict.fromkeys(s.setting for s in summaries if s.table == "few-shot"):
        shots = re.search(r"(\d+)-shot", setting)
        if not shots:
            continue
        for metric, default in (("vqa_accuracy", "aokvqa"), ("cider", "flickr30k")):
            ours = _scores(summaries, "few-shot", metric, setting)
            if "petal" not in ours or len(ours) < 2:
                continue
            source = next((d for d in ("aokvqa", "okvqa", "flickr30k", "textcaps") if setting.startswith(d)),
                          default)
            column = _paper_column(paper, "table3_few_shot", f"{source}.{metric}")
            prefix = f"{shots.group(1)}-shot/"
            theirs = {k[len(prefix):]: v for k, v in column.items() if k.startswith(prefix)}
            means = {k: v[0] for k, v in ours.items()}
            common = {k: theirs[k] for k in means if k in theirs}
            same = max(means, key=means.get) == max(common, key=common.get) if common else False
            out.append(f"Few-shot {setting}, {metric}: here {_order(means)}; the paper ({source}) has "
                       f"{_order(common)} ({'the same' if same else 'a different'} leader).")
    return out


def _ablation(summaries) -> list[str]:
    groups = [cells for cells in by_method([s for s in summaries if s.table == "ablation"]).values()
              if any(s.seeds for s in cells)]
    ref = next((cells for cells in groups if any(is_reference_petal(s) for s in cells)), None)
    if ref is None or ablation_avg(ref) is None:
        return []
    base = ablation_avg(ref)
    others = [(cells[0].method, ablation_avg(cells)) for cells in groups
              if cells is not ref and ablation_avg(cells) is not None]
    worse = [m for m, avg in others if avg < base]
    better = [m for m, avg in others if avg >= base]
    text = ("Ablations: in the paper every variant averages below full PETAL (by 0.4-3.0). "
            f"Here {len(worse)} do")
    text += f" ({', '.join(worse)})" if worse else ""
    text += f" and {len(better)} do not ({', '.join(better)})." if better else "."
    return [text]


def _timing(summaries, paper) -> list[str]:
    def per_step(row, cached):
        s = next((x for x in summaries if x.row == row and x.cached == cached
                  and x.table in ("main", "timing") and x.seconds_per_step.mean), None)
        return s.seconds_per_step.mean if s else None

    full, petal = per_step("full", False), per_step("petal", False)
    if not (full and petal):
        return []
    p = paper["table5_training_time"]["rows"]["petal"][1:]
    out = [f"Training time: a PETAL step takes {petal / full:.2f}x a full fine-tuning step here; the paper "
           f"reports {min(p):.2f}-{max(p):.2f}x."]
    cached = per_step("petal", True)
    if cached:
        out.append(f"With --cache-image-features it takes {cached / full:.2f}x (cached full fine-tuning: "
                   + (f"{per_step('full', True) / full:.2f}x)." if per_step("full", True) else "not run)."))
    return out


def _experts(summaries) -> list[str]:
    from .plots import experts_of

    rows = [s for s in summaries if s.table == "experts" and s.seeds and experts_of(s)]
    out = []
    for metric in ("vqa_accuracy", "cider"):
        pts = {experts_of(s): s.stat(metric) for s in rows if s.stat(metric).mean is not None}
        if len(pts) > 1:
            best = max(pts, key=lambda k: pts[k].mean)
            spread = max(p.std or 0 for p in pts.values())
            rng = max(p.mean for p in pts.values()) - min(p.mean for p in pts.values())
            out.append(f"Experts ({metric}): best at K={best} here (the paper uses 6); the curve spans "
                       f"{100 * rng:.1f} points against a spread over seeds of up to {100 * spread:.1f}.")
    return out


def _vl_pet(summaries, paper) -> list[str]:
    rows: dict = {}
    for s in summaries:
        if s.table == "vl-pet" and s.seeds:
            rows.setdefault(s.preset, []).append(s)
    large = rows.get("vl-pet-large")
    if not large or vl_pet_avg(large) is None:
        return []
    out = []
    for preset, claim in (("vl-adapter", paper["vl_pet"]["large_minus_vl_adapter"]),
                          ("lora-t5", paper["vl_pet"]["large_minus_lora"])):
        other = rows.get(preset)
        if other is None or vl_pet_avg(other) is None:
            out.append(f"VL-PET-large vs {preset}: not measured here (the experiment did not run).")
            continue
        diff = vl_pet_avg(large) - vl_pet_avg(other)
        verdict = "agrees in sign" if diff > 0 else "disagrees"
        out.append(f"VL-PET-large minus {preset} on the average: {diff:+.1f} here, +{claim} in the paper "
                   f"({verdict}).")
    grans = {p: vl_pet_avg(s) for p, s in rows.items()
             if p.startswith("vl-pet-") and vl_pet_avg(s) is not None}
    if len(grans) > 1:
        out.append(f"Granularities and designs by average: {_order(grans)} (the paper finds large best).")
    return out


def paragraph(summaries: list[ExperimentSummary], paper: dict) -> str:
    sentences = []
    main = [s for s in summaries if s.table == "main"]
    for setting in sorted({s.setting for s in main if s.stat("cider").mean is not None}):
        col = f"{setting}.cider" if setting in ("flickr30k", "textcaps") else "flickr30k.cider"
        sentences += _ranking(summaries, paper, "table1_captioning", "cider", col,
                              f"Captioning ({setting}, CIDEr)", setting)
    for setting in sorted({s.setting for s in main if s.stat("vqa_accuracy").mean is not None}):
        own = setting in ("aokvqa", "okvqa", "textvqa")
        col = f"{setting}.vqa_accuracy" if own else "aokvqa.vqa_accuracy"
        sentences += _ranking(summaries, paper, "table2_vqa", "vqa_accuracy", col,
                              f"VQA ({setting}, accuracy)", setting)
    sentences += _few_shot(summaries, paper) + _ablation(summaries) + _timing(summaries, paper)
    sentences += _experts(summaries) + _vl_pet(summaries, paper)
    if not sentences:
        return "_No finished runs to compare with the papers yet._"
    caveat = ("Scores are x100; a gap marked 'within the spread over seeds' is no larger than the standard "
              "deviation over seeds and should not be read as a difference.")
    return " ".join(sentences + [caveat])


__all__ = ["kendall_tau", "paragraph"]
