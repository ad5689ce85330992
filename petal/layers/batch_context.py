"""The released PETAL code's cross-attention line: row 0 of each cross-attention block's output gets
``factor`` × the batch mean of row 0 of the block's input (the first query token after self-attention).

It mixes the samples of a batch, so a sample's output depends on what else is in its batch (and on
the batch size). With several instructions per image the batch is ``B·n`` rows, image-major; the
mean is taken over the ``B`` rows of each instruction, as the released code runs each instruction
through the Q-Former as a batch of its own.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor, nn

from .dma import DelegatingWrapper


def first_row_batch_mean(hidden: Tensor, groups: int) -> Tensor:
    """(B·n, 1, d): for each row, the mean of row 0 over the rows of its group (rows ``b·n + i``)."""
    first = hidden[:, :1]
    if groups <= 1:
        return first.mean(0, keepdim=True).expand_as(first)
    per_group = first.unflatten(0, (-1, groups)).mean(0, keepdim=True)      # (1, n, 1, d)
    return per_group.expand(first.shape[0] // groups, -1, -1, -1).flatten(0, 1)


class CrossBatchContext(DelegatingWrapper):
    """Wraps a Q-Former ``crossattention`` block (attention + output); ``groups()`` gives the number of
    instructions per image of the current forward (``None``: one)."""

    def __init__(self, base_layer: nn.Module, factor: float, groups: Callable[[], Optional[int]]):
        super().__init__(base_layer)
        self.factor = float(factor)
        self.__dict__["groups"] = groups

    def forward(self, hidden_states: Tensor, *args, **kwargs):
        out = self.base_layer(hidden_states, *args, **kwargs)
        block = out[0] if isinstance(out, tuple) else out
        context = first_row_batch_mean(hidden_states, self.groups() or 1).to(block.dtype)
        block = torch.cat([block[:, :1] + self.factor * context, block[:, 1:]], dim=1)
        return (block, *out[1:]) if isinstance(out, tuple) else block
