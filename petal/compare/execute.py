"""One run: patch a copy of the base model, train it with the run's budget, evaluate on val and test,
and write the result file (atomically: an interrupted run leaves no file and is run again). A sweep run
evaluates val only and keeps its trained state (:mod:`.state`) beside its result file; once its rate is
chosen, its test evaluation loads that state and rewrites the result file with ``test`` filled in.

A run is described entirely by its plan content plus seed and learning rate, so the same function runs
in the main process or in a worker process (``--jobs``); bases and data sets are loaded once per process.
"""

from __future__ import annotations

import copy
import os
import platform
import re
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from . import data as compare_data
from . import model as models
from .results import write_json

_BASES: dict = {}
_SPLITS: dict = {}


@dataclass(frozen=True)
class Task:
    """Everything a (possibly separate) process needs to execute one run."""

    key: str
    content_key: str
    content: dict
    lr: float
    seed: int
    result_file: str
    select_metric: str
    threads: Optional[int] = None
    # "full": train, evaluate val and test; "sweep": train, evaluate val, keep the state in state_file for a
    # later "test": evaluate test from that state and fill it into the result file
    mode: str = "full"
    state_file: str = ""


def base_for(model: dict, log=print):
    import json

    key = json.dumps(models.identity(model), sort_keys=True)
    if key not in _BASES:
        _BASES[key] = models.load(model, None, log=log)
    return _BASES[key]


def _splits(data: dict, image_size: int) -> dict:
    import json

    key = json.dumps([data, image_size], sort_keys=True)
    if key not in _SPLITS:
        _SPLITS[key] = compare_data.load_splits(data, image_size)
    return _SPLITS[key]


def execute(task: Task) -> dict:
    """Train and evaluate one run (with ``task.threads`` torch threads); write and return its result."""
    import torch

    threads = torch.get_num_threads()
    if task.threads:
        torch.set_num_threads(task.threads)
    try:
        return _execute(task)
    finally:
        torch.set_num_threads(threads)


def _prepare(task: Task):
    """The run's model (a copy of the base, patched under the run's seed, feature cache on if asked), its data
    splits, and ``measure(split, generate)``, which evaluates it as the grid's ``eval`` says."""
    import torch

    import petal

    from ..data.collate import InstructionCollator
    from ..evaluate import evaluate
    from ..models.feature_cache import enable_feature_cache

    content = task.content
    loaded = base_for(content["model"], log=lambda s: None)
    splits = _splits(content["data"], loaded.image_size)
    model = copy.deepcopy(loaded.model)
    torch.manual_seed(task.seed)  # the adapter's initialisation is part of the seed
    config = petal.PetalConfig.from_dict(content["petal"])
    petal.patch(model, config)
    cache = enable_feature_cache(model) if content["cache_image_features"] else None
    eval_collator = InstructionCollator.for_config(loaded.eval_collator, config, train=False)
    ev = content["eval"]

    def measure(split: str, generate: bool) -> dict:
        r = evaluate(model, splits[split], eval_collator, loaded.decode,
                     batch_size=ev.get("batch_size", 32), num_beams=ev.get("num_beams", 5),
                     max_new_tokens=ev.get("max_new_tokens", 20), generate=generate,
                     cider_tokenizer=ev.get("cider_tokenizer", "auto"),
                     rouge_variant=ev.get("rouge_variant", "rouge-score"))
        out = {"loss": r["loss"], "metrics": r["metrics"], "num_examples": r["num_examples"],
               "ids": [str(row["id"]) for row in r["rows"]]}
        if generate:  # kept so the run can be rescored without training it again
            out["predictions"] = {str(row["id"]): row["prediction"] for row in r["rows"]}
        return out

    return loaded, splits, model, config, cache, measure


def _execute(task: Task) -> dict:
    if task.mode == "test":
        return _test_kept(task)
    import torch

    import petal

    from ..data.collate import InstructionCollator
    from ..train import TrainSettings, train_model
    from .state import save_state

    content = task.content
    loaded, splits, model, config, cache, measure = _prepare(task)
    counts = petal.trainable_parameters(model)
    budget = content["budget"]
    settings = TrainSettings(
        max_steps=budget["max_steps"], epochs=budget["epochs"], batch_size=budget["batch_size"], lr=task.lr,
        weight_decay=budget["weight_decay"], warmup_steps=budget["warmup_steps"],
        max_grad_norm=budget["max_grad_norm"], seed=task.seed, progress=False)
    # what the Q-Former reads per image, as `petal train` does: several instructions for a method that merges
    # them (the config's source, or the records' own), the prompt for the others
    collator = compare_data.RecordingCollator(InstructionCollator.for_config(loaded.train_collator, config,
                                                                             train=True))
    stamps = []
    device = next(model.parameters()).device
    _reset_peak(device)
    load_before = _load()
    start = time.perf_counter()
    trained = train_model(model, splits["train"], collator, settings, log=lambda s: None,
                          on_step=lambda step, logs: stamps.append(time.perf_counter()))
    train_seconds = time.perf_counter() - start
    peak = _peak(device)
    load_after = _load()
    steps = [b - a for a, b in zip([start] + stamps[:-1], stamps)]

    eval_start = time.perf_counter()
    val = measure("val", generate=task.select_metric != "loss")
    test = measure("test", generate=True) if task.mode == "full" else None
    result = {
        "key": task.key, "content_key": task.content_key,
        "content": content, "seed": task.seed, "lr": task.lr,
        "trainable_parameters": counts.trainable, "total_parameters": counts.total,
        "steps": trained.step, "train_seconds": train_seconds,
        "seconds_per_step": statistics.median(steps[1:] or steps) if steps else None,
        "first_step_seconds": steps[0] if steps else None,
        "mean_seconds_per_step": statistics.fmean(steps) if steps else None,
        "eval_seconds": time.perf_counter() - eval_start,
        "peak_memory_bytes": peak[0], "peak_memory_kind": peak[1],
        "final_train_loss": trained.last_loss,
        "val": val, "test": test,
        "feature_cache": cache.stats() if cache is not None else None,
        "data": {"train_ids_used": collator.ids, "val_ids": val.pop("ids"),
                 "test_ids": test.pop("ids") if test else None, "few_shot": splits["few_shot"]},
        "environment": {"torch": torch.__version__, "threads": torch.get_num_threads(), "device": str(device),
                        "machine": platform.machine(),
                        "processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                        # the 1-minute load average around training: above the core count, other processes
                        # shared the CPU and the times above are inflated
                        "load_average": [load_before, load_after]},
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if cache is not None:
        cache.remove()
    if task.mode == "sweep":  # the state first: a result file without its test always has its state beside it
        save_state(model, Path(task.state_file))
    write_json(Path(task.result_file), result)
    return result


def _test_kept(task: Task) -> dict:
    """A sweep run's test evaluation, from its kept state: the result file is rewritten with ``test`` filled
    in, then the state file is deleted."""
    import json

    from .state import load_state

    result_file, state_file = Path(task.result_file), Path(task.state_file)
    result = json.loads(result_file.read_text())
    _, _, model, _, cache, measure = _prepare(task)
    load_state(model, state_file)
    start = time.perf_counter()
    test = measure("test", generate=True)
    seconds = time.perf_counter() - start
    result["test"] = test
    result["data"]["test_ids"] = test.pop("ids")
    result["eval_seconds"] = (result.get("eval_seconds") or 0.0) + seconds
    result["test_eval_seconds"] = seconds
    result["test_finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    if cache is not None:  # a fresh cache: the test images only
        result["feature_cache_test"] = cache.stats()
        cache.remove()
    write_json(result_file, result)
    state_file.unlink(missing_ok=True)
    return result


def _load() -> Optional[float]:
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def _reset_peak(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:  # Linux: writing 5 resets the process's peak resident set size (VmHWM)
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _peak(device) -> tuple[Optional[int], str]:
    import torch

    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda max_memory_allocated"
    try:
        kb = int(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))
        return kb * 1024, "process peak RSS (VmHWM)"
    except (OSError, AttributeError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process peak RSS since start"


__all__ = ["Task", "base_for", "execute"]
