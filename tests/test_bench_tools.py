"""The benchmark suite's own tools: saved-for-backward bytes, peak memory, and the report generator."""

from __future__ import annotations

import json
import os
import time

import pytest
import torch
from torch import nn

from bench import memory, paired, report
from bench.grid import GRIDS

MIB = 1024 ** 2


# --------------------------------------------------------------------------- the default grid


def _params(grid: str, scale: str = "default") -> list:
    return [p.values[0] for p in GRIDS[grid](scale) if p.values[0].device == "cpu"]


@pytest.mark.parametrize("grid", ["dma_linear_param", "dma_linear_multi_param"])
def test_default_grid_sweeps_every_shape_of_the_issue(grid):
    params = _params(grid)
    full = {(p.shape["M"], p.shape["K"], p.shape["R"], p.impl) for p in params if p.mode == "full"}
    for M in (512, 2048, 8192):
        for K in (768, 1408):
            for R in (16, 64, 128):
                for impl in ("floor", "petal", "lora", "official"):
                    assert (M, K, R, impl) in full, (M, K, R, impl)
    assert any(p.shape["K"] == 4096 and p.shape["N"] == 4096 and p.impl == "petal" for p in params)
    # every implementation and mode at the headline shapes only
    headline = [p for p in params if not p.sweep]
    assert {p.impl for p in headline} >= {"compile", "reference", "lora_p0.1", "petal_p0.1"}
    assert {p.mode for p in headline} == {"forward", "backward", "full"}
    swept = [p for p in params if p.sweep]
    assert all(p.mode == "full" and p.impl in ("floor", "petal", "lora", "official") for p in swept)
    assert len({str(p) for p in params}) == len(params)


def test_gated_grid_times_one_floor_per_shape_and_mode():
    params = _params("gated_residual_param")
    floors = [p for p in params if p.impl == "floor"]
    assert len({p.floor_key() for p in floors}) == len(floors)
    shapes = {(p.shape["B"] * p.shape["T"], p.shape["d"]) for p in params}
    assert shapes == {(512, 768), (2048, 768), (8192, 768), (2048, 4096)}
    for rows, d in shapes:  # each case's floor is in the grid
        cases = [p for p in params if (p.shape["B"] * p.shape["T"], p.shape["d"]) == (rows, d)]
        assert {p.floor_key() for p in cases if p.impl != "floor"} <= {p.floor_key() for p in floors}
        assert len({(p.shape["g"], p.shape["p"]) for p in cases}) == 8


# --------------------------------------------------------------------------- saved bytes


def test_saved_bytes_counts_new_tensors_and_leaves_out_inputs():
    x, w = torch.randn(64, 32, requires_grad=True), torch.randn(48, 32)
    # x @ w.T saves a view of w for dx (excluded: w's storage); sigmoid saves its (64, 48) output
    assert memory.saved_bytes(lambda: torch.sigmoid(x @ w.T), [x, w]) == 64 * 48 * 4
    # without the exclusion w's storage counts too (x is not saved: w needs no grad)
    assert memory.saved_bytes(lambda: torch.sigmoid(x @ w.T), []) == (64 * 48 + 48 * 32) * 4


def test_saved_bytes_counts_each_storage_once_views_included():
    x = torch.randn(100, 10, requires_grad=True)

    def fn():
        a = x * 3.0          # saves nothing (scalar factor)
        return a.sin() + a.cos() + a[:, :2].exp().sum()  # sin, cos save a; exp saves its own output

    # a is one storage (100x10) however many ops save it or views of it; exp's output is 100x2
    assert memory.saved_bytes(fn, [x]) == (100 * 10 + 100 * 2) * 4


def test_saved_bytes_leaves_out_module_parameters():
    lin = nn.Linear(16, 8)
    x = torch.randn(4, 16, requires_grad=True)
    assert memory.saved_bytes(lambda: lin(x), [x, lin]) == 0
    assert memory.saved_bytes(lambda: lin(x), [x]) == 8 * 16 * 4  # the weight, once not excluded


def test_saved_tensor_storages_ignores_empty_placeholders():
    x = torch.randn(8, 4, requires_grad=True)
    found = memory.saved_tensor_storages(lambda: (x * x.new_empty(0).sum()).sum(), [x])
    assert all(n > 0 for n in found.values())


# --------------------------------------------------------------------------- peak memory


def test_peak_from_allocation_events():
    events = [(0, 100, 100), (1, 50, 150), (2, -100, 50), (3, 20, 70), (4, -70, 0)]
    assert memory.peak_from_allocation_events(events) == 150
    assert memory.peak_from_allocation_events([]) == 0


def test_cpu_peak_bytes_sees_a_temporary_allocation():
    def fn():
        t = torch.ones(MIB // 4)  # 1 MiB of float32, freed at return
        return float(t.sum())

    peak = memory.peak_bytes(fn, "cpu")
    assert MIB <= peak < 4 * MIB


def test_peak_bytes_rejects_other_devices():
    with pytest.raises(ValueError, match="device"):
        memory.peak_bytes(lambda: None, "meta")


# --------------------------------------------------------------------------- report


def _bench(op, impl, mode, median, **extra):
    info = {"op": op, "impl": impl, "mode": mode, "device": "cpu", "dtype": "float32", "backend": "cpu"}
    info.update(extra)
    return {"name": f"test_{op}[{impl}-{mode}]", "group": op, "extra_info": info,
            "stats": {"median": median, "min": median * 0.9, "rounds": 5}}


def _fabricated_run() -> dict:
    qkv = dict(M=2048, K=768, N=768, R=64, J=3)
    benches = []
    for mode, floor in (("forward", 0.010), ("backward", 0.012), ("full", 0.020)):
        benches.append(_bench("dma_linear_multi", "floor", mode, floor, saved_bytes=0, **qkv))
        # petal meets 1.20x; no ratio_to_floor in extra_info: the report computes it from the floor
        benches.append(_bench("dma_linear_multi", "petal", mode, floor * 1.1, saved_bytes=512 * 1024,
                              tflops=0.5, **qkv))
        benches.append(_bench("dma_linear_multi", "lora", mode, floor * 1.7, saved_bytes=int(37.5 * MIB),
                              **qkv))
    gated = dict(B=8, T=256, d=768, g="large")
    benches.append(_bench("gated_residual", "floor", "full", 0.004, **gated))
    benches.append(_bench("gated_residual", "petal", "full", 0.003, saved_bytes=6 * MIB, **gated))
    benches.append(_bench("gated_residual", "unfused", "full", 0.0045, saved_bytes=13 * MIB, **gated))
    for preset, t in (("full", 2.31), ("lora", 1.34), ("petal", 1.0)):
        benches.append(_bench("qformer_step", preset, "step", t, trainable_params=1000, total_params=10 ** 8,
                              peak_bytes=100 * MIB))
    return {
        "machine_info": {"node": "box", "processor": "x86_64", "python_version": "3.11.0", "system": "Linux",
                         "release": "6.0", "cpu": {"brand_raw": "Fabricated CPU 9000", "count": 2},
                         "torch": "2.13.0", "torch_threads": 2, "bench_scale": "default"},
        "commit_info": {"id": "0123456789abcdef", "dirty": False},
        "datetime": "2026-01-01T00:00:00", "version": "5.3.1", "benchmarks": benches,
    }


def test_report_writes_tables_targets_and_charts(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps(_fabricated_run()))
    out = tmp_path / "docs"
    assert report.main([str(path), "--out", str(out)]) == 0
    text = (out / "BENCHMARKS.md").read_text()
    assert "Fabricated CPU 9000" in text and "torch 2.13.0 with 2 threads" in text
    assert "| petal | cpu | 11.00 ms | 1.10× |" in text  # median and its ratio to the floor
    assert "1.70×" in text  # lora's ratio
    # targets: dma_linear_multi 1.10x and 0.50 MiB are met; gated_residual is 1.5x, not 2x: missed;
    # Q-Former petal/lora = 0.75 met, petal/full = 0.43 met
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| `") or
            line.startswith("| Q-Former")}
    assert any("≤ 1.20×" in k and "| met |" in v for k, v in rows.items())
    assert any("≤ 1 MiB" in k and "| met |" in v for k, v in rows.items())
    assert any("gated_residual" in k and "| MISSED |" in v for k, v in rows.items())
    assert any("0.85×" in k and "| met |" in v for k, v in rows.items())
    assert "1 target(s) missed" in text
    pytest.importorskip("matplotlib")
    assert (out / "bench_dma_linear_multi.png").stat().st_size > 0
    assert (out / "bench_step.png").stat().st_size > 0
    assert "![bench_step.png](bench_step.png)" in text


def test_report_says_not_run_for_missing_results(tmp_path):
    run = _fabricated_run()
    run["benchmarks"] = [b for b in run["benchmarks"] if b["extra_info"]["op"] != "qformer_step"]
    path = tmp_path / "run.json"
    path.write_text(json.dumps(run))
    assert report.main([str(path), "--out", str(tmp_path), "--no-charts"]) == 0
    text = (tmp_path / "BENCHMARKS.md").read_text()
    assert "| Q-Former step `petal` ≤ 0.85× LoRA | – | not run |" in text
    assert not list(tmp_path.glob("*.png"))


def test_report_merges_files_later_results_win(tmp_path):
    first, second = _fabricated_run(), _fabricated_run()
    for b in second["benchmarks"]:
        if b["extra_info"]["op"] == "qformer_step" and b["extra_info"]["impl"] == "petal":
            b["stats"]["median"] = 2.0  # petal now 0.87x full, 1.49x lora: both targets missed
    second["benchmarks"] = [b for b in second["benchmarks"] if b["extra_info"]["op"] == "qformer_step"]
    paths = [tmp_path / "a.json", tmp_path / "b.json"]
    for path, run in zip(paths, (first, second)):
        path.write_text(json.dumps(run))
    recs = report.records(report.load_runs(paths))
    steps = [r for r in recs if r["op"] == "qformer_step" and r["impl"] == "petal"]
    assert len(steps) == 1 and steps[0]["median_s"] == 2.0 and steps[0]["source"] == "b.json"
    assert len([r for r in recs if r["op"] == "dma_linear_multi"]) == 9  # kept from the first file
    verdicts = {t: v for t, _, v in report.check_targets(recs)}
    assert verdicts["Q-Former step, preset `petal` ≤ 0.85× the peft LoRA step"] == "MISSED"


def test_report_finds_the_newest_autosave_and_rejects_other_json(tmp_path):
    old, new = tmp_path / "Linux" / "0001_a.json", tmp_path / "Linux" / "0002_b.json"
    old.parent.mkdir()
    old.write_text("{}")
    new.write_text("{}")
    os.utime(old, (time.time() - 100, time.time() - 100))
    assert report.find_latest(tmp_path) == new
    with pytest.raises(ValueError, match="not pytest-benchmark JSON"):
        report.load_runs([new])
    with pytest.raises(FileNotFoundError, match="no benchmark JSON"):
        report.find_latest(tmp_path / "empty")


def test_report_sweep_table_and_summarised_sweep_target(tmp_path):
    run = _fabricated_run()
    shape = dict(M=512, K=1408, N=768, R=16, J=2, sweep=True)
    for impl, t, saved in (("floor", 0.010, 0), ("petal", 0.0115, 64 * 1024), ("lora", 0.016, 3 * MIB),
                           ("official", 0.014, MIB)):
        run["benchmarks"].append(_bench("dma_linear_multi", impl, "full", t, saved_bytes=saved, **shape))
    for d, unfused in ((768, 0.009), (4096, 0.005)):  # 3.0x and 1.67x: one of two sweep cases meets 2x
        dims = dict(B=2, T=256, d=d, g="small", p=0.1, sweep=True)
        for impl, t, saved in (("floor", 0.002, 0), ("petal", 0.003, 0), ("unfused", unfused, MIB)):
            run["benchmarks"].append(_bench("gated_residual", impl, "full", t, saved_bytes=saved, **dims))
    path = tmp_path / "run.json"
    path.write_text(json.dumps(run))
    assert report.main([str(path), "--out", str(tmp_path), "--no-charts"]) == 0
    text = (tmp_path / "BENCHMARKS.md").read_text()
    # the sweep shape gets one row: floor time, ratios, petal's speed-ups, saved MiB
    row = next(line for line in text.splitlines() if line.startswith("| M=512 K=1408"))
    assert "| 10.00 ms | 1.15× | 1.60× | 1.40× | 1.39× | 1.22× | 0.06 | 3.00 | 1.00 |" in row
    # the sweep shape has no per-mode table of its own and no own target line
    assert "**cpu float32, M=512 K=1408" not in text
    sweep = next(line for line in text.splitlines() if "shape sweep (2 cases" in line)
    assert "1 of 2 cases; slowest 1.67×" in sweep and "| MISSED |" in sweep


def test_report_step_targets_use_the_paired_cycle_ratios(tmp_path):
    run = _fabricated_run()
    for b in run["benchmarks"]:  # medians say 1.0/1.34 = 0.75x lora; the paired cycles say 0.9x
        if b["extra_info"]["op"] == "qformer_step" and b["extra_info"]["impl"] == "petal":
            b["extra_info"].update(ratio_to_lora=0.9, ratio_to_lora_range=[0.8, 1.1], ratio_to_full=0.45,
                                   ratio_to_full_range=[0.4, 0.5], cycles=8)
    path = tmp_path / "run.json"
    path.write_text(json.dumps(run))
    verdicts = {t: (m, v) for t, m, v in report.check_targets(report.records(report.load_runs([path])))}
    measured, verdict = verdicts["Q-Former step, preset `petal` ≤ 0.85× the peft LoRA step"]
    assert verdict == "MISSED" and measured.startswith("0.90× (median of 8 paired cycles; range 0.80–1.10×)")
    measured, verdict = verdicts["Q-Former step, preset `petal` ≤ 0.5× full fine-tuning"]
    assert verdict == "met" and measured.startswith("0.45×")


def test_report_dma_target_uses_the_paired_ratio(tmp_path):
    run = _fabricated_run()
    for b in run["benchmarks"]:  # medians taken apart say 1.10x; back-to-back pairs say 1.22x
        e = b["extra_info"]
        if e["op"] == "dma_linear_multi" and e["impl"] == "petal" and e["mode"] == "full":
            e.update(paired_ratio_to_floor=1.22, paired_ratio_range=[1.15, 1.3], pairs=15)
    path = tmp_path / "run.json"
    path.write_text(json.dumps(run))
    assert report.main([str(path), "--out", str(tmp_path), "--no-charts"]) == 0
    text = (tmp_path / "BENCHMARKS.md").read_text()
    line = next(line for line in text.splitlines() if "≤ 1.20× the frozen floor" in line)
    assert "1.22× (median of 15 back-to-back pairs with the floor, range 1.15–1.30×" in line
    assert "| MISSED |" in line
    assert "| 22.00 ms | 1.10× | – | 1.22× |" in text  # the both-mode ratio, by min (absent), paired


def test_paired_ratios_alternate_and_time_both():
    calls = []

    def fast():
        calls.append("impl")

    def slow():
        calls.append("floor")
        time.sleep(0.002)

    ratios = paired.paired_ratios(fast, slow, 4)
    assert len(ratios) == 4 and all(0 < r < 1 for r in ratios)
    assert calls[2:6] == ["impl", "floor", "floor", "impl"]  # after one warm-up call each


def test_report_gated_targets_use_the_paired_speedup(tmp_path):
    run = _fabricated_run()
    for d in (768, 4096):  # medians taken apart: 1.5x for both sweep shapes; back-to-back pairs: 2.2x, 1.9x
        dims = dict(B=2, T=256, d=d, g="middleY", p=0.0, sweep=True)
        for impl, t, saved in (("floor", 0.002, 0), ("petal", 0.002, 0), ("unfused", 0.003, MIB)):
            b = _bench("gated_residual", impl, "full", t, saved_bytes=saved, **dims)
            if impl == "petal":
                b["extra_info"].update(paired_speedup_over_unfused=2.2 if d == 768 else 1.9,
                                       paired_speedup_range=[1.7, 2.6], pairs=41)
            run["benchmarks"].append(b)
    path = tmp_path / "run.json"
    path.write_text(json.dumps(run))
    assert report.main([str(path), "--out", str(tmp_path), "--no-charts"]) == 0
    text = (tmp_path / "BENCHMARKS.md").read_text()
    sweep = next(line for line in text.splitlines() if "shape sweep (2 cases" in line)
    assert "1 of 2 cases; slowest 1.90×" in sweep and "| MISSED |" in sweep
    assert "petal vs unfused paired" in text
    row = next(line for line in text.splitlines() if line.startswith("| B=2 T=256 d=768 g=middleY"))
    assert "| 1.50× | 2.20× |" in row  # by medians, then paired


def test_warm_paired_ratios_time_each_call_after_one_of_its_own():
    calls = []

    def impl():
        calls.append("impl")

    def floor():
        calls.append("floor")

    paired.paired_ratios(impl, lambda: floor() or time.sleep(0.001), 2, warm=True)
    assert calls[2:] == ["impl", "impl", "floor", "floor", "floor", "floor", "impl", "impl"]
