"""A trainable copy of a frozen module (what ``peft`` calls ``modules_to_save``): the copy runs and
trains, the original stays as it was, so ``petal.unpatch`` returns it bit-for-bit after training and
an adapter file holds the copy's weights."""

from __future__ import annotations

import copy

import torch
from torch import nn

from .dma import DelegatingWrapper


def _cast(value, dtype):
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.to(dtype)
    if isinstance(value, tuple):
        return tuple(_cast(v, dtype) for v in value)
    return value


class TrainableCopy(DelegatingWrapper):
    def __init__(self, base_layer: nn.Module):
        super().__init__(base_layer)
        self.trained = copy.deepcopy(base_layer)

    def forward(self, *args, **kwargs):
        """Runs the copy on inputs cast to its dtype (float32 masters of a half-precision base, see
        ``petal.patch``); floating outputs come back in the dtype of the first floating input."""
        floats = [a for a in (*args, *kwargs.values()) if torch.is_tensor(a) and a.is_floating_point()]
        dtype = next(self.trained.parameters()).dtype
        out = self.trained(*_cast(args, dtype), **{k: _cast(v, dtype) for k, v in kwargs.items()})
        return _cast(out, floats[0].dtype) if floats else out
