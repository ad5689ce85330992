"""Memory measurements for the benchmarks: bytes saved for backward, and peak allocated memory.

* ``saved_bytes(fn, exclude)``: run ``fn`` (a forward that builds an autograd graph) under
  ``torch.autograd.graph.saved_tensors_hooks`` and add up the storages autograd keeps for the
  backward, each storage once, leaving out the storages of ``exclude`` (the inputs and parameters,
  which the caller holds anyway).
* ``peak_bytes(fn, device)``: peak memory allocated while ``fn`` runs, above what was allocated
  before: ``torch.cuda.max_memory_allocated`` on CUDA, the profiler's CPU allocation events on the CPU.

Self-contained (only torch), so the unit tests can load it by path.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from torch import Tensor


def _storage_key(t: Tensor) -> tuple[str, int]:
    storage = t.untyped_storage()
    return (str(t.device), storage.data_ptr())


def _tensors(objs: Iterable[Any]) -> Iterable[Tensor]:
    for obj in objs:
        if isinstance(obj, Tensor):
            yield obj
        elif isinstance(obj, (list, tuple)):
            yield from _tensors(obj)
        elif isinstance(obj, dict):
            yield from _tensors(obj.values())
        elif isinstance(obj, torch.nn.Module):
            yield from obj.parameters()
            yield from obj.buffers()


def saved_tensor_storages(fn: Callable[[], Any], exclude: Iterable[Any] = ()) -> dict[tuple[str, int], int]:
    """Storages (key -> nbytes) autograd saves while ``fn`` runs, minus those of ``exclude``.

    ``exclude`` may hold tensors, modules (their parameters and buffers) and nested lists of them.
    Saved tensors whose storage has zero bytes (placeholders) are ignored.
    """
    excluded = {_storage_key(t) for t in _tensors(exclude)}
    found: dict[tuple[str, int], int] = {}

    def pack(t: Tensor) -> Tensor:
        nbytes = t.untyped_storage().nbytes()
        key = _storage_key(t)
        if nbytes and key not in excluded:
            found[key] = nbytes
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out  # the graph (and what it saved) is freed here; only the sizes were kept
    return found


def saved_bytes(fn: Callable[[], Any], exclude: Iterable[Any] = ()) -> int:
    """Bytes of the unique storages saved for backward by ``fn`` beyond ``exclude``."""
    return sum(saved_tensor_storages(fn, exclude).values())


def _cpu_allocation_events(prof) -> list[tuple[int, int, int]]:
    """(time_ns, alloc_size, total_allocated) of every allocation/free the CPU profiler saw."""
    from torch._C._profiler import _EventType

    events: list[tuple[int, int, int]] = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if node.tag == _EventType.Allocation and node.extra_fields.device.type == "cpu":
            f = node.extra_fields
            events.append((node.start_time_ns, f.alloc_size, f.total_allocated))
        stack.extend(node.children)
    events.sort()
    return events


def peak_from_allocation_events(events: list[tuple[int, int, int]]) -> int:
    """Peak allocated bytes above the level before the first event, from time-ordered events.

    Each event is ``(time, alloc_size, total_allocated_after)``; frees have a negative size.
    The running sum of sizes is used, so the result does not depend on what the allocator
    counted before profiling started.
    """
    peak = level = 0
    for _, size, _ in events:
        level += size
        peak = max(peak, level)
    return peak


def _cpu_peak_bytes(fn: Callable[[], Any]) -> int:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    try:
        return peak_from_allocation_events(_cpu_allocation_events(prof))
    except (AttributeError, ImportError, RuntimeError):  # profiler internals moved: op-level totals
        level = peak = 0
        for e in sorted(prof.events(), key=lambda e: e.time_range.start):
            level += e.self_cpu_memory_usage
            peak = max(peak, level)
        return peak


def peak_bytes(fn: Callable[[], Any], device: torch.device | str) -> int:
    """Peak bytes allocated while ``fn`` runs, above the allocation level before it started."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    if device.type == "cpu":
        return _cpu_peak_bytes(fn)
    raise ValueError(f"device must be 'cpu' or 'cuda', got {device}")
