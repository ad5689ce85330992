"""What a plan costs, before it runs: seconds per run from measured step times, or GPU hours from a FLOP
model of the real checkpoints.

* ``"device": "cpu"`` (the quick grid): the seconds per training step of each preset, measured on the grid's
  compare model and written into the grid's ``estimate`` section with the conditions they were measured
  under; a preset without a measurement takes ``default``. Runs already finished in the output folder
  contribute their own measured times instead.
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

# where a method's gradients must flow: "qformer-weights" (full), "qformer" (adapters inside the Q-Former),
# "lm" (adapters in the language model, or only the projection after the Q-Former)
_FLOW = {"full": "qformer-weights", "head": "lm", "vl-pet": "lm"}


def flow(config: dict) -> str:
    return _FLOW.get(config.get("method"), "qformer")


def steps_of(ep: ExperimentPlan, train_records: Optional[int]) -> int:
    budget = ep.setting.budget
    if budget.max_steps:
        return budget.max_steps
    if not train_records:
        raise ValueError(f"setting {ep.setting.name!r} trains by epochs; its estimate needs train_records")
    few = ep.setting.data.get("few_shot")
    records = min(few, train_records) if few else train_records
    return max(1, math.ceil(budget.epochs * records / budget.batch_size))


def cpu_run_seconds(ep: ExperimentPlan, estimate: dict, measured: Optional[float] = None) -> float:
    table = estimate.get("seconds_per_step", {})
    per_step = measured or table.get(ep.experiment.preset, table.get("default", 1.0))
    data = ep.setting.data
    test_records = data.get("test_scenes", 0) * len(data.get("families") or [1])
    steps = steps_of(ep, None)
    batch = ep.setting.budget.batch_size
    train = per_step * steps * batch / estimate.get("batch_size", batch)
    return (train + estimate.get("eval_seconds_per_record", 0.0) * test_records
            + estimate.get("run_overhead_seconds", 0))


def gpu_step_flops(ep: ExperimentPlan, estimate: dict, cached_images: bool = False) -> float:
    """FLOPs of one training example (forward + backward) for this experiment's method."""
    m = _model_sizes(ep, estimate)
    vision = 0.0 if cached_images else 2 * m["vision_params"] * m["vision_tokens"]
    qformer = 2 * m["qformer_params"] * m["qformer_tokens"]
    lm = 2 * (m["lm_encoder_params"] * m["lm_input_tokens"] + m["lm_decoder_params"] * m["lm_output_tokens"])
    kind = flow(ep.content.get("petal", {}))
    backward = lm  # input gradients through the whole LM (every method's trainable part sits before its end)
    if kind in ("qformer", "qformer-weights"):
        backward += qformer
    if kind == "qformer-weights":
        backward += qformer
    return vision + qformer + lm + backward


def gpu_eval_flops(ep: ExperimentPlan, estimate: dict) -> float:
    m = _model_sizes(ep, estimate)
    beams = ep.content.get("eval", {}).get("num_beams", 5)
    return 2 * (m["vision_params"] * m["vision_tokens"] + m["qformer_params"] * m["qformer_tokens"]
                + m["lm_encoder_params"] * m["lm_input_tokens"]
                + beams * m["lm_decoder_params"] * m["lm_output_tokens"])


def _model_sizes(ep: ExperimentPlan, estimate: dict) -> dict:
    name = ep.setting.model.get("name")
    sizes = estimate.get("models", {}).get(name)
    if sizes is None:
        raise ValueError(f"the grid's estimate section has no sizes for model {name!r}")
    return sizes


def gpu_run_seconds(ep: ExperimentPlan, estimate: dict) -> float:
    source = ep.setting.source
    train_records = estimate.get("train_records", {}).get(source)
    test_records = estimate.get("test_records", {}).get(source, 0)
    steps = steps_of(ep, train_records)
    examples = steps * ep.setting.budget.batch_size
    epochs = max(1.0, examples / max(1, train_records or examples))
    flops = gpu_step_flops(ep, estimate) * examples
    if ep.content.get("cache_image_features"):  # the vision encoder runs in the first epoch only
        saved = gpu_step_flops(ep, estimate) - gpu_step_flops(ep, estimate, cached_images=True)
        flops -= saved * examples * (1 - 1 / epochs)
    flops += gpu_eval_flops(ep, estimate) * test_records
    throughput = estimate["gpus"] * estimate["peak_tflops"] * 1e12 * estimate["mfu"]
    return flops / throughput


def run_seconds(ep: ExperimentPlan, estimate: dict, measured: Optional[float] = None) -> float:
    """Wall seconds of one run of ``ep`` on the grid's device (all GPUs of a node for ``gpu``)."""
    if estimate.get("device", "cpu") == "gpu":
        return gpu_run_seconds(ep, estimate)
    return cpu_run_seconds(ep, estimate, measured)


def pretrain_seconds(plan: Plan) -> float:
    """The compare model's pre-training (0 for checkpoints, which come pre-trained)."""
    est = plan.grid.estimate
    model = plan.grid.model
    if model.get("kind") != "compare":
        return 0.0
    from .model import compare_spec

    _, pretrain = compare_spec(model)
    return pretrain.steps * est.get("pretrain_seconds_per_step", 0.0)


def plan_seconds(plan: Plan, measured: Optional[dict] = None) -> dict:
    """``{content_key: seconds of all its runs}`` for the unique runnable experiments."""
    measured = measured or {}
    est = plan.grid.estimate
    return {ep.content_key: ep.run_count * run_seconds(ep, est, measured.get(ep.content_key))
            for ep in plan.unique()}


__all__ = ["flow", "gpu_step_flops", "plan_seconds", "pretrain_seconds", "run_seconds", "steps_of"]
