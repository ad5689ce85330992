"""Where PETAL goes in a Q-Former (InstructBLIP and BLIP-2, bare or inside the full model).

* DMA: every ``layer.attention.attention`` (self) and ``layer.crossattention.attention`` (cross)
  multi-head attention is wrapped by :class:`~petal.layers.dma.DMAAttention`; the shared factors live
  once at ``<qformer>.petal_dma``. A forward pre-hook on each Q-Former layer copies the layer's own
  ``query_length`` argument (bound by name from the layer's signature) into a keyword the DMA wrappers
  read, so callers pass nothing extra.
* AIM: the Q-Former's input-embedding module (InstructBLIP ``embeddings``, BLIP-2 ``layernorm``) is
  wrapped by :class:`~petal.layers.aim.AIMEmbeddings`.
* Multi-instruction AIM (InstructBLIP): ``qformer_input_ids`` / ``input_ids`` of shape
  ``(batch, num_instructions, seq_len)`` (mask likewise) run every instruction through the Q-Former and
  merge the outputs with ``<qformer>.petal_instruction_merge`` (softmax-learned or uniform weights), in
  ``forward`` and in ``generate`` (through ``get_image_features``).
* Fast paths (``PetalConfig.fast_paths``): :mod:`petal.models.qformer_fast`.

What the model layer reads of ``transformers`` is checked first (:func:`petal.compat.check_qformer`).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..compat import bound_argument, check_qformer
from ..config import PetalConfig
from ..layers.aim import AIMEmbeddings, InstructionMerge, expand_instructions
from ..layers.batch_context import CrossBatchContext
from ..layers.dma import QUERY_LENGTH_KWARG, DMAAttention, DMAShared, QueryTransform
from .qformer_fast import MethodOverride, install_fast_paths

QFORMER_CLASSES = ("InstructBlipQFormerModel", "Blip2QFormerModel")
COMPOSITE_CLASSES = ("InstructBlipForConditionalGeneration", "Blip2ForConditionalGeneration")


def is_qformer(module: nn.Module) -> bool:
    return type(module).__name__ in QFORMER_CLASSES


def find_qformer(model: nn.Module) -> tuple[str, nn.Module]:
    """(attribute path, Q-Former module) of a supported model."""
    if is_qformer(model):
        return "", model
    qformer = getattr(model, "qformer", None)
    if qformer is None or not is_qformer(qformer):
        raise ValueError(f"{type(model).__name__} has no Q-Former at .qformer")
    return "qformer", qformer


def _encoder_width(qformer: nn.Module) -> Optional[int]:
    has_cross = any(getattr(layer, "has_cross_attention", False) for layer in qformer.encoder.layer)
    return qformer.config.encoder_hidden_size if has_cross else None


def _query_length_hook(module, args, kwargs):
    kwargs[QUERY_LENGTH_KWARG] = bound_argument(module, args, kwargs, "query_length")
    return args, kwargs


def _wrap(parent: nn.Module, name: str, wrapper_factory) -> nn.Module:
    wrapper = wrapper_factory(getattr(parent, name))
    setattr(parent, name, wrapper)
    return wrapper


def patch_qformer(qformer: nn.Module, cfg: PetalConfig, state, prefix: str) -> None:
    """Insert DMA / AIM into ``qformer`` in place; record hooks and added modules in ``state``."""
    check_qformer(qformer)
    dma, aim = cfg.dma, cfg.aim
    hidden = qformer.config.hidden_size
    dot = f"{prefix}." if prefix else ""
    if dma.enabled:
        shared = DMAShared(hidden, _encoder_width(qformer), dma.rank, dma.core, dma.dynamic_lambda,
                           dma.per_modality_lambda, dma.trainable_lambda)
        qformer.petal_dma = shared
        state.added.append(f"{dot}petal_dma")
        for i, layer in enumerate(qformer.encoder.layer):
            blocks = []
            if "self" in dma.attentions:
                blocks.append((layer.attention, "self"))
            if "cross" in dma.attentions and getattr(layer, "has_cross_attention", False):
                blocks.append((layer.crossattention, "cross"))
            for block, kind in blocks:
                _wrap(block, "attention", lambda base, kind=kind: DMAAttention(
                    base, shared, kind, dma.projections, dma.gamma, dma.dropout, dma.dropout_per_projection,
                    cfg.fast_paths))
            if dma.cross_batch_context and getattr(layer, "has_cross_attention", False):
                _wrap(layer, "crossattention", lambda base: CrossBatchContext(
                    base, dma.cross_batch_context, lambda: _instructions_in_flight(qformer)))
            state.handles.append(layer.register_forward_pre_hook(_query_length_hook, with_kwargs=True))
            if dma.query_transform:
                wrapper = _wrap(qformer.encoder.layer, str(i), lambda base: QueryTransform(
                    base, hidden, dma.query_transform_init_std))
                state.handles.append(wrapper.capture_hook())
    if aim.enabled:
        site = "embeddings" if hasattr(qformer, "embeddings") else "layernorm"
        _wrap(qformer, site, lambda base: AIMEmbeddings(
            base, hidden, aim.num_experts, aim.expert_rank, aim.gate, aim.residual_weight,
            aim.expert_weight, aim.identity_init))
        if hasattr(qformer, "embeddings"):  # InstructBLIP: instructions exist, so can be several
            qformer.petal_instruction_merge = InstructionMerge(aim.max_instructions, aim.instruction_merge)
            state.added.append(f"{dot}petal_instruction_merge")
            state.handles.append(qformer.register_forward_pre_hook(_multi_pre_hook, with_kwargs=True))
            state.handles.append(qformer.register_forward_hook(_multi_post_hook))
    state.handles.extend(install_fast_paths(qformer, cfg.fast_paths))


# ---------------------------------------------------------------------- multi-instruction


def _instructions_in_flight(qformer: nn.Module) -> Optional[int]:
    """Instructions per image of the Q-Former forward under way (``None`` outside multi-instruction)."""
    merge = getattr(qformer, "petal_instruction_merge", None)
    return None if merge is None else merge.__dict__.get("_active")


QFORMER_ARGS = ("input_ids", "attention_mask", "position_ids", "query_embeds", "encoder_hidden_states",
                 "encoder_attention_mask")


def _multi_pre_hook(qformer, args, kwargs):
    merge: InstructionMerge = qformer.petal_instruction_merge
    kwargs = dict(kwargs)
    for name, value in zip(QFORMER_ARGS, args):
        kwargs.setdefault(name, value)
    ids = kwargs.get("input_ids")
    pending = merge.__dict__.pop("_pending", None)
    if ids is None or (ids.dim() != 3 and pending is None):
        merge.__dict__["_active"] = None
        return None
    if ids.dim() == 2:  # flattened by the InstructBLIP pre-hook: (B, n·L)
        ids = ids.reshape(ids.shape[0], pending, -1)
    out = expand_instructions(ids, kwargs.get("attention_mask"), kwargs.get("query_embeds"),
                              kwargs.get("encoder_hidden_states"), kwargs.get("encoder_attention_mask"))
    names = ("input_ids", "attention_mask", "query_embeds", "encoder_hidden_states", "encoder_attention_mask")
    kwargs.update(zip(names, out[:5]))
    kwargs.pop("position_ids", None)
    merge.__dict__["_active"] = out[5]
    return (), kwargs


def _multi_post_hook(qformer, args, output):
    merge: InstructionMerge = qformer.petal_instruction_merge
    n = merge.__dict__.pop("_active", None)
    if not n:
        if merge.logits is None or not (merge.logits.requires_grad and torch.is_grad_enabled()):
            return None
        # one instruction: its weight softmax([l0]) is exactly 1, but the logits must still take part,
        # with their true (zero) gradient: distributed training waits for a gradient of every parameter
        n = 1
    hidden = output.last_hidden_state
    merged = merge.merge(hidden.reshape(hidden.shape[0] // n, n, *hidden.shape[1:]))
    output.last_hidden_state = merged
    output.pooler_output = merged[:, 0, :]
    return output


def _flatten_instructions(model: nn.Module, ids, mask):
    """InstructBLIP builds the Q-Former mask from 2-D ids: (B, n, L) ids (and mask) become (B, n·L), and
    ``n`` is handed to the Q-Former's multi-instruction pre-hook. 2-D ids pass through."""
    if ids is None or ids.dim() != 3:
        return ids, mask
    B, n, L = ids.shape
    if mask is not None and mask.shape != ids.shape:
        raise ValueError(f"qformer_attention_mask must have the shape of qformer_input_ids "
                         f"{tuple(ids.shape)}, got {tuple(mask.shape)}")
    model.qformer.petal_instruction_merge.__dict__["_pending"] = n
    return ids.reshape(B, n * L), None if mask is None else mask.reshape(B, n * L)


def _composite_multi_pre_hook(model, args, kwargs):
    """``forward`` with (B, n, L) ``qformer_input_ids``."""
    ids = kwargs.get("qformer_input_ids")
    if ids is None and len(args) > 1:
        raise ValueError("pass qformer_input_ids by keyword when patched with petal (multi-instruction AIM)")
    if ids is None or ids.dim() != 3:
        return None
    kwargs = dict(kwargs)
    kwargs["qformer_input_ids"], kwargs["qformer_attention_mask"] = _flatten_instructions(
        model, ids, kwargs.get("qformer_attention_mask"))
    return args, kwargs


def _image_features(model, pixel_values, qformer_input_ids=None, qformer_attention_mask=None, *args,
                    **kwargs):
    """``get_image_features`` (what ``generate`` calls) with (B, n, L) ``qformer_input_ids``."""
    ids, mask = _flatten_instructions(model, qformer_input_ids, qformer_attention_mask)
    return type(model).get_image_features(model, pixel_values, ids, mask, *args, **kwargs)


def patch_composite(model: nn.Module, cfg: PetalConfig, state) -> None:
    prefix, qformer = find_qformer(model)
    patch_qformer(qformer, cfg, state, prefix)
    if hasattr(qformer, "petal_instruction_merge"):
        state.handles.append(model.register_forward_pre_hook(_composite_multi_pre_hook, with_kwargs=True))
        if hasattr(type(model), "get_image_features"):  # generate() reaches the Q-Former through it
            state.handles.append(MethodOverride(model, "get_image_features", _image_features))


__all__ = ["COMPOSITE_CLASSES", "QFORMER_CLASSES", "find_qformer", "is_qformer", "patch_composite",
           "patch_qformer"]
