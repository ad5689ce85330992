"""Adapter files in the layout ``peft`` users know: ``adapter_config.json`` + ``adapter_model.safetensors``.

Only the trainable state is saved (the parameters that require grad after ``patch``). Loading checks
the config the file was saved under against the model's and names every difference; a file that is not
a petal adapter (truncated, corrupt, another format) is a ``ValueError`` naming the file.

The model may be wrapped for distributed training (DDP, FSDP): the adapter is read from and written to
the wrapped module, and under FSDP2 the sharded tensors are gathered (``torch.distributed.checkpoint``
state dicts) — call :func:`save_adapter` / :func:`load_adapter` on every process then. With several
processes only rank 0 writes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Union

import torch
from torch import nn

from .config import PetalConfig
from .patch import _state

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
FORMAT = "petal-adapter/1"


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside DDP / FSDP(1) / ``torch.compile`` wrappers (FSDP2 shards in place: itself)."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def is_sharded(model: nn.Module) -> bool:
    """FSDP2 (``fully_shard``): parameters are DTensor shards. FSDP1's flat parameters are refused."""
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel
        from torch.distributed.tensor import DTensor
    except ImportError:
        return False
    if any(isinstance(m, FullyShardedDataParallel) for m in model.modules()):
        raise ValueError("petal adapters support FSDP2 (torch's fully_shard; accelerate's fsdp_version: 2), "
                         "not FSDP1's flat parameters: set fsdp_version: 2 in the accelerate config")
    return any(isinstance(p, DTensor) for p in model.parameters())


def _trainable_names(model: nn.Module) -> list[str]:
    names, seen = [], set()
    for name, p in model.named_parameters():
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            names.append(name)
    return names


def adapter_state_dict(model: nn.Module) -> dict:
    """The trainable tensors by name. Under FSDP they are gathered into full CPU tensors, which is a
    collective (every process calls it; rank 0 gets the tensors, the others an empty dict)."""
    inner = unwrap(model)
    _state(inner)
    if not is_sharded(model):
        params = dict(inner.named_parameters())
        return {n: params[n].detach().contiguous() for n in _trainable_names(inner)}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    wanted = set(_trainable_names(inner))
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True,
                                                                ignore_frozen_params=True))
    return {n: v for n, v in full.items() if n in wanted}


def save_adapter(model: nn.Module, path: Union[str, Path]) -> Path:
    from .distributed import world

    inner = unwrap(model)
    _state(inner)
    if any(getattr(m, "merged", False) for m in inner.modules()):
        raise ValueError("save_adapter needs an unmerged model (call petal.unmerge first)")
    tensors = adapter_state_dict(model)
    if world()[0] != 0:  # several processes hold the same adapter: one writes it
        return Path(path)
    return write_adapter(inner, path, tensors)


def write_adapter(model: nn.Module, path: Union[str, Path], tensors: dict) -> Path:
    """The adapter files of patched ``model`` holding ``tensors`` (its :func:`adapter_state_dict`)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT, "peft_type": "PETAL", "base_model_class": type(model).__name__,
            "config": _state(model).config.to_dict()}
    (path / CONFIG_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    save_file({k: v.cpu().contiguous() for k, v in tensors.items()}, str(path / WEIGHTS_NAME),
              metadata={"format": "pt"})
    return path


def read_adapter_config(path: Union[str, Path]) -> tuple[dict, PetalConfig]:
    """``adapter_config.json`` of an adapter directory: its JSON and the config in it. A missing file is a
    ``FileNotFoundError``, an invalid one a ``ValueError``; both name the file."""
    path = Path(path)
    missing = [n for n in (CONFIG_NAME, WEIGHTS_NAME) if not (path / n).is_file()]
    if missing:
        raise FileNotFoundError(f"adapter {path} must hold {CONFIG_NAME} and {WEIGHTS_NAME}; "
                                f"missing {', '.join(missing)}")
    file = path / CONFIG_NAME
    try:
        meta = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{file} is not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ValueError(f"{file} is not a petal adapter config (format {got!r}, expected {FORMAT!r})")
    try:
        config = PetalConfig.from_dict(meta["config"])
        config.validate()
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ValueError(f"{file} holds no valid petal config ({type(e).__name__}: {e})") from None
    return meta, config


def read_adapter_weights(path: Union[str, Path]) -> dict:
    """The tensors of ``adapter_model.safetensors`` (a truncated or corrupt file is a ``ValueError``)."""
    return read_safetensors(Path(path) / WEIGHTS_NAME)


def read_safetensors(file: Union[str, Path]) -> dict:
    """The tensors of a safetensors file; a truncated or corrupt one is a ``ValueError`` naming it."""
    from safetensors.torch import load_file

    try:
        return load_file(str(file))
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types (and OSError, ...)
        raise ValueError(f"{file} is not a readable safetensors file ({type(e).__name__}: {e})") from None


def load_adapter(model: nn.Module, path: Union[str, Path]) -> nn.Module:
    """Copy a saved adapter into a model patched with the same config (in place; returns the model)."""
    inner = unwrap(model)
    state = _state(inner)
    path = Path(path)
    meta, saved_cfg = read_adapter_config(path)
    diff = state.config.differences(saved_cfg)
    if diff:
        raise ValueError(f"adapter at {path} was saved under another config than the model is patched with "
                         f"(model != file): {'; '.join(diff)}")
    if meta.get("base_model_class") != type(inner).__name__:
        raise ValueError(f"adapter at {path} was saved from a {meta.get('base_model_class')}, "
                         f"this model is a {type(inner).__name__}")
    if any(getattr(m, "merged", False) for m in inner.modules()):
        raise ValueError("load_adapter needs an unmerged model (call petal.unmerge first)")
    saved = read_adapter_weights(path)
    params = dict(inner.named_parameters())
    own = _trainable_names(inner)
    missing, unexpected = sorted(set(own) - set(saved)), sorted(set(saved) - set(own))
    if missing or unexpected:
        raise ValueError(f"adapter at {path} does not fit this model: missing {missing[:5]}"
                         f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                         f"{'...' if len(unexpected) > 5 else ''}")
    for name, value in saved.items():  # a DTensor shard's shape is the full tensor's
        if value.shape != params[name].shape:
            raise ValueError(f"adapter tensor {name} in {path / WEIGHTS_NAME} has shape "
                             f"{tuple(value.shape)}, the model's has {tuple(params[name].shape)}")
    if is_sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(model, saved, options=StateDictOptions(full_state_dict=True, strict=False))
        return model
    with torch.no_grad():
        for name, value in saved.items():
            params[name].copy_(value)
    return model
