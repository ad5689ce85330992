"""``patch`` / ``unpatch`` / ``merge`` / ``unmerge`` / ``trainable_parameters`` (DESIGN §3)."""

from __future__ import annotations

import dataclasses
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Optional, Union

import torch
from torch import nn

from . import compat
from .config import PetalConfig, check_fast_paths
from .layers.base import AdapterWrapper
from .models.qformer import COMPOSITE_CLASSES, QFORMER_CLASSES, patch_composite, patch_qformer

T5_CLASSES = ("T5ForConditionalGeneration",)
SUPPORTED = COMPOSITE_CLASSES + QFORMER_CLASSES + T5_CLASSES
STATE_ATTR = "_petal_state"


@dataclass
class PatchState:
    """What ``patch`` did to a model, so ``unpatch`` can undo it (no tensors are kept)."""

    config: PetalConfig
    family: str
    handles: list = field(default_factory=list)
    added: list = field(default_factory=list)
    attributes: list = field(default_factory=list)  # plain (non-module) attributes set on the model
    requires_grad: dict = field(default_factory=dict)
    wrapped: list = field(default_factory=list)


def _family(model: nn.Module) -> str:
    name = type(model).__name__
    if name in COMPOSITE_CLASSES:
        return "composite"
    if name in QFORMER_CLASSES:
        return "qformer"
    if name in T5_CLASSES:
        return "t5"
    raise ValueError(f"petal.patch does not support {name}; supported models are {', '.join(SUPPORTED)} "
                     "(T5 also as the language model inside InstructBlipForConditionalGeneration)")


def _lm_is_t5(model: nn.Module) -> bool:
    return getattr(getattr(model.config, "text_config", None), "model_type", None) == "t5"


def _tuner_layers(model: nn.Module):
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:  # peft is optional unless the lora preset is used
        return []
    return [(n, m) for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)]


def _wrappers(model: nn.Module):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, AdapterWrapper)]


def is_patched(model: nn.Module) -> bool:
    return hasattr(model, STATE_ATTR) or bool(_wrappers(model)) or bool(_tuner_layers(model))


def _state(model: nn.Module) -> PatchState:
    state = getattr(model, STATE_ATTR, None)
    if state is None:
        raise ValueError(f"this {type(model).__name__} is not patched by petal (call petal.patch first)")
    return state


def _check_method(cfg: PetalConfig, family: str, model: nn.Module) -> None:
    name = type(model).__name__
    adapts = cfg.adapts
    if cfg.method == "petal" and family == "t5":
        raise ValueError(f"method 'petal' adapts a Q-Former and {name} has none; use a vl-pet-* preset")
    if cfg.method == "lora" and adapts == "qformer" and family == "t5":
        raise ValueError(f"method 'lora' targets the Q-Former's q/k/v and {name} has none (LoraSettings."
                         "target='t5', the preset lora-t5, adapts a T5)")
    if adapts == "qformer" and family == "t5":
        raise ValueError(f"method {cfg.method!r} adapts a Q-Former and {name} has none")
    if adapts == "t5" and family == "qformer":
        raise ValueError(f"method {cfg.method!r} adapts a T5 language model and {name} has none")
    wants_t5 = adapts == "t5" or (cfg.method == "petal" and cfg.vl_pet is not None)
    if wants_t5 and family == "composite" and not _lm_is_t5(model):
        lm = getattr(getattr(model.config, "text_config", None), "model_type", "?")
        raise ValueError(f"VL-PET needs a T5 language model, but this {name} has a {lm!r} one")


def patch(model: nn.Module, config: Optional[PetalConfig] = None, *,
          fast_paths: Union[str, bool, None] = None) -> nn.Module:
    """Insert the adapters of ``config`` (default: the paper's PETAL) into ``model`` in place.

    Afterwards only adapter parameters require grad; frozen weights keep their storage. Returns ``model``.
    ``fast_paths`` (``"auto"``, ``True`` or ``False``) overrides ``config.fast_paths``: where the CPU fast
    paths replace parts of the frozen Q-Former (see ``PetalConfig``). The installed ``transformers`` must
    be in the supported range and have what the patched modules use (:mod:`petal.compat`).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if config is None:
        config = PetalConfig()
    if not isinstance(config, PetalConfig):
        raise TypeError(f"config must be a petal.PetalConfig or None, got {type(config).__name__}")
    if fast_paths is not None:
        check_fast_paths("fast_paths", fast_paths)
        config = dataclasses.replace(config, fast_paths=fast_paths)
    config.validate()
    if is_patched(model):
        raise ValueError(f"this {type(model).__name__} is already patched; call petal.unpatch(model) "
                         "before patching it again")
    family = _family(model)
    _check_method(config, family, model)
    compat.check_version()

    state = PatchState(config=config, family=family,
                       requires_grad={n: p.requires_grad for n, p in model.named_parameters()})
    model.requires_grad_(False)
    try:
        _apply(model, config, family, state)
    except Exception:
        object.__setattr__(model, STATE_ATTR, state)
        unpatch(model)
        raise
    for _, wrapper in _wrappers(model):
        _place(wrapper, wrapper.base_layer)
    for _, wrapper in _wrappers(model) + _tuner_layers(model):
        for name, sub in wrapper.named_modules():  # new modules follow the mode of what they wrap
            if not name.startswith("base_layer"):
                sub.training = wrapper.base_layer.training
    for name in state.added:
        parent_name = name.rpartition(".")[0]
        module = model.get_submodule(name)
        parent = model.get_submodule(parent_name) if parent_name else model
        _place(module, parent, skip="")
        module.train(parent.training)
    state.wrapped = [n for n, _ in _wrappers(model)] + [n for n, _ in _tuner_layers(model)]
    object.__setattr__(model, STATE_ATTR, state)
    return model


def _place(module: nn.Module, near: nn.Module, skip: str = "base_layer") -> None:
    """Put a new adapter module (all but its ``skip`` child) on the device of the weights it adapts
    (accelerate's placement; the meta device too); float32 masters for a half-precision base (the
    layers cast at use), the base dtype otherwise. Its parameters become trainable."""
    ref = next(near.parameters(), None)
    if ref is not None:
        dtype = ref.dtype if ref.dtype in (torch.float32, torch.float64) else torch.float32
        for name, child in module.named_children():
            if name != skip:
                child.to(device=ref.device, dtype=dtype)
        for name, p in list(module._parameters.items()):
            if p is not None and (p.device != ref.device or p.dtype != dtype):
                module._parameters[name] = nn.Parameter(p.detach().to(device=ref.device, dtype=dtype))
    for name, p in module.named_parameters():
        if not name.startswith(skip + "."):
            p.requires_grad_(True)


def _apply(model: nn.Module, cfg: PetalConfig, family: str, state: PatchState) -> None:
    from .models import baselines

    if cfg.method == "petal":
        if family == "composite":
            patch_composite(model, cfg, state)
            if cfg.sib.enabled:
                from .losses import attach_sib

                attach_sib(model, cfg.sib, state)
        else:
            patch_qformer(model, cfg, state, "")
    elif cfg.method == "lora":
        had_peft_config = hasattr(model, "peft_config")
        baselines.patch_lora(model, cfg.lora)
        if not had_peft_config and hasattr(model, "peft_config"):  # set by peft's injection
            state.attributes.append("peft_config")
    elif cfg.method == "head":
        baselines.patch_head(model, cfg.head)
    elif cfg.method == "full":
        baselines.patch_full(model)
    elif cfg.method == "maple":
        from .models.maple import patch_maple

        patch_maple(model, cfg.maple, state)
    elif cfg.method == "llama-adapter":
        from .models.llama_adapter import patch_llama_adapter

        patch_llama_adapter(model, cfg.llama_adapter)
    elif cfg.method == "vl-adapter":
        from .models.t5 import patch_vl_adapter

        patch_vl_adapter(model, cfg.vl_adapter)
    if cfg.vl_pet is not None and (cfg.method == "vl-pet" or family != "qformer"):
        from .models.t5 import patch_t5

        compat.check_t5(model)
        patch_t5(model, cfg.vl_pet)


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def unpatch(model: nn.Module) -> nn.Module:
    """Remove everything ``patch`` inserted: the original modules return (same objects, same storage).

    A merged model is unmerged first (see ``merge`` for what that restores).
    """
    state = _state(model)
    if any(getattr(m, "merged", False) for _, m in _wrappers(model) + _tuner_layers(model)):
        unmerge(model)
    for handle in state.handles:
        handle.remove()
    while True:  # outermost first: a wrapper may hold other wrappers in its base_layer
        layers = _wrappers(model) + [(n, m) for n, m in _tuner_layers(model) if hasattr(m, "base_layer")]
        if not layers:
            break
        names = [n for n, _ in layers]
        outer = [(n, m) for n, m in layers if not any(n.startswith(o + ".") for o in names if o != n)]
        for name, module in outer:
            _replace(model, name, module.base_layer)
    for name in state.attributes:
        if hasattr(model, name):
            object.__delattr__(model, name)
    for name in reversed(state.added):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        if hasattr(parent, child):
            delattr(parent, child)
    for name, p in model.named_parameters():
        if name in state.requires_grad:
            p.requires_grad_(state.requires_grad[name])
    object.__delattr__(model, STATE_ATTR)
    return model


def _mergeable(model: nn.Module) -> list:
    return ([m for _, m in _wrappers(model) if m.mergeable]
            + [m for _, m in _tuner_layers(model) if hasattr(m, "merge")])


def merge(model: nn.Module) -> nn.Module:
    """Fold the static DMA (or LoRA) updates, and Γ, into the frozen weights (computed in float64).

    Rows whose update is not static (the dynamic λ term, or a modality whose λ differs from the one
    folded in) keep running the difference through the fused op, so a merged model's outputs equal
    the unmerged model's up to float rounding. ``unmerge`` subtracts (and divides by Γ) in float64:
    the restored weights are within one rounding of the merged weights' dtype of the originals.
    Merging is for inference: a merged layer skips the rank-R dropout. Non-static modules (AIM, the
    official query transform, VL-PET gates) stay active as they are.
    """
    _state(model)
    layers = _mergeable(model)
    if not layers:
        raise ValueError("nothing to merge: this patch has no static weight update (DMA or LoRA)")
    for layer in layers:
        layer.merge()
    return model


def unmerge(model: nn.Module) -> nn.Module:
    _state(model)
    layers = [m for m in _mergeable(model) if getattr(m, "merged", False)]
    if not layers:
        raise ValueError("nothing to unmerge: the model is not merged")
    for layer in layers:
        layer.unmerge()
    return model


# ---------------------------------------------------------------------- parameter table


class TrainableParameters:
    """Trainable parameters grouped by name pattern (layer indices folded to ``*``).

    ``total`` counts every parameter of the patched model once (adapters included, as ``peft`` counts);
    it is the one denominator of every trainable percentage petal prints (:attr:`percent`)."""

    def __init__(self, model: nn.Module):
        self.groups: OrderedDict[str, list] = OrderedDict()
        self.trainable = 0
        self.total = 0
        seen = set()
        for name, p in model.named_parameters():
            if id(p) in seen:
                continue
            seen.add(id(p))
            self.total += p.numel()
            if not p.requires_grad:
                continue
            self.trainable += p.numel()
            key = re.sub(r"\.\d+\.", ".*.", name)
            row = self.groups.setdefault(key, [0, 0])
            row[0] += 1
            row[1] += p.numel()

    @property
    def count(self) -> int:
        return self.trainable

    @property
    def percent(self) -> float:
        """Trainable share of all parameters, in percent."""
        return 100.0 * self.trainable / self.total if self.total else 0.0

    @property
    def percent_text(self) -> str:
        """:attr:`percent` to three significant digits: ``17.8%``, ``0.0251%``."""
        return f"{self.percent:.3g}%"

    def __int__(self) -> int:
        return self.trainable

    def table(self) -> str:
        width = max([len(k) for k in self.groups] + [9])
        lines = [f"{'parameter':<{width}}  {'tensors':>7}  {'count':>12}"]
        lines += [f"{k:<{width}}  {n:>7}  {c:>12,}" for k, (n, c) in self.groups.items()]
        lines.append(f"trainable: {self.trainable:,} of {self.total:,} ({self.percent_text})")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def __repr__(self) -> str:
        return f"TrainableParameters(trainable={self.trainable}, total={self.total})"


def trainable_parameters(model: nn.Module) -> TrainableParameters:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return TrainableParameters(model)
