"""pytest hooks and fixtures of ``pytest bench/ --benchmark-only``: the grid of cases (bench/grid.py), built
by the setup factories (bench/setups.py), timed by pytest-benchmark; ``measure`` adds what the report reads
(ratios to the floor, TFLOP/s, saved and peak memory, and the paired ratios of bench/paired.py).
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

import pytest
import torch

import petal_kernels
from bench import memory, paired
from bench.grid import GRIDS, Param, bench_scale
from bench.setups import SETUPS, Setup, callable_for

THREADS = 2
SWEEP_BUDGET = 0.5  # a sweep case's share of the timing budget of a headline case (at least 3 rounds)


def pytest_addoption(parser):
    parser.addoption(
        "--bench-scale", choices=("default", "full"), default=None,
        help="shape grid of the petal benchmarks (default: 'default', or 'full' when PETAL_BENCH_FULL=1)")


def pytest_configure(config):
    torch.set_num_threads(THREADS)
    json_path = config.getoption("benchmark_json", default=None)
    if json_path:  # pytest-benchmark writes it at the very end and does not create its directory
        pathlib.Path(json_path).parent.mkdir(parents=True, exist_ok=True)
    import torch._dynamo as dynamo

    # one compiled graph per benchmarked shape; the default limit would silently fall back to eager
    for name in ("cache_size_limit", "recompile_limit"):
        if hasattr(dynamo.config, name):
            setattr(dynamo.config, name, 256)


def pytest_collection_modifyitems(session, config, items):
    """The end-to-end training steps run first, in a process that has done nothing else yet, as a
    training run would: after the op benchmarks (thousands of short-lived tensors of every size) the
    allocator's state moved the step times by more than the step targets' margins."""
    items.sort(key=lambda item: 0 if item.path.name == "test_qformer_step.py" else 1)


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["torch"] = torch.__version__
    machine_info["torch_threads"] = torch.get_num_threads()
    machine_info["petal_backends"] = {
        "cpu": petal_kernels.available_backends("cpu"),
        "default_cpu": petal_kernels.backend_name(torch.device("cpu")),
    }
    machine_info["bench_scale"] = bench_scale(config)
    if hasattr(os, "getloadavg"):  # at the end of the run: how contended the machine was
        machine_info["load_average"] = [round(v, 2) for v in os.getloadavg()]
    if torch.cuda.is_available():
        machine_info["cuda_device"] = torch.cuda.get_device_name()
        machine_info["petal_backends"]["default_cuda"] = petal_kernels.backend_name(torch.device("cuda"))


def pytest_generate_tests(metafunc):
    for name, grid in GRIDS.items():
        if name in metafunc.fixturenames:
            metafunc.parametrize(name, grid(bench_scale(metafunc.config)))



class SetupCache:
    """Keeps the last setup, so the three modes of one implementation share one construction."""

    def __init__(self):
        self.key, self.setup = None, None

    def get(self, param: Param) -> Setup:
        if self.key != param.setup_key():
            self.key, self.setup = None, None  # free the previous case's tensors first
            self.setup = SETUPS[param.op](param.impl, param.device, param.dtype, **param.shape)
            self.key = param.setup_key()
        return self.setup


@pytest.fixture(scope="session")
def setup_cache() -> SetupCache:
    return SetupCache()


@pytest.fixture(scope="session")
def scale(request) -> str:
    """'default' or 'full' (see ``--bench-scale``)."""
    return bench_scale(request.config)


@pytest.fixture(scope="session")
def floor_times() -> dict:
    return {}


@pytest.fixture
def measure(benchmark, request, setup_cache, floor_times):
    """``measure(param)``: time ``param``'s mode with pytest-benchmark, then record in ``extra_info``
    the ratio to the floor (same run), TFLOP/s, saved-for-backward bytes and (mode ``full``, headline
    shapes) peak memory."""
    scale = bench_scale(request.config)
    budget = 1.0 if scale == "full" else 0.4

    def run(param: Param) -> dict[str, Any]:
        device = torch.device(param.device)
        setup = setup_cache.get(param)
        fn = callable_for(setup, param.mode, device)
        n = paired.rounds(fn, budget * SWEEP_BUDGET if param.sweep else budget, 3 if param.sweep else 5, 200)
        benchmark.group = param.group
        benchmark.pedantic(fn, rounds=n, iterations=1, warmup_rounds=0)

        info: dict[str, Any] = {
            "op": param.op, "impl": param.impl, "device": param.device, "dtype": param.dtype,
            "mode": param.mode, **param.shape, "backend": setup.backend, "threads": torch.get_num_threads(),
            "sweep": param.sweep,
        }
        stats = benchmark.stats.stats if benchmark.stats is not None else None
        if stats is not None:
            median, fastest = stats.median, stats.min
            info.update(median_s=median, min_s=fastest)
            if param.impl == "floor":
                floor_times[param.floor_key()] = (median, fastest)
                info.update(floor_median_s=median, ratio_to_floor=1.0, ratio_min_to_floor=1.0,
                            floor_source="same run")
            else:
                source = "same run"
                if param.floor_key() not in floor_times:  # floor deselected (-k): time it here
                    floor = SETUPS[param.op]("floor", param.device, param.dtype, **param.shape)
                    floor_fn = callable_for(floor, param.mode, device)
                    timed = paired.rounds(floor_fn, budget, 5, 200)
                    floor_times[param.floor_key()] = paired.inline_median(floor_fn, timed)
                    source = "inline"
                floor_median, floor_min = floor_times[param.floor_key()]
                info.update(floor_median_s=floor_median, ratio_to_floor=median / floor_median,
                            ratio_min_to_floor=fastest / floor_min, floor_source=source)
            if setup.flops:
                info.update(flops=setup.flops[param.mode], tflops=setup.flops[param.mode] / median / 1e12)

        def partner(impl: str):
            other = SETUPS[param.op](impl, param.device, param.dtype, **param.shape)
            return callable_for(other, "full", device)

        info.update(paired.ratios_info(param.op, param.impl, param.mode, param.sweep, fn, partner))
        if setup.saved_bytes is None:  # a property of the forward: once per setup, not per mode
            setup.saved_bytes = memory.saved_bytes(setup.forward, setup.keep)
        info["saved_bytes"] = setup.saved_bytes
        if param.mode == "full" and not param.sweep:  # the sweep reports saved bytes (peak: headline shapes)
            info["peak_bytes"] = memory.peak_bytes(callable_for(setup, "full", device), device)
        benchmark.extra_info.update(info)
        return info

    return run
