"""The training loop: ``accelerate`` (device placement, DDP/FSDP, mixed precision), AdamW, linear warm-up +
cosine decay, gradient clipping, periodic evaluation, and checkpoints that never lose data.

Checkpoints live in ``<output_dir>/checkpoints/step-XXXXXXXX/``: the adapter (``petal.save_adapter``
layout for a patched model; ``model.safetensors`` of the trainable weights otherwise), plus
``training_state.pt`` (optimizer, scheduler, RNG, position in the data) and ``trainer_state.json``.
Each is written into a temporary directory and renamed into place (an atomic rename), so a crash or a
full disk mid-write leaves the previous checkpoint as it was. ``resume=True`` continues from the newest
complete checkpoint with the same data order, so an interrupted run ends where an uninterrupted one
would. Ctrl-C saves a checkpoint, then re-raises ``KeyboardInterrupt``.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional, Union

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .data.collate import model_inputs

CHECKPOINT_DIR = "checkpoints"
_STEP_DIR = re.compile(r"^step-(\d{8})$")


@dataclass
class TrainSettings:
    epochs: float = 5.0
    max_steps: Optional[int] = None       # optimizer steps; overrides epochs
    batch_size: int = 16
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
    progress: bool = True

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
        if self.weight_decay < 0 or self.max_grad_norm <= 0:
            raise ValueError(f"TrainSettings needs weight_decay >= 0 and max_grad_norm > 0, got "
                             f"{self.weight_decay!r} and {self.max_grad_norm!r}")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(f"TrainSettings.mixed_precision must be 'no', 'fp16' or 'bf16', got "
                             f"{self.mixed_precision!r}")


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


class EpochSampler(Sampler):
    """A shuffled order that depends only on (seed, epoch), so a resumed run replays the same batches."""

    def __init__(self, size: int, seed: int):
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=g).tolist())

    def __len__(self) -> int:
        return self.size


# ---------------------------------------------------------------------- checkpoints


def checkpoint_root(output_dir: Union[str, Path]) -> Path:
    return Path(output_dir) / CHECKPOINT_DIR


def list_checkpoints(output_dir: Union[str, Path]) -> list[Path]:
    """Complete checkpoints, oldest first (temporary directories of interrupted writes are ignored)."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name)
             and (p / "trainer_state.json").is_file()]
    return sorted(found, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))


def latest_checkpoint(output_dir: Union[str, Path]) -> Optional[Path]:
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def save_model_state(model: torch.nn.Module, path: Path) -> None:
    """The trainable state: a petal adapter for a patched model, else the trainable weights."""
    import petal

    if petal.is_patched(model):
        petal.save_adapter(model, path)
        return
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    state = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})


def load_model_state(model: torch.nn.Module, path: Path) -> None:
    import petal

    if petal.is_patched(model):
        petal.load_adapter(model, path)
        return
    from safetensors.torch import load_file

    saved = load_file(str(path / "model.safetensors"))
    params = dict(model.named_parameters())
    unknown = sorted(set(saved) - set(params))
    if unknown:
        raise ValueError(f"{path} holds weights this model does not have: {unknown[:5]}")
    with torch.no_grad():
        for name, value in saved.items():
            params[name].copy_(value)


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def write_checkpoint(output_dir: Union[str, Path], step: int, model: torch.nn.Module, optimizer, scheduler,
                     position: dict, settings: TrainSettings, keep: int,
                     extra: Optional[dict] = None) -> Path:
    """Write ``step-XXXXXXXX`` atomically: everything goes into a temporary directory that is renamed
    into place only when complete; then checkpoints beyond the newest ``keep`` are removed."""
    root = checkpoint_root(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        tmp.mkdir()
        save_model_state(model, tmp / "adapter")
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "rng": _rng_state(), "position": position}, tmp / "training_state.pt")
        info = {"step": step, **position, "settings": asdict(settings), **(extra or {})}
        (tmp / "trainer_state.json").write_text(json.dumps(info, indent=2) + "\n")
        _fsync_dir(tmp)
        if final.exists():  # same step saved again (e.g. Ctrl-C right after a periodic save)
            old = root / f".old-step-{step:08d}-{os.getpid()}"
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old)
        else:
            tmp.rename(final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(output_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _fsync_dir(path: Path) -> None:
    for p in [*path.rglob("*"), path]:
        try:
            fd = os.open(p, os.O_RDONLY)
        except OSError:
            continue
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)


def _clean_temporaries(output_dir: Union[str, Path]) -> None:
    root = checkpoint_root(output_dir)
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith((".tmp-step-", ".old-step-")):
                shutil.rmtree(p, ignore_errors=True)


# ---------------------------------------------------------------------- the loop


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.dim() < 2 or name.endswith(".bias") else decay).append(p)
    if not decay and not no_decay:
        raise ValueError("the model has no trainable parameters (patch it with petal.patch first?)")
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def train_model(model: torch.nn.Module, dataset: Dataset, collator: Callable, settings: TrainSettings,
                output_dir: Union[str, Path, None] = None, resume: bool = False,
                eval_fn: Optional[Callable[[torch.nn.Module], dict]] = None,
                on_step: Optional[Callable[[int, dict], None]] = None,
                log: Callable[[str], None] = print) -> TrainResult:
    """Train the parameters of ``model`` that require grad; returns the losses and evaluations.

    ``eval_fn(model) -> dict`` runs every ``settings.eval_every`` steps and at the end. ``on_step(step,
    logs)`` is called after every optimizer step (a ``KeyboardInterrupt`` raised there is handled like
    Ctrl-C). With ``output_dir`` checkpoints are written (see the module docstring) and ``metrics.jsonl``
    records the losses and evaluations.
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm
    from transformers import get_cosine_schedule_with_warmup

    if len(dataset) == 0:
        raise ValueError("the training data set is empty")
    if resume and output_dir is None:
        raise ValueError("resume=True needs an output_dir to resume from")
    start_time = time.perf_counter()
    accelerator = Accelerator(mixed_precision=settings.mixed_precision, step_scheduler_with_optimizer=False,
                              gradient_accumulation_steps=settings.gradient_accumulation_steps)
    set_seed(settings.seed)
    optimizer = torch.optim.AdamW(_param_groups(model, settings.weight_decay), lr=settings.lr)
    sampler = EpochSampler(len(dataset), settings.seed)
    loader = DataLoader(dataset, batch_size=settings.batch_size, sampler=sampler, collate_fn=collator,
                        drop_last=len(dataset) >= settings.batch_size)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    steps_per_epoch = max(1, len(loader) // settings.gradient_accumulation_steps)
    total = settings.max_steps or max(1, math.ceil(settings.epochs * steps_per_epoch))
    warmup = settings.warmup_steps if settings.warmup_steps is not None else max(1, total // 20)
    scheduler = get_cosine_schedule_with_warmup(optimizer, min(warmup, total), total)
    result = TrainResult(total_steps=total)
    step, epoch, batches_done = 0, 0, 0

    if output_dir is not None:
        output_dir = Path(output_dir)
        earlier = latest_checkpoint(output_dir)
        if not resume and earlier is not None:
            raise ValueError(f"{output_dir} holds checkpoints of an earlier run ({earlier.name}); resume it "
                             "(resume=True, --resume) or choose another output directory")
        if accelerator.is_main_process:
            output_dir.mkdir(parents=True, exist_ok=True)
            _clean_temporaries(output_dir)
            if not resume and (output_dir / "metrics.jsonl").exists():
                (output_dir / "metrics.jsonl").unlink()
    if resume:
        ckpt = latest_checkpoint(output_dir)
        if ckpt is None:
            log(f"no checkpoint in {checkpoint_root(output_dir)}; starting from scratch")
        else:
            load_model_state(accelerator.unwrap_model(model), ckpt / "adapter")
            state = torch.load(ckpt / "training_state.pt", map_location="cpu", weights_only=False)
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            _set_rng_state(state["rng"])
            step, epoch, batches_done = (state["position"][k] for k in ("step", "epoch", "batches_done"))
            result.resumed_from = step
            log(f"resumed from {ckpt} (step {step})")

    committed = {"step": step, "epoch": epoch, "batches_done": batches_done}  # as of the last optimizer step

    def position() -> dict:
        return dict(committed)

    def checkpoint(extra=None) -> None:
        if output_dir is not None and accelerator.is_main_process:
            write_checkpoint(output_dir, step, accelerator.unwrap_model(model), optimizer, scheduler,
                             position(), settings, settings.keep_checkpoints, extra)
        accelerator.wait_for_everyone()

    def record(entry: dict) -> None:
        if output_dir is not None and accelerator.is_main_process:
            with open(output_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(entry) + "\n")

    def run_eval() -> None:
        if eval_fn is None:
            return
        model.eval()
        metrics = eval_fn(accelerator.unwrap_model(model))
        model.train()
        result.evals.append((step, metrics))
        record({"step": step, "eval": metrics})

    show = settings.progress and accelerator.is_main_process
    progress = tqdm(total=total, initial=step, disable=not show, desc="train", dynamic_ncols=True)
    model.train()
    last_saved = step if result.resumed_from is not None else None
    try:
        while step < total:
            sampler.set_epoch(epoch)
            epoch_loader = accelerator.skip_first_batches(loader, batches_done) if batches_done else loader
            for batch in epoch_loader:
                with accelerator.accumulate(model):
                    out = model(**model_inputs(batch))
                    loss = out.loss
                    if loss is None:
                        raise ValueError("the model returned no loss: the batches need labels")
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        accelerator.clip_grad_norm_([p for p in model.parameters() if p.requires_grad],
                                                    settings.max_grad_norm)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                batches_done += 1
                if not accelerator.sync_gradients:
                    continue
                scheduler.step()
                step += 1
                committed.update(step=step, epoch=epoch, batches_done=batches_done)
                logs = {"loss": float(loss.detach()), "lr": scheduler.get_last_lr()[0]}
                for extra in ("lm_loss", "sib_loss"):
                    value = out.get(extra) if hasattr(out, "get") else None
                    if value is not None:
                        logs[extra] = float(value)
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
                if step >= total:
                    break
            else:
                epoch, batches_done = epoch + 1, 0
                committed.update(epoch=epoch, batches_done=0)
    except KeyboardInterrupt:
        progress.close()
        if output_dir is not None and last_saved != step:
            log(f"interrupted at step {step}: saving a checkpoint")
            checkpoint({"interrupted": True})
        raise
    progress.close()
    model.eval()
    run_eval()
    checkpoint({"final": True})
    result.step = step
    result.seconds = time.perf_counter() - start_time
    return result


__all__ = ["EpochSampler", "TrainResult", "TrainSettings", "latest_checkpoint", "list_checkpoints",
           "load_model_state", "save_model_state", "train_model", "write_checkpoint"]
