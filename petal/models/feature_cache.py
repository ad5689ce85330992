"""Cache the frozen vision encoder's outputs: computed once per image, reused in every later epoch.

    cache = enable_feature_cache(model)      # InstructBLIP / BLIP-2, patched or not
    ... train, evaluate, generate ...
    cache.remove()                           # the model's own forward again

The vision encoder's ``forward`` is replaced on the instance (no module is added or renamed, so state
dicts, adapters and ``save_pretrained`` are untouched). Each image of a batch is keyed by a hash of its
pixel tensor's bytes (and dtype and shape), so two records of one image share an entry and an image is
never confused with another whatever its id. A batch with any image not yet cached runs the encoder on
the whole batch, exactly as without the cache, and stores every row; a batch of cached images runs no
encoder at all. The cached rows are the encoder's own outputs, so training with the cache equals training
without it up to float rounding (a row computed in another batch may differ in the last bits where the
GEMM's blocking depends on the batch size).

The cache is exact only when the encoder's output depends on the pixels alone. :func:`check_cacheable`
refuses (``ValueError``) when it may not: a trainable encoder parameter, a dropout with ``p > 0`` inside
the encoder (active in training mode), or image augmentation (each augmented view is a new image: no
entry would ever be reused and the cache would grow without bound).

Memory: one entry per distinct image, ``tokens × width`` values in the encoder's dtype, kept on the
device the encoder runs on (``store_device`` moves them, e.g. to ``"cpu"``, at a copy per use).
"""

from __future__ import annotations

import hashlib
from typing import Optional

import torch
from torch import nn

_ATTR = "_petal_feature_cache"
_BYPASS_KWARGS = ("output_attentions", "output_hidden_states")


def vision_encoder(model: nn.Module) -> nn.Module:
    encoder = getattr(model, "vision_model", None)
    if not isinstance(encoder, nn.Module):
        raise ValueError(f"--cache-image-features needs a model with a vision encoder at .vision_model "
                         f"(InstructBLIP, BLIP-2); {type(model).__name__} has none")
    return encoder


def check_cacheable(model: nn.Module, augmentation: bool = False) -> None:
    """Raise ``ValueError`` saying why caching ``model``'s image features would not be exact."""
    encoder = vision_encoder(model)
    if augmentation:
        raise ValueError("--cache-image-features is exact only without image augmentation: every augmented "
                         "view is a different image, so cached features would never be reused (turn the "
                         "augmentation off or drop --cache-image-features)")
    trainable = [n for n, p in encoder.named_parameters() if p.requires_grad]
    if trainable:
        raise ValueError(f"--cache-image-features needs a frozen vision encoder, but {len(trainable)} of its "
                         f"parameters are trainable (e.g. vision_model.{trainable[0]}); this method trains "
                         "the vision encoder, so its features change every step")
    dropouts = [n for n, m in encoder.named_modules() if isinstance(m, nn.Dropout) and m.p > 0]
    config_p = float(getattr(getattr(encoder, "config", None), "attention_dropout", 0.0) or 0.0)
    if dropouts or config_p > 0:
        where = f"vision_model.{dropouts[0]}" if dropouts else f"attention_dropout={config_p}"
        raise ValueError(f"--cache-image-features needs a deterministic vision encoder, but it has dropout "
                         f"({where}), which draws new features every training step")


def image_keys(pixel_values: torch.Tensor) -> list[bytes]:
    """One content hash per image of a ``(batch, ...)`` pixel tensor."""
    rows = pixel_values.detach().contiguous().cpu()
    tag = f"{rows.dtype}/{tuple(rows.shape[1:])}".encode()
    flat = rows.reshape(rows.shape[0], -1)
    if flat.dtype == torch.bfloat16:  # numpy has no bfloat16: hash the raw 16-bit words
        flat = flat.view(torch.int16)
    return [hashlib.blake2b(tag + row.numpy().tobytes(), digest_size=16).digest() for row in flat]


class FeatureCache:
    """The cache installed on one model's vision encoder (see the module docstring)."""

    def __init__(self, model: nn.Module, store_device: Optional[torch.device] = None):
        self.encoder = vision_encoder(model)
        if _ATTR in vars(self.encoder):
            raise ValueError("this model's vision encoder already has a feature cache (call .remove() first)")
        self.store_device = None if store_device is None else torch.device(store_device)
        self.entries: dict[bytes, tuple[torch.Tensor, Optional[torch.Tensor]]] = {}
        self.hits = self.misses = self.encoder_calls = 0
        self._had_forward = "forward" in vars(self.encoder)
        self._forward = self.encoder.forward
        self.encoder.forward = self._cached_forward
        setattr(self.encoder, _ATTR, self)

    def _cached_forward(self, pixel_values=None, *args, **kwargs):
        if pixel_values is None or args or any(kwargs.get(k) for k in _BYPASS_KWARGS):
            return self._forward(pixel_values, *args, **kwargs)
        keys = image_keys(pixel_values)
        missing = [k for k in keys if k not in self.entries]
        if missing:
            self.misses += len(set(missing))
            self.hits += len(keys) - len(missing)
            self.encoder_calls += 1
            out = self._forward(pixel_values, *args, **kwargs)
            pooled = getattr(out, "pooler_output", None)
            for i, key in enumerate(keys):
                if key not in self.entries:
                    self.entries[key] = (self._store(out[0][i]),
                                         None if pooled is None else self._store(pooled[i]))
            return out
        self.hits += len(keys)
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        device = pixel_values.device
        hidden = torch.stack([self.entries[k][0] for k in keys]).to(device)
        pooled = [self.entries[k][1] for k in keys]
        pooler = None if any(p is None for p in pooled) else torch.stack(pooled).to(device)
        if kwargs.get("return_dict") is False:
            return (hidden, pooler)
        return BaseModelOutputWithPooling(last_hidden_state=hidden, pooler_output=pooler)

    def _store(self, row: torch.Tensor) -> torch.Tensor:
        row = row.detach()
        return row.to(self.store_device) if self.store_device is not None else row.clone()

    @property
    def nbytes(self) -> int:
        return sum(h.numel() * h.element_size() + (0 if p is None else p.numel() * p.element_size())
                   for h, p in self.entries.values())

    def stats(self) -> dict:
        return {"images": len(self.entries), "hits": self.hits, "misses": self.misses,
                "encoder_calls": self.encoder_calls, "bytes": self.nbytes}

    def remove(self) -> None:
        """Restore the encoder's own ``forward`` and drop the cached features."""
        if getattr(self.encoder, _ATTR, None) is not self:
            return
        if self._had_forward:
            self.encoder.forward = self._forward
        else:
            del self.encoder.forward
        delattr(self.encoder, _ATTR)
        self.entries.clear()

    def __enter__(self) -> FeatureCache:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def enable_feature_cache(model: nn.Module, augmentation: bool = False,
                         store_device: Optional[torch.device] = None) -> FeatureCache:
    """Check that caching is exact for ``model`` (:func:`check_cacheable`), then install the cache."""
    check_cacheable(model, augmentation)
    return FeatureCache(model, store_device)


__all__ = ["FeatureCache", "check_cacheable", "enable_feature_cache", "image_keys", "vision_encoder"]
