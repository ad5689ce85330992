"""VL-PET for T5: where the modules go.

* every encoder ``T5LayerSelfAttention`` and ``T5LayerFF`` becomes a gated-adapter sublayer:
  ``out = x + s_g · dropout(G ⊙ (h + s_a·u))`` with ``h`` the sublayer's own output before its residual
  (attention after ``o``; ``DenseReluDense(layer_norm(x))``), the dropout at the sublayer's own rate;
* every decoder ``T5LayerCrossAttention``'s value projection ``EncDecAttention.v`` gets a parallel
  adapter ``V = W_v E + up(φ(down(E)))``.

VL-Adapter (the VL-PET table's baseline) wraps the sublayers' inner modules instead
(:func:`patch_vl_adapter`), so the sublayer code of ``transformers`` runs unchanged around it.

The wrappers keep the call signature and return structure of the module they replace, so caching,
``generate()`` and gradient checkpointing (``T5Block`` is the checkpointed unit) work unchanged; hooks on
the replaced sublayer (``output_attentions`` recording) still fire.

The official T5 scripts also train the encoder's T5LayerNorm weights (``--unfreeze_encoder_layer_norms``,
25 × d_model parameters on T5-base); ``patch_t5`` adds adapter modules only and does not.
"""

from __future__ import annotations

from typing import Optional

from torch import nn
from transformers.models.t5.modeling_t5 import (
    T5LayerCrossAttention,
    T5LayerFF,
    T5LayerSelfAttention,
    T5PreTrainedModel,
    T5Stack,
)

from ..baseline_config import VLAdapterSettings
from ..layers.base import AdapterWrapper, run_forward_hooks
from ..layers.dma import DelegatingWrapper
from ..layers.gated_adapter import GatedAdapter, ParallelAdapter, ParallelAdapterLinear, adapter_dtype
from ..vl_pet_config import VLPetConfig


class _GatedSublayer(AdapterWrapper):
    def __init__(self, base_layer: nn.Module, config: VLPetConfig):
        super().__init__(base_layer)
        w = base_layer.layer_norm.weight
        self.vl_pet = GatedAdapter(w.shape[0], config, device=w.device, dtype=adapter_dtype(w.dtype))
        self.dropout = config.dropout

    def dropout_rate(self) -> float:
        return self.base_layer.dropout.p if self.dropout is None else self.dropout


class T5GatedSelfAttention(_GatedSublayer):
    """Replaces ``T5LayerSelfAttention``; returns ``(hidden_states, position_bias, attn_weights)``."""

    def forward(self, hidden_states, attention_mask=None, position_bias=None, **kwargs):
        base = self.base_layer
        # the cache passes through under whatever name T5Block gives it (past_key_values; cache from 5.24)
        attention_output, position_bias, attn_weights = base.SelfAttention(
            base.layer_norm(hidden_states),
            mask=attention_mask,
            position_bias=position_bias,
            **kwargs,
        )
        out = self.vl_pet(hidden_states, attention_output, self.dropout_rate())
        output = (out, position_bias, attn_weights)
        if base._forward_hooks:
            call_kwargs = dict(kwargs, attention_mask=attention_mask, position_bias=position_bias)
            output = run_forward_hooks(base, (hidden_states,), call_kwargs, output)
        return output


class T5GatedFF(_GatedSublayer):
    """Replaces ``T5LayerFF``; returns the hidden states."""

    def forward(self, hidden_states):
        base = self.base_layer
        h = base.DenseReluDense(base.layer_norm(hidden_states))
        out = self.vl_pet(hidden_states, h, self.dropout_rate())
        if base._forward_hooks:
            out = run_forward_hooks(base, (hidden_states,), {}, out)
        return out


def find_t5(model: nn.Module, t5_module: str) -> tuple[str, T5PreTrainedModel]:
    """``(prefix, t5)``: the model itself when it is a T5, else its submodule at ``t5_module``."""
    if _is_t5(model):
        return "", model
    try:
        inner = model.get_submodule(t5_module)
    except AttributeError:
        inner = None
    if inner is not None and _is_t5(inner):
        return t5_module + ".", inner
    found = type(inner).__name__ if inner is not None else "nothing"
    raise TypeError(
        f"patching a T5 supports T5ForConditionalGeneration, T5Model, T5EncoderModel, and models holding one "
        f"at t5_module={t5_module!r} (InstructBlipForConditionalGeneration.language_model); got "
        f"{type(model).__name__} (at {t5_module!r}: {found})")


def _is_t5(module: nn.Module) -> bool:
    return isinstance(module, T5PreTrainedModel) and isinstance(getattr(module, "encoder", None), T5Stack)


def patch_t5(model: nn.Module, cfg: VLPetConfig) -> list[str]:
    """Insert VL-PET modules into the T5 ``model`` (or the T5 inside it) in place.

    Returns the qualified names of the wrapped modules. Does not change ``requires_grad`` anywhere.
    """
    if not isinstance(cfg, VLPetConfig):
        raise TypeError(f"cfg must be a VLPetConfig, got {type(cfg).__name__}")
    cfg.validate()
    prefix, t5 = find_t5(model, cfg.t5_module)
    already = [name for name, m in t5.named_modules() if isinstance(m, AdapterWrapper)]
    if already:
        raise ValueError(f"model is already patched (found adapter wrappers such as {prefix}{already[0]}); "
                         "call petal.unpatch(model) first")
    d = t5.config.d_model
    if cfg.variant != "down" and d % cfg.num_heads:
        raise ValueError(f"VLPetConfig.variant={cfg.variant!r} splits d_model={d} into "
                         f"num_heads={cfg.num_heads} up heads; d_model must be divisible by num_heads")

    targets: list[tuple[str, nn.Module]] = []
    for name, module in t5.encoder.named_modules(prefix="encoder"):
        if cfg.encoder_self_attention and isinstance(module, T5LayerSelfAttention):
            targets.append((name, T5GatedSelfAttention(module, cfg)))
        elif cfg.encoder_ffn and isinstance(module, T5LayerFF):
            targets.append((name, T5GatedFF(module, cfg)))
    decoder: Optional[T5Stack] = getattr(t5, "decoder", None)
    if cfg.decoder_cross_attention_value and decoder is not None:
        for name, module in decoder.named_modules(prefix="decoder"):
            if isinstance(module, T5LayerCrossAttention):
                targets.append((f"{name}.EncDecAttention.v",
                                ParallelAdapterLinear(module.EncDecAttention.v, cfg.decoder_adapter_dim)))

    for name, wrapper in targets:
        wrapper.train(wrapper.base_layer.training)  # a model patched in eval mode stays in eval mode
        parent_name, _, child = name.rpartition(".")
        setattr(t5.get_submodule(parent_name), child, wrapper)
    return [prefix + name for name, _ in targets]


# ---------------------------------------------------------------------- VL-Adapter


class SerialAdapter(DelegatingWrapper):
    """Wraps what a T5 sublayer computes before its dropout and residual (``SelfAttention``,
    ``EncDecAttention``, ``DenseReluDense``): ``y ← y + up(gelu_new(down(y)))`` on its (first) output."""

    def __init__(self, base_layer: nn.Module, d: int, width: int):
        super().__init__(base_layer)
        w = next(base_layer.parameters())
        self.adapter = ParallelAdapter(d, width, d, device=w.device, dtype=adapter_dtype(w.dtype),
                                       zero_init=False)

    def forward(self, *args, **kwargs):
        out = self.base_layer(*args, **kwargs)
        y = out[0] if isinstance(out, tuple) else out
        y = y + self.adapter(y.to(self.adapter.down.weight.dtype)).to(y.dtype)
        return (y, *out[1:]) if isinstance(out, tuple) else y


_VL_ADAPTER_SITES = (  # (setting, sublayer class, the child the adapter follows, encoder or decoder)
    ("encoder_self_attention", T5LayerSelfAttention, "SelfAttention", "encoder"),
    ("encoder_ffn", T5LayerFF, "DenseReluDense", "encoder"),
    ("decoder_self_attention", T5LayerSelfAttention, "SelfAttention", "decoder"),
    ("decoder_cross_attention", T5LayerCrossAttention, "EncDecAttention", "decoder"),
    ("decoder_ffn", T5LayerFF, "DenseReluDense", "decoder"),
)


def patch_vl_adapter(model: nn.Module, cfg: VLAdapterSettings) -> list[str]:
    """Insert VL-Adapter's bottleneck adapters into the T5 ``model`` (or the T5 inside it) in place;
    returns the qualified names of the wrapped modules."""
    prefix, t5 = find_t5(model, cfg.t5_module)
    d, wrapped = t5.config.d_model, []
    for setting, sublayer, child, stack_name in _VL_ADAPTER_SITES:
        stack = getattr(t5, stack_name, None)
        if not getattr(cfg, setting) or stack is None:
            continue
        for name, module in stack.named_modules(prefix=stack_name):
            if isinstance(module, sublayer):
                setattr(module, child, SerialAdapter(getattr(module, child), d, cfg.reduction_dim))
                wrapped.append(f"{prefix}{name}.{child}")
    return wrapped


__all__ = ["SerialAdapter", "T5GatedFF", "T5GatedSelfAttention", "find_t5", "patch_t5", "patch_vl_adapter"]
