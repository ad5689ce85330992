"""A sweep run's trained state between its training and its test evaluation: the trainable parameters and
every buffer of the patched model (what training can change), in one safetensors file written atomically."""

from __future__ import annotations

from pathlib import Path

import torch

from .results import write_bytes


def save_state(model: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import save

    from ..adapter_io import adapter_state_dict

    tensors = {n: t.cpu().clone() for n, t in adapter_state_dict(model).items()}
    tensors.update({n: b.detach().cpu().clone() for n, b in model.named_buffers()})
    write_bytes(path, save(tensors, metadata={"format": "pt"}))


def load_state(model: torch.nn.Module, path: Path) -> None:
    """Copy a saved state into ``model`` (patched as the run was); ``ValueError`` naming the file if it is
    unreadable or does not fit."""
    from ..adapter_io import read_safetensors

    saved = read_safetensors(path)
    params, buffers = dict(model.named_parameters()), dict(model.named_buffers())
    missing = sorted(n for n, p in params.items() if p.requires_grad and n not in saved)
    unknown = sorted(set(saved) - set(params) - set(buffers))
    if missing or unknown:
        raise ValueError(f"{path} does not fit the run's model: missing {missing[:5]}, unknown {unknown[:5]}")
    with torch.no_grad():
        for name, value in saved.items():
            target = params[name] if name in params else buffers[name]
            if target.shape != value.shape:
                raise ValueError(f"{path}: {name} has shape {tuple(value.shape)}, the model's "
                                 f"{tuple(target.shape)}")
            target.copy_(value)


__all__ = ["load_state", "save_state"]
