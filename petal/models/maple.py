"""Where MaPLe's prompts go in an InstructBLIP Q-Former (bare or inside the full model).

Hooks, no module replaced: a pre-hook on the Q-Former extends its ``attention_mask`` by the P prompt
positions; a hook on ``embeddings`` appends layer 0's prompts after the instruction tokens; a pre-hook
on each layer ``j < depth`` puts layer ``j``'s prompts in those positions (``j >= 1``) and, if the layer
has a cross-attention, appends its vision-side prompts to the image features (and attends to them);
a hook on the Q-Former removes the prompt positions from ``last_hidden_state``. The prompts and
couplings live at ``<qformer>.petal_maple``.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn

from ..baseline_config import MapleSettings
from ..layers.maple import MaplePrompts
from .qformer import QFORMER_ARGS, find_qformer

_LAYER_ARGS = ("hidden_states", "attention_mask", "encoder_hidden_states", "encoder_attention_mask")


def _attending(mask: Tensor, extra: int) -> Tensor:
    """``extra`` more key positions that every query attends to, in the convention of ``mask``."""
    fill = torch.ones if mask.dtype == torch.bool or mask.dim() == 2 else torch.zeros  # additive: 0
    return torch.cat([mask, fill((*mask.shape[:-1], extra), dtype=mask.dtype, device=mask.device)], dim=-1)


def _qformer_pre_hook(maple: MaplePrompts, module, args, kwargs):
    kwargs = dict(kwargs)
    for name, value in zip(QFORMER_ARGS, args):
        kwargs[name] = value
    if kwargs.get("attention_mask") is not None:
        kwargs["attention_mask"] = _attending(kwargs["attention_mask"], maple.length)
    return (), kwargs


def _embeddings_hook(maple: MaplePrompts, module, args, output: Tensor) -> Tensor:
    return torch.cat([output, maple.text(0, output.shape[0], output)], dim=1)


def _layer_pre_hook(maple: MaplePrompts, index: int, cross: bool, module, args, kwargs):
    kwargs = dict(kwargs)
    for name, value in zip(_LAYER_ARGS, args):
        kwargs[name] = value
    h = kwargs["hidden_states"]
    if index > 0:
        kwargs["hidden_states"] = torch.cat([h[:, :-maple.length], maple.text(index, h.shape[0], h)], dim=1)
    image = kwargs.get("encoder_hidden_states")
    if cross and image is not None:
        prompts = maple.vision(index, image.shape[0], image)
        kwargs["encoder_hidden_states"] = torch.cat([image, prompts], dim=1)
        if kwargs.get("encoder_attention_mask") is not None:
            kwargs["encoder_attention_mask"] = _attending(kwargs["encoder_attention_mask"], maple.length)
    return (), kwargs


def _strip_hook(maple: MaplePrompts, module, args, kwargs, output):
    if isinstance(output, tuple):
        return (output[0][:, :-maple.length], *output[1:])
    output.last_hidden_state = output.last_hidden_state[:, :-maple.length]
    return output


def patch_maple(model: nn.Module, cfg: MapleSettings, state) -> None:
    prefix, qformer = find_qformer(model)
    if not hasattr(qformer, "embeddings"):
        raise ValueError(f"method 'maple' puts prompts beside the instruction tokens of an InstructBLIP "
                         f"Q-Former; {type(qformer).__name__} (BLIP-2) reads no instruction")
    layers = list(qformer.encoder.layer)
    depth = min(cfg.depth, len(layers))
    cross = [j for j in range(depth) if getattr(layers[j], "has_cross_attention", False)]
    qformer.petal_maple = maple = MaplePrompts(depth, cfg.prompt_length, qformer.config.hidden_size,
                                               qformer.config.encoder_hidden_size, cross, cfg.init_std)
    state.added.append(f"{prefix}.petal_maple" if prefix else "petal_maple")
    hook = functools.partial
    state.handles.append(qformer.register_forward_pre_hook(hook(_qformer_pre_hook, maple), with_kwargs=True))
    state.handles.append(qformer.embeddings.register_forward_hook(hook(_embeddings_hook, maple)))
    for j in range(depth):
        state.handles.append(layers[j].register_forward_pre_hook(
            hook(_layer_pre_hook, maple, j, j in cross), with_kwargs=True))
    state.handles.append(qformer.register_forward_hook(hook(_strip_hook, maple), with_kwargs=True))


__all__ = ["patch_maple"]
