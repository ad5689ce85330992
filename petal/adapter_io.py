"""Adapter files in the layout ``peft`` users know: ``adapter_config.json`` + ``adapter_model.safetensors``.

Only the trainable state is saved (the parameters that require grad after ``patch``). Loading checks
the config the file was saved under against the model's and names every difference.
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


def adapter_state_dict(model: nn.Module) -> dict:
    _state(model)
    out, seen = {}, set()
    for name, p in model.named_parameters():
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            out[name] = p.detach().contiguous()
    return out


def save_adapter(model: nn.Module, path: Union[str, Path]) -> Path:
    from safetensors.torch import save_file

    state = _state(model)
    if any(getattr(m, "merged", False) for m in model.modules()):
        raise ValueError("save_adapter needs an unmerged model (call petal.unmerge first)")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT, "peft_type": "PETAL", "base_model_class": type(model).__name__,
            "config": state.config.to_dict()}
    (path / CONFIG_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    tensors = {k: v.cpu() for k, v in adapter_state_dict(model).items()}
    save_file(tensors, str(path / WEIGHTS_NAME), metadata={"format": "pt"})
    return path


def load_adapter(model: nn.Module, path: Union[str, Path]) -> nn.Module:
    """Copy a saved adapter into a model patched with the same config (in place; returns the model)."""
    from safetensors.torch import load_file

    state = _state(model)
    path = Path(path)
    if not (path / CONFIG_NAME).is_file() or not (path / WEIGHTS_NAME).is_file():
        raise FileNotFoundError(f"{path} must hold {CONFIG_NAME} and {WEIGHTS_NAME}")
    meta = json.loads((path / CONFIG_NAME).read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path / CONFIG_NAME} is not a petal adapter (format {meta.get('format')!r})")
    saved_cfg = PetalConfig.from_dict(meta["config"])
    diff = state.config.differences(saved_cfg)
    if diff:
        raise ValueError(f"adapter at {path} was saved under another config than the model is patched with "
                         f"(model != file): {'; '.join(diff)}")
    if meta.get("base_model_class") != type(model).__name__:
        raise ValueError(f"adapter at {path} was saved from a {meta.get('base_model_class')}, "
                         f"this model is a {type(model).__name__}")
    if any(getattr(m, "merged", False) for m in model.modules()):
        raise ValueError("load_adapter needs an unmerged model (call petal.unmerge first)")
    saved = load_file(str(path / WEIGHTS_NAME))
    own = adapter_state_dict(model)
    missing, unexpected = sorted(set(own) - set(saved)), sorted(set(saved) - set(own))
    if missing or unexpected:
        raise ValueError(f"adapter at {path} does not fit this model: missing {missing[:5]}"
                         f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                         f"{'...' if len(unexpected) > 5 else ''}")
    params = dict(model.named_parameters())
    for name, value in saved.items():
        if value.shape != own[name].shape:
            raise ValueError(f"adapter tensor {name} has shape {tuple(value.shape)}, "
                             f"the model's has {tuple(own[name].shape)}")
    with torch.no_grad():
        for name, value in saved.items():
            params[name].copy_(value)
    return model
