"""Faster equivalents of frozen Q-Former module forwards, installed by ``petal.patch`` (Liger-style).

* ``*QFormerSelfOutput`` / ``*QFormerOutput`` compute ``LayerNorm(dropout(dense(h)) + residual)``. Here
  the dropout's keep mask (:func:`~petal.layers.fast_dropout.keep_mask`), its ``1/(1-p)`` and the
  residual add are one ``addcmul`` instead of ``bernoulli_``, ``div_``, ``mul`` and ``add``: same rate,
  same place, same math up to float rounding.

* ``*QFormerLayer`` slices the query and instruction rows out of the self-attention output and runs
  each slice through its feed-forward: a non-contiguous 3-D input makes ``nn.Linear`` a batched
  ``bmm`` against a broadcast weight (forward and backward), slower than the plain GEMM that the
  contiguous copy gets. The last layer's instruction-row feed-forward skips its backward when the
  gradient reaching it is all zeros (a loss on the query rows only, as InstructBLIP's).

Each override is an instance attribute (the module's class, state-dict keys, hooks and
gradient checkpointing stay as they are); ``petal.unpatch`` removes it through the handle kept in the
patch state. ``PetalConfig.fast_paths`` decides where they run (:mod:`petal.layers.fast_paths`): with
``False`` none is installed; with ``"auto"`` each call on a non-CPU tensor goes to the class's own
method, so on a GPU the frozen modules run ``transformers``' code.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from ..layers import fast_paths
from ..layers.fast_dropout import keep_mask

RESIDUAL_NORM_CLASSES = ("InstructBlipQFormerSelfOutput", "InstructBlipQFormerOutput",
                         "Blip2QFormerSelfOutput", "Blip2QFormerOutput")
LAYER_CLASSES = ("InstructBlipQFormerLayer", "Blip2QFormerLayer")


class MethodOverride:
    """Sets ``module.<name>`` to ``fn`` bound to the module and ``bound`` (the fast paths bind their
    ``mode``); ``remove()`` restores the class's method.

    The binding is a ``functools.partial``: unlike a bound method of a module-level function it
    pickles, and ``inspect.signature`` (which ``apply_chunking_to_forward`` reads) sees the method's
    own arguments."""

    def __init__(self, module: nn.Module, name: str, fn, *bound):
        self.module, self.name = module, name
        module.__dict__[name] = functools.partial(fn, module, *bound)

    def remove(self) -> None:
        self.module.__dict__.pop(self.name, None)


def _plain_dropout(dropout: nn.Module) -> bool:
    return (type(dropout) is nn.Dropout and not dropout._forward_hooks and not dropout._forward_pre_hooks
            and 0 <= dropout.p < 1)


def residual_norm_forward(self, mode, hidden_states: torch.Tensor, input_tensor: torch.Tensor):
    """``LayerNorm(dropout(dense(hidden_states)) + input_tensor)`` with the dropout fused into the add."""
    if not fast_paths.enabled(mode, hidden_states):
        return type(self).forward(self, hidden_states, input_tensor)
    h = self.dense(hidden_states)
    drop = self.dropout
    if not _plain_dropout(drop):
        return self.LayerNorm(drop(h) + input_tensor)
    if drop.training and drop.p > 0:
        keep = keep_mask(h, drop.p)
        return self.LayerNorm(torch.addcmul(input_tensor, h, keep, value=1 / (1 - drop.p)))
    return self.LayerNorm(h + input_tensor)


def _fast_input(mode, x: torch.Tensor) -> torch.Tensor:
    """``x`` contiguous where the fast paths run (see the module docstring), else as it is."""
    return x.contiguous() if fast_paths.enabled(mode, x) else x


def feed_forward_chunk(self, mode, attention_output: torch.Tensor) -> torch.Tensor:
    return type(self).feed_forward_chunk(self, _fast_input(mode, attention_output))


def feed_forward_chunk_query(self, mode, attention_output: torch.Tensor) -> torch.Tensor:
    return type(self).feed_forward_chunk_query(self, _fast_input(mode, attention_output))


class _SkipZeroGrad(torch.autograd.Function):
    """Identity whose backward hands on no gradient (autograd's "zero") when the incoming one is all
    zeros, so the graph behind it is not walked for nothing."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        if grad.device.type != "cpu":  # the test would be a host synchronisation on a GPU: pass it on
            return grad  # (fast_paths=True on a GPU)
        return grad if bool(grad.any()) else None


def last_feed_forward_chunk(self, mode, attention_output: torch.Tensor) -> torch.Tensor:
    """The last layer's instruction-row feed-forward. Its rows reach the caller in
    ``last_hidden_state``, but InstructBLIP reads only the query rows of it: a loss on those sends
    back an all-zero gradient here, and the feed-forward's backward is skipped (only while its own
    weights are frozen: a trainable one keeps its zero gradient)."""
    out = feed_forward_chunk(self, mode, attention_output)
    frozen = not any(p.requires_grad for m in (self.intermediate, self.output) for p in m.parameters())
    return _SkipZeroGrad.apply(out) if frozen and fast_paths.enabled(mode, attention_output) else out


def install_fast_paths(qformer: nn.Module, mode: fast_paths.FastPaths) -> list:
    """Override the methods of ``qformer``'s frozen modules that have a faster equivalent, to run where
    ``mode`` says; returns the handles that undo it (none for ``mode=False``)."""
    if mode is False:
        return []
    handles = []
    last = qformer.encoder.layer[-1] if len(qformer.encoder.layer) else None
    for module in qformer.modules():
        name = type(module).__name__
        overrides = []
        if name in RESIDUAL_NORM_CLASSES:
            overrides = [("forward", residual_norm_forward)]
        elif name in LAYER_CLASSES:
            text = last_feed_forward_chunk if module is last else feed_forward_chunk
            overrides = [("feed_forward_chunk", text), ("feed_forward_chunk_query", feed_forward_chunk_query)]
        handles += [MethodOverride(module, attr, fn, mode) for attr, fn in overrides
                    if attr not in module.__dict__]
    return handles


__all__ = ["LAYER_CLASSES", "MethodOverride", "RESIDUAL_NORM_CLASSES", "install_fast_paths",
           "residual_norm_forward"]
