"""The training loop: ``accelerate`` (device placement, DDP/FSDP, mixed precision), AdamW, linear warm-up +
cosine decay, gradient clipping, periodic evaluation, and checkpoints that never lose data
(:mod:`petal.checkpoints`).

Several processes (``torchrun``, ``accelerate launch``) train one model: ``batch_size`` is per process,
each global batch of ``batch_size × processes`` records is split across them
(:class:`~petal.distributed.GlobalBatchSampler`), the LM loss is the mean over the global batch's target
tokens and the SIB loss draws its negatives from the global batch, so N processes take the steps one
process takes with the global batch. Only the main process writes; logged losses are global means.

``resume=True`` continues from the newest complete checkpoint with the same data order, so an
interrupted run ends where an uninterrupted one would. Ctrl-C saves a checkpoint (with one process;
several keep their newest periodic one), then re-raises ``KeyboardInterrupt``.
"""

from __future__ import annotations

import math
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Union

import torch
from torch.utils.data import DataLoader, Dataset

from . import distributed as dist
from .checkpoints import (
    CHECKPOINT_DIR,
    METRICS_FILE,
    append_metrics,
    checkpoint_root,
    clean_temporaries,
    latest_checkpoint,
    list_checkpoints,
    load_model_state,
    load_optimizer_state,
    model_state,
    optimizer_state,
    read_trainer_state,
    read_training_state,
    rng_state,
    save_model_state,
    set_rng_state,
    truncate_metrics,
    write_checkpoint,
)
from .data.collate import model_inputs
from .distributed import GlobalBatchSampler


@dataclass
class TrainSettings:
    epochs: float = 5.0
    max_steps: Optional[int] = None       # optimizer steps; overrides epochs
    batch_size: int = 16                  # per process
    lr: float = 2e-5
    weight_decay: float = 0.02
    warmup_steps: Optional[int] = None    # None: 5% of the steps
    max_grad_norm: float = 1.0
    gradient_accumulation_steps: int = 1
    seed: int = 0
    eval_every: int = 0                   # 0: only at the end (when an eval function is given)
    checkpoint_every: int = 0             # 0: only at the end (when an output directory is given)
    keep_checkpoints: int = 2
    mixed_precision: str = "no"           # "no", "fp16", "bf16"
    progress: Optional[bool] = None       # a progress bar; None: when stderr is a terminal

    def __post_init__(self):
        def positive(name, value, integer=True):
            ok = (isinstance(value, int) if integer else isinstance(value, (int, float))) and value > 0
            if isinstance(value, bool) or not ok:
                kind = "integer" if integer else "number"
                raise ValueError(f"TrainSettings.{name} must be a positive {kind}, got {value!r}")
        positive("batch_size", self.batch_size)
        positive("gradient_accumulation_steps", self.gradient_accumulation_steps)
        positive("lr", self.lr, integer=False)
        positive("epochs", self.epochs, integer=False)
        positive("keep_checkpoints", self.keep_checkpoints)
        if self.max_steps is not None:
            positive("max_steps", self.max_steps)
        for name in ("eval_every", "checkpoint_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"TrainSettings.{name} must be an integer >= 0, got {value!r}")
        warmup = self.warmup_steps
        if warmup is not None and (isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0):
            raise ValueError(f"TrainSettings.warmup_steps must be None or an integer >= 0, got {warmup!r}")
        for name in ("weight_decay", "max_grad_norm"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"TrainSettings.{name} must be a number, got {value!r}")
        if self.weight_decay < 0 or self.max_grad_norm <= 0:
            raise ValueError(f"TrainSettings needs weight_decay >= 0 and max_grad_norm > 0, got "
                             f"{self.weight_decay!r} and {self.max_grad_norm!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"TrainSettings.seed must be an integer >= 0, got {self.seed!r}")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(f"TrainSettings.mixed_precision must be 'no', 'fp16' or 'bf16', got "
                             f"{self.mixed_precision!r}")
        if self.progress not in (None, True, False):
            raise ValueError(f"TrainSettings.progress must be None, True or False, got {self.progress!r}")

    def show_progress(self) -> bool:
        return sys.stderr.isatty() if self.progress is None else self.progress


@dataclass
class TrainResult:
    step: int = 0
    total_steps: int = 0
    losses: list = field(default_factory=list)      # (step, loss) per optimizer step
    evals: list = field(default_factory=list)       # (step, metrics dict)
    resumed_from: Optional[int] = None
    seconds: float = 0.0

    @property
    def last_loss(self) -> Optional[float]:
        return self.losses[-1][1] if self.losses else None


# ---------------------------------------------------------------------- before anything is written


def check_output_dir(output_dir: Union[str, Path, None], resume: bool, settings: TrainSettings,
                     num_processes: int = 1) -> Optional[Path]:
    """The checkpoint a run would resume from, or ``None``; raises ``ValueError`` when the run must be
    refused (a fresh run over an earlier run's checkpoints; a resume whose checkpoint was written with
    another batch layout). Reads only."""
    if output_dir is None:
        if resume:
            raise ValueError("resume=True needs an output_dir to resume from")
        return None
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"output directory {output_dir} exists and is not a directory")
    earlier = latest_checkpoint(output_dir)
    if earlier is None:
        return None
    if not resume:
        raise ValueError(f"{output_dir} holds checkpoints of an earlier run ({earlier.name}); resume it "
                         "(resume=True, --resume) or choose another output directory")
    info = read_trainer_state(earlier)
    saved = info.get("settings", {})
    now = {"batch_size": settings.batch_size, "num_processes": num_processes,
           "gradient_accumulation_steps": settings.gradient_accumulation_steps}
    was = {"batch_size": saved.get("batch_size"), "num_processes": info.get("num_processes", 1),
           "gradient_accumulation_steps": saved.get("gradient_accumulation_steps")}
    diff = [f"{k} {was[k]} -> {now[k]}" for k in now if was[k] is not None and was[k] != now[k]]
    if diff:
        raise ValueError(f"{earlier} was written with another batch layout ({', '.join(diff)}); resuming "
                         "would not replay the same data: resume with the run's own settings")
    return earlier


def check_data(size: int, settings: TrainSettings, num_processes: int = 1,
               rank: int = 0) -> GlobalBatchSampler:
    """The sampler of a training set of ``size`` records, or a ``ValueError`` when its batches do not fit
    (fewer records than one global batch, fewer global batches than accumulation steps)."""
    if size == 0:
        raise ValueError("the training data set is empty")
    sampler = GlobalBatchSampler(size, settings.seed, settings.batch_size, num_processes, rank)
    K = settings.gradient_accumulation_steps
    if sampler.num_batches < K:
        raise ValueError(f"gradient accumulation over {K} batches needs at least {K} global batches per "
                         f"epoch; the training data gives {sampler.num_batches}")
    return sampler


# ---------------------------------------------------------------------- the loop


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.dim() < 2 or name.endswith(".bias") else decay).append(p)
    if not decay and not no_decay:
        raise ValueError("the model has no trainable parameters (patch it with petal.patch first?)")
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _accelerator(mixed_precision: str):
    """An ``Accelerator`` for this run. accelerate keeps one state per process and refuses another mixed
    precision than the first Accelerator's; a process may train several times (pre-training, then
    tuning), so that state is reset first, as ``transformers.Trainer`` does (the process group stays)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    dist.process_state()
    AcceleratorState._reset_state()
    return Accelerator(mixed_precision=mixed_precision, cpu=dist.use_cpu_backend(),
                       step_scheduler_with_optimizer=False)


def _unused_parameter_check(model: torch.nn.Module) -> None:
    """DDP waits for a gradient of every trainable parameter; name those that got none (its own error
    names indices, at the next step)."""
    from .adapter_io import unwrap

    missing = [n for n, p in unwrap(model).named_parameters() if p.requires_grad and p.grad is None]
    if missing:
        raise ValueError(f"{len(missing)} trainable parameter(s) received no gradient in the first step, "
                         f"which distributed training cannot synchronise: {', '.join(missing[:5])}")


def train_model(model: torch.nn.Module, dataset: Dataset, collator: Callable, settings: TrainSettings,
                output_dir: Union[str, Path, None] = None, resume: bool = False,
                eval_fn: Optional[Callable[[torch.nn.Module], dict]] = None,
                on_step: Optional[Callable[[int, dict], None]] = None,
                log: Callable[[str], None] = print, distributed: bool = True,
                desc: str = "train") -> TrainResult:
    """Train the parameters of ``model`` that require grad; returns the losses and evaluations.

    ``eval_fn(model) -> dict`` runs every ``settings.eval_every`` steps and at the end (on every process;
    its result is recorded by the main one). ``on_step(step, logs)`` is called after every optimizer
    step (a ``KeyboardInterrupt`` raised there is handled like Ctrl-C). With ``output_dir`` checkpoints
    are written (see :mod:`petal.checkpoints`) and ``metrics.jsonl`` records the losses and evaluations.
    ``distributed=False`` trains in this process alone even when it belongs to a process group (the
    embedded base's pre-training, done by one process while the others wait). ``desc`` labels the
    progress bar.
    """
    from accelerate.utils import send_to_device, set_seed
    from tqdm.auto import tqdm
    from transformers import get_cosine_schedule_with_warmup

    start_time = time.perf_counter()
    accelerator = _accelerator(settings.mixed_precision)
    rank, world = (accelerator.process_index, accelerator.num_processes) if distributed else (0, 1)
    main, several = rank == 0, world > 1
    sampler = check_data(len(dataset), settings, world, rank)
    ckpt = check_output_dir(output_dir, resume, settings, world)
    K = settings.gradient_accumulation_steps
    steps_per_epoch = sampler.num_batches // K  # leftover batches at an epoch's end are skipped
    total = settings.max_steps or max(1, math.ceil(settings.epochs * steps_per_epoch))
    warmup = settings.warmup_steps if settings.warmup_steps is not None else max(1, total // 20)

    set_seed(settings.seed + rank)  # dropout differs across processes, repeats across runs
    optimizer = torch.optim.AdamW(_param_groups(model, settings.weight_decay), lr=settings.lr)
    if distributed:
        model, optimizer = accelerator.prepare(model, optimizer)
    else:
        model = model.to(accelerator.device)
        optimizer = accelerator.prepare_optimizer(optimizer)
    raw = accelerator.unwrap_model(model)
    loader = DataLoader(dataset, batch_size=settings.batch_size, sampler=sampler, collate_fn=collator)
    scheduler = get_cosine_schedule_with_warmup(optimizer, min(warmup, total), total)
    result = TrainResult(total_steps=total)
    step, epoch, batches_done = 0, 0, 0

    if output_dir is not None:
        output_dir = Path(output_dir)
        if main:
            output_dir.mkdir(parents=True, exist_ok=True)
            clean_temporaries(output_dir)
            if ckpt is None and (output_dir / METRICS_FILE).exists():
                (output_dir / METRICS_FILE).unlink()
    if resume and ckpt is None:
        log(f"no checkpoint in {checkpoint_root(output_dir)}; starting from scratch")
    elif ckpt is not None:
        load_model_state(model, ckpt / "adapter")
        state = read_training_state(ckpt)
        load_optimizer_state(model, optimizer, state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        rngs = state["rng"]
        set_rng_state(rngs[rank] if rank < len(rngs) else rngs[0])
        step, epoch, batches_done = (state["position"][k] for k in ("step", "epoch", "batches_done"))
        result.resumed_from = step
        if main:
            truncate_metrics(output_dir, step)
        log(f"resumed from {ckpt} (step {step})")

    committed = {"step": step, "epoch": epoch, "batches_done": batches_done}  # as of the last optimizer step

    def checkpoint(extra=None) -> None:
        if output_dir is None:
            return
        states = (model_state(model), optimizer_state(model, optimizer)) if several else None
        rngs = dist.gather_objects(rng_state()) if several else [rng_state()]
        if main:
            write_checkpoint(output_dir, step, raw, optimizer, scheduler,
                             {**committed, "num_processes": world}, settings, settings.keep_checkpoints,
                             extra, rng=rngs, states=states)
        if several:
            dist.barrier()

    def record(entry: dict) -> None:
        if output_dir is not None and main:
            append_metrics(output_dir, entry)

    def run_eval() -> None:
        if eval_fn is None:
            return
        model.eval()
        metrics = eval_fn(raw)
        model.train()
        result.evals.append((step, metrics))
        record({"step": step, "eval": metrics})

    def forward_backward(batch: dict) -> torch.Tensor:
        """One micro-batch: backward, and this process's share of the step's logged losses
        ``[loss, lm_loss, sib_loss]`` (NaN where the model reports none)."""
        inputs = model_inputs(send_to_device(batch, accelerator.device))
        with accelerator.autocast():
            out = model(**inputs)
        loss = out.loss
        if loss is None:
            raise ValueError("the model returned no loss: the batches need labels")
        parts = out if hasattr(out, "get") else {}
        lm, sib, sib_term = parts.get("lm_loss"), parts.get("sib_loss"), parts.get("sib_term")
        lm_share = float(lm) if lm is not None else math.nan
        if several:
            # the LM loss is a mean over this process's target tokens: weigh it by its share of the
            # global batch's tokens, times the processes because DDP averages gradients; the SIB term
            # is already the global batch's (its negatives are gathered from every process)
            tokens = dist.label_tokens(raw, inputs.get("labels"))
            all_tokens = float(dist.sum_across(torch.tensor(float(tokens), device=accelerator.device)))
            share = tokens / max(all_tokens, 1.0)
            lm_part = loss if sib_term is None else loss - sib_term
            loss = lm_part * (share * world) + (0.0 if sib_term is None else sib_term)
            lm_share = lm_share * share * world
        accelerator.backward(loss / K if K > 1 else loss)
        return torch.tensor([float(loss.detach()), lm_share, float(sib) if sib is not None else math.nan],
                            dtype=torch.float64)

    show = settings.show_progress() and main
    progress = tqdm(total=total, initial=step, disable=not show, desc=desc, dynamic_ncols=True,
                    file=sys.stderr)
    model.train()
    last_saved = step if result.resumed_from is not None else None
    try:
        while step < total:
            sampler.set_epoch(epoch, skip=batches_done)
            batches = iter(loader)
            while batches_done + K <= steps_per_epoch * K and step < total:
                sums = torch.zeros(3, dtype=torch.float64)
                for i in range(K):
                    sync = i == K - 1
                    with nullcontext() if sync else accelerator.no_sync(model):
                        sums += forward_backward(next(batches))
                if step == 0 and several:
                    _unused_parameter_check(model)
                accelerator.clip_grad_norm_([p for p in model.parameters() if p.requires_grad],
                                            settings.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                batches_done += K
                step += 1
                committed.update(step=step, epoch=epoch, batches_done=batches_done)
                sums = dist.sum_across(sums) if several else sums
                logs = _step_logs(sums, K * world, scheduler.get_last_lr()[0])
                result.losses.append((step, logs["loss"]))
                record({"step": step, **logs})
                progress.update(1)
                progress.set_postfix(loss=f"{logs['loss']:.4f}")
                if settings.eval_every and step % settings.eval_every == 0 and step < total:
                    run_eval()
                if settings.checkpoint_every and step % settings.checkpoint_every == 0 and step < total:
                    checkpoint()
                    last_saved = step
                if on_step is not None:
                    on_step(step, logs)
            if step < total:
                epoch, batches_done = epoch + 1, 0
                committed.update(epoch=epoch, batches_done=0)
    except KeyboardInterrupt:
        progress.close()
        if output_dir is not None and last_saved != step and not several:
            log(f"interrupted at step {step}: saving a checkpoint")
            checkpoint({"interrupted": True})
        elif output_dir is not None and several:
            # the processes were interrupted at different points: a checkpoint's collectives would pair
            # with whatever each one was doing, so the newest periodic checkpoint is the one to resume
            log(f"interrupted at step {step}: resume from the newest periodic checkpoint")
        raise
    progress.close()
    model.eval()
    run_eval()
    checkpoint({"final": True})
    result.step = step
    result.seconds = time.perf_counter() - start_time
    return result


def _step_logs(sums: torch.Tensor, count: int, lr: float) -> dict:
    """Losses of one optimizer step from ``[loss, lm_loss, sib_loss]`` summed over its ``count``
    (micro-batch, process) pairs: their means."""
    loss, lm, sib = (sums / count).tolist()
    logs = {"loss": loss, "lr": lr}
    logs.update({k: v for k, v in (("lm_loss", lm), ("sib_loss", sib)) if not math.isnan(v)})
    return logs


__all__ = ["CHECKPOINT_DIR", "GlobalBatchSampler", "TrainResult", "TrainSettings", "check_data",
           "check_output_dir", "latest_checkpoint", "list_checkpoints", "load_model_state",
           "save_model_state", "train_model", "write_checkpoint"]
