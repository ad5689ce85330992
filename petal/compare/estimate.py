"""What a plan costs, before it runs: seconds per run from measured step times, or GPU hours from a FLOP
model of the real checkpoints.

* ``"device": "cpu"`` (the quick grid): the seconds per training step of each preset (or of an experiment,
  by its name, when its overrides change the cost: e.g. an ablation reading three instructions), measured on
  the grid's compare model and written into the grid's ``estimate`` section with the conditions they were
  measured under; a preset without a measurement takes ``default``. ``eval_seconds_per_record`` is a number
  or a table of the same form (several instructions per image make evaluation slower too). Runs already
  finished in the output folder contribute their own measured times instead.
* ``"device": "gpu"`` (the paper grid): nothing of the real models is measured here (no GPU, no download).
  The step cost is counted in FLOPs from the models' sizes and token counts listed in the grid (forward
  ``2·params·tokens`` per part; the backward computes input gradients through every part between the
  loss and the first trainable weight, and weight gradients only for trainable weights: the Q-Former's
  under ``full``), divided by ``gpus × peak_tflops × mfu``. The MFU is an assumption and says so.
"""

from __future__ import annotations

import math
from typing import Optional

from .plan import ExperimentPlan, Plan

# where a method's gradients must flow: "qformer-weights" (full), "qformer" (adapters inside the Q-Former:
# petal, lora on the Q-Former, maple, llama-adapter), "lm" (adapters in the language model: vl-pet,
# vl-adapter, lora on the T5). `head` trains the last Q-Former layer: its backward through that one layer
# (1/12 of InstructBLIP's Q-Former, about 0.3% of a FlanT5-xxl step) is left out, so it counts as "lm".
_FLOW = {"full": "qformer-weights", "head": "lm", "vl-pet": "lm", "vl-adapter": "lm"}


def flow(config: dict) -> str:
    if config.get("method") == "lora":
        return "lm" if (config.get("lora") or {}).get("target") == "t5" else "qformer"
    return _FLOW.get(config.get("method"), "qformer")


def instructions_per_image(content: dict) -> int:
    """How many times the Q-Former runs per image: the config's instruction count for a method that merges
    several (``focus`` / ``random``, or the synthetic records' own three with ``options.instructions``),
    else once. A folder's own instruction lists are not read at plan time and count as one."""
    config = content.get("petal") or {}
    aim = config.get("aim") or {}
    if config.get("method") != "petal" or not aim.get("enabled", True):
        return 1
    settings = config.get("instructions") or {}
    if settings.get("source", "record") != "record":
        return int(settings.get("count", 1))
    data = content.get("data") or {}
    if data.get("source", "synthetic") == "synthetic" and (data.get("options") or {}).get("instructions"):
        from ..data.instructions import FOCUS_INSTRUCTIONS

        return len(FOCUS_INSTRUCTIONS)
    return 1


def steps_of(ep: ExperimentPlan, train_records: Optional[int], processes: int = 1) -> int:
    """Optimizer steps of one run (``processes`` data-parallel workers share an epoch)."""
    budget = ep.setting.budget
    if budget.max_steps:
        return budget.max_steps
    if not train_records:
        raise ValueError(f"setting {ep.setting.name!r} trains by epochs; its estimate needs train_records")
    few = ep.setting.data.get("few_shot")
    records = min(few, train_records) if few else train_records
    return max(1, math.ceil(budget.epochs * records / (budget.batch_size * processes)))


def _lookup(table, ep: ExperimentPlan, default: float) -> float:
    """A number, or ``{experiment name | preset | "default": number}`` looked up in that order."""
    if not isinstance(table, dict):
        return float(table)
    return table.get(ep.experiment.name, table.get(ep.experiment.preset, table.get("default", default)))


def cpu_train_seconds(ep: ExperimentPlan, estimate: dict, measured: Optional[float] = None) -> float:
    """One run's training (and its overhead) from the measured seconds per step."""
    per_step = measured or _lookup(estimate.get("seconds_per_step", {}), ep, 1.0)
    steps = steps_of(ep, None)
    batch = ep.setting.budget.batch_size
    overhead = estimate.get("run_overhead_seconds", 0)
    return per_step * steps * batch / estimate.get("batch_size", batch) + overhead


def cpu_test_seconds(ep: ExperimentPlan, estimate: dict) -> float:
    """One run's test evaluation (generation over the test records)."""
    data = ep.setting.data
    test_records = data.get("test_scenes", 0) * len(data.get("families") or [1])
    return _lookup(estimate.get("eval_seconds_per_record", 0.0), ep, 0.0) * test_records


def gpu_example_flops(ep: ExperimentPlan, estimate: dict, cached_images: bool = False) -> float:
    """FLOPs of one training example (forward + backward) for this experiment's method."""
    m = _sizes(ep, estimate)
    vision = 0.0 if cached_images else 2 * m["vision_params"] * m["vision_tokens"]
    qformer = 2 * m["qformer_params"] * m["qformer_tokens"] * instructions_per_image(ep.content)
    lm = 2 * (m["lm_encoder_params"] * m["lm_input_tokens"] + m["lm_decoder_params"] * m["lm_output_tokens"])
    kind = flow(ep.content.get("petal", {}))
    backward = lm  # input gradients through the whole LM (every method's trainable part sits before its end)
    if kind in ("qformer", "qformer-weights"):
        backward += qformer
    if kind == "qformer-weights":
        backward += qformer
    return vision + qformer + lm + backward


def gpu_eval_flops(ep: ExperimentPlan, estimate: dict) -> float:
    m = _sizes(ep, estimate)
    beams = ep.content.get("eval", {}).get("num_beams", 5)
    return 2 * (m["vision_params"] * m["vision_tokens"]
                + m["qformer_params"] * m["qformer_tokens"] * instructions_per_image(ep.content)
                + m["lm_encoder_params"] * m["lm_input_tokens"]
                + beams * m["lm_decoder_params"] * m["lm_output_tokens"])


def _sizes(ep: ExperimentPlan, estimate: dict) -> dict:
    """The model's parameter counts and the setting's token counts."""
    name = ep.setting.model.get("name")
    sizes = estimate.get("models", {}).get(name)
    tokens = estimate.get("tokens", {}).get(ep.setting.source)
    if sizes is None or tokens is None:
        raise ValueError(f"the grid's estimate section needs models[{name!r}] and "
                         f"tokens[{ep.setting.source!r}]")
    return {**sizes, **tokens}


def gpu_train_flops(ep: ExperimentPlan, estimate: dict) -> float:
    """FLOPs of one run's training (the cached vision encoder runs in the first epoch only)."""
    train_records = estimate.get("train_records", {}).get(ep.setting.source)
    budget = ep.setting.budget
    if budget.max_steps:
        examples = budget.max_steps * budget.batch_size * estimate["gpus"]
    else:
        few = ep.setting.data.get("few_shot")
        examples = budget.epochs * (min(few, train_records) if few else train_records)
    epochs = budget.epochs if not budget.max_steps else max(1.0, examples / train_records)
    flops = gpu_example_flops(ep, estimate) * examples
    if ep.content.get("cache_image_features"):
        saved = gpu_example_flops(ep, estimate) - gpu_example_flops(ep, estimate, cached_images=True)
        flops -= saved * examples * (1 - 1 / epochs)
    return flops


def _throughput(estimate: dict) -> float:
    return estimate["gpus"] * estimate["peak_tflops"] * 1e12 * estimate["mfu"]


def gpu_train_seconds(ep: ExperimentPlan, estimate: dict) -> float:
    return gpu_train_flops(ep, estimate) / _throughput(estimate)


def gpu_test_seconds(ep: ExperimentPlan, estimate: dict) -> float:
    test_records = estimate.get("test_records", {}).get(ep.setting.source, 0)
    return gpu_eval_flops(ep, estimate) * test_records / _throughput(estimate)


def train_seconds(ep: ExperimentPlan, estimate: dict, measured: Optional[float] = None) -> float:
    """Wall seconds of one run's training on the grid's device (all GPUs of a node for ``gpu``)."""
    if estimate.get("device", "cpu") == "gpu":
        return gpu_train_seconds(ep, estimate)
    return cpu_train_seconds(ep, estimate, measured)


def test_seconds(ep: ExperimentPlan, estimate: dict) -> float:
    """Wall seconds of one run's test evaluation (only the runs at the chosen rate get one)."""
    if estimate.get("device", "cpu") == "gpu":
        return gpu_test_seconds(ep, estimate)
    return cpu_test_seconds(ep, estimate)


def run_seconds(ep: ExperimentPlan, estimate: dict, measured: Optional[float] = None) -> float:
    """Wall seconds of one run that is trained and evaluated on test."""
    return train_seconds(ep, estimate, measured) + test_seconds(ep, estimate)


def pretrain_seconds(plan: Plan) -> float:
    """The compare model's pre-training (0 for checkpoints, which come pre-trained)."""
    est = plan.grid.estimate
    model = plan.grid.model
    if model.get("kind") != "compare":
        return 0.0
    from .model import compare_spec

    _, pretrain = compare_spec(model)
    return pretrain.steps * est.get("pretrain_seconds_per_step", 0.0)


def projected_table5(grid_name: str = "paper") -> Optional[str]:
    """PETAL's training time relative to full fine-tuning on the real model, by the FLOP model of the
    paper grid, with and without the feature cache (a projection, not a measurement)."""
    from .grid import load_grid
    from .plan import make_plan

    plan = make_plan(load_grid(grid_name))
    by = {ep.experiment.name: ep for ep in plan.runnable}
    est = plan.grid.estimate
    parts, vision_share = [], None
    for source in ("flickr30k", "okvqa"):
        names = (f"main/{source}/full", f"main/{source}/petal", f"timing/{source}/petal-cached",
                 f"timing/{source}/full-cached")
        if not all(n in by for n in names):
            continue
        full, petal, cached, full_cached = (gpu_train_flops(by[n], est) for n in names)
        one = by[names[1]]
        vision_share = 1 - gpu_example_flops(one, est, cached_images=True) / gpu_example_flops(one, est)
        parts.append(f"{source}: PETAL {petal / full:.2f}x, PETAL with cached image features "
                     f"{cached / full:.2f}x, full fine-tuning with cached features {full_cached / full:.2f}x")
    if not parts:
        return None
    model = plan.grid.model.get("name")
    return (f"Projected for {model} over {plan.grid.budget.epochs:g} epochs by the paper grid's FLOP model "
            f"(not measured; `petal compare --grid paper --dry-run` states its assumptions): "
            + "; ".join(parts) + f". Its vision encoder is {100 * vision_share:.0f}% of a PETAL training "
            "step's FLOPs there; the compare model's is tiny (64 wide, 2 layers), so the cache saves little "
            "on it.")


def plan_seconds(plan: Plan, measured: Optional[dict] = None) -> dict:
    """``{content_key: seconds of all its runs}`` for the unique runnable experiments: every training, and a
    test evaluation for the runs at the chosen rate only."""
    measured = measured or {}
    est = plan.grid.estimate
    return {ep.content_key: ep.run_count * train_seconds(ep, est, measured.get(ep.content_key))
            + ep.test_count * test_seconds(ep, est) for ep in plan.unique()}


__all__ = ["flow", "gpu_example_flops", "gpu_train_flops", "instructions_per_image", "plan_seconds",
           "pretrain_seconds", "projected_table5", "run_seconds", "steps_of", "test_seconds",
           "train_seconds"]
