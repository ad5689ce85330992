"""A training run's checkpoints and its metrics log, written so that no crash loses or garbles them.

Checkpoints live in ``<output_dir>/checkpoints/step-XXXXXXXX/``: the adapter (``petal.save_adapter``
layout for a patched model; ``model.safetensors`` of the trainable weights otherwise), plus
``training_state.pt`` (optimizer, scheduler, the RNG state of every process, position in the data) and
``trainer_state.json``. Each is written into a temporary directory and renamed into place (an atomic
rename), so a crash or a full disk mid-write leaves the previous checkpoint as it was.

``metrics.jsonl`` holds one JSON object per optimizer step (and per evaluation); on resume it is cut
back to the checkpoint's step (a new file renamed over the old) before new lines are appended.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Optional, Union

import torch

from .adapter_io import is_sharded

CHECKPOINT_DIR = "checkpoints"
METRICS_FILE = "metrics.jsonl"
_STEP_DIR = re.compile(r"^step-(\d{8})$")


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


def read_trainer_state(checkpoint: Path) -> dict:
    """``trainer_state.json`` of a checkpoint (an unreadable one is a ``ValueError`` naming it)."""
    file = Path(checkpoint) / "trainer_state.json"
    try:
        info = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{file} is not readable JSON ({e}); remove {checkpoint} to resume from an "
                         "earlier checkpoint") from None
    if not isinstance(info, dict) or not isinstance(info.get("step"), int):
        raise ValueError(f"{file} has no integer 'step'; remove {checkpoint} to resume from an earlier one")
    return info


def model_state(model: torch.nn.Module) -> dict:
    """The trainable tensors to checkpoint: a petal adapter's, else every weight that requires grad.
    Under FSDP2 this gathers the shards (call it on every process)."""
    import petal

    from .adapter_io import adapter_state_dict, unwrap

    if petal.is_patched(unwrap(model)):
        return adapter_state_dict(model)
    if is_sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True,
                                                                    ignore_frozen_params=True))
    return {n: p.detach() for n, p in unwrap(model).named_parameters() if p.requires_grad}


def optimizer_state(model: torch.nn.Module, optimizer) -> dict:
    """The optimizer's state dict; under FSDP2 gathered into full tensors (call it on every process)."""
    if not is_sharded(model):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True,
                                                                               cpu_offload=True))


def load_optimizer_state(model: torch.nn.Module, optimizer, state: dict) -> None:
    if not is_sharded(model):
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))


def save_model_state(model: torch.nn.Module, path: Path, state: Optional[dict] = None) -> None:
    """Write the trainable state (``state``, or :func:`model_state` of ``model``) into ``path``."""
    import petal

    from .adapter_io import unwrap, write_adapter

    inner = unwrap(model)
    state = model_state(model) if state is None else state
    if petal.is_patched(inner):
        write_adapter(inner, path, state)
        return
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    save_file({n: t.cpu().contiguous() for n, t in state.items()}, str(path / "model.safetensors"),
              metadata={"format": "pt"})


def load_model_state(model: torch.nn.Module, path: Path) -> None:
    import petal

    from .adapter_io import unwrap

    inner = unwrap(model)
    if petal.is_patched(inner):
        petal.load_adapter(model, path)
        return
    from safetensors.torch import load_file

    file = path / "model.safetensors"
    try:
        saved = load_file(str(file))
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
        raise ValueError(f"{file} is not a readable safetensors file ({type(e).__name__}: {e})") from None
    params = dict(inner.named_parameters())
    unknown = sorted(set(saved) - set(params))
    if unknown:
        raise ValueError(f"{path} holds weights this model does not have: {unknown[:5]}")
    if is_sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(model, saved, options=StateDictOptions(full_state_dict=True, strict=False))
        return
    with torch.no_grad():
        for name, value in saved.items():
            params[name].copy_(value)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def write_checkpoint(output_dir: Union[str, Path], step: int, model: torch.nn.Module, optimizer, scheduler,
                     position: dict, settings, keep: int, extra: Optional[dict] = None,
                     rng: Optional[list] = None, states: Optional[tuple] = None) -> Path:
    """Write ``step-XXXXXXXX`` atomically: everything goes into a temporary directory that is renamed
    into place only when complete; then checkpoints beyond the newest ``keep`` are removed.

    ``rng``: the RNG states of every process (default: this one's); ``states``: ``(model state,
    optimizer state)`` gathered beforehand on every process (FSDP2), else read from ``model``/``optimizer``.
    """
    root = checkpoint_root(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    weights, optim = states if states is not None else (None, optimizer.state_dict())
    try:
        tmp.mkdir()
        save_model_state(model, tmp / "adapter", weights)
        torch.save({"optimizer": optim, "scheduler": scheduler.state_dict(),
                    "rng": rng if rng is not None else [rng_state()], "position": position},
                   tmp / "training_state.pt")
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


def read_training_state(checkpoint: Path) -> dict:
    file = Path(checkpoint) / "training_state.pt"
    try:
        state = torch.load(file, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - a truncated pickle raises several kinds
        raise ValueError(f"{file} is not readable ({type(e).__name__}: {e}); remove {checkpoint} to resume "
                         "from an earlier checkpoint") from None
    if isinstance(state.get("rng"), dict):  # checkpoints written before the per-process RNG list
        state["rng"] = [state["rng"]]
    return state


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


def clean_temporaries(output_dir: Union[str, Path]) -> None:
    root = checkpoint_root(output_dir)
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith((".tmp-step-", ".old-step-")):
                shutil.rmtree(p, ignore_errors=True)


def append_metrics(output_dir: Union[str, Path], entry: dict) -> None:
    with open(Path(output_dir) / METRICS_FILE, "a") as f:
        f.write(json.dumps(entry) + "\n")


def truncate_metrics(output_dir: Union[str, Path], step: int) -> None:
    """Keep the lines of ``metrics.jsonl`` up to ``step`` (those a resume from ``step`` would write
    again are dropped): a new file is written and renamed over the old one, so a crash keeps either."""
    path = Path(output_dir) / METRICS_FILE
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a crash
            continue
        if isinstance(entry, dict) and isinstance(entry.get("step"), int) and entry["step"] <= step:
            kept.append(line + "\n")
    tmp = path.with_name(f".{METRICS_FILE}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.writelines(kept)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


__all__ = ["CHECKPOINT_DIR", "METRICS_FILE", "append_metrics", "checkpoint_root", "clean_temporaries",
           "latest_checkpoint", "list_checkpoints", "load_model_state", "load_optimizer_state", "model_state",
           "optimizer_state", "read_trainer_state", "read_training_state", "rng_state", "save_model_state",
           "set_rng_state", "truncate_metrics", "write_checkpoint"]
