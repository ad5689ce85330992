"""Timing two implementations back to back, for ratios the host's drift cancels out of.

pytest-benchmark times each implementation in a loop of its own, minutes apart from the other; on a shared
2-core VM the host's speed drifts 10-20 % within seconds, which moves a 2x target by more than its margin.
The targets' implementations are therefore also timed in back-to-back pairs with what they are compared
with (docs/notes/GATED_CPU.md: how the speed-up is measured), and the verdict reads the median of the
pairs' ratios.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

PAIRED_OPS = ("dma_linear", "dma_linear_multi")  # petal's headline fwd+bwd also timed in pairs with the floor
PAIRED_IMPLS = ("petal",)  # the one a target reads; the other implementations' medians stand as they are
PAIRS = 25  # the target sits 2-3 % above the flop floor: 15 pairs left its median to the host's noise
# gated_residual's target compares petal with the unfused form: every petal fwd+bwd is also timed in
# back-to-back pairs with it
MAX_PAIRS = 41
MIN_GATED_PAIRS = 5
PAIRED_BUDGET_S = 0.15  # gated_residual: petal and the unfused form back to back, pairs fitting 2x this


def rounds(fn: Callable[[], Any], budget_s: float, min_rounds: int, max_rounds: int) -> int:
    start = time.perf_counter()
    fn()  # warm-up: compilation of the backward, allocator, lazy init
    first = time.perf_counter() - start
    if first * min_rounds >= budget_s:  # min_rounds even if the warm-up was slower than a timed call
        return min_rounds
    start = time.perf_counter()
    fn()
    once = max(time.perf_counter() - start, 1e-6)
    return max(min_rounds, min(max_rounds, int(budget_s / once)))


def paired_ratios(fn: Callable[[], Any], floor_fn: Callable[[], Any], pairs: int,
                   warm: bool = False) -> list[float]:
    """``fn``'s time over the floor's, each pair timed back to back (order alternating), so a drift of
    the machine's speed between the two medians taken apart cancels. ``warm``: each timed call right
    after an untimed one of the same function, so both see the caches a run of their own leaves (as
    in the medians), not the other's: a memory-bound op whose inputs nearly fit the last-level cache
    is otherwise timed after the other form evicted them."""
    fn(), floor_fn()
    ratios = []
    order = (("impl", fn), ("floor", floor_fn))
    for i in range(pairs):
        times = {}
        for name, f in order if i % 2 == 0 else order[::-1]:
            if warm:
                f()
            start = time.perf_counter()
            f()
            times[name] = time.perf_counter() - start
        ratios.append(times["impl"] / times["floor"])
    return ratios


def inline_median(fn: Callable[[], Any], rounds: int) -> tuple[float, float]:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times)


def ratios_info(op: str, impl: str, mode: str, sweep: bool, fn: Callable[[], Any],
                partner: Callable[[str], Callable[[], Any]]) -> dict[str, Any]:
    """The paired entries of a case's ``extra_info``: petal's headline dma fwd+bwd over the floor's, and
    every gated_residual petal fwd+bwd's speed-up over the unfused form. ``partner(impl)`` builds the
    fwd+bwd callable of the implementation ``fn`` is compared with."""
    if mode != "full" or impl not in PAIRED_IMPLS:
        return {}
    if op in PAIRED_OPS and not sweep:
        found = paired_ratios(fn, partner("floor"), PAIRS)
        return {"paired_ratio_to_floor": statistics.median(found),
                "paired_ratio_range": [min(found), max(found)], "pairs": len(found)}
    if op == "gated_residual":
        unfused = partner("unfused")
        pairs = rounds(lambda: (fn(), unfused()), PAIRED_BUDGET_S, MIN_GATED_PAIRS, MAX_PAIRS)
        found = paired_ratios(unfused, fn, pairs, warm=True)  # unfused time over petal's
        return {"paired_speedup_over_unfused": statistics.median(found),
                "paired_speedup_range": [min(found), max(found)], "pairs": len(found)}
    return {}
