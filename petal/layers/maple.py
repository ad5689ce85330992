"""MaPLe's coupled deep prompts (Khattak et al., CVPR 2023) for a Q-Former: the trainable state.

``prompts[j]`` (P tokens of the Q-Former width) are the instruction-side prompts of layer ``j``;
``couplings[str(j)]`` maps them to the image width for the layers ``j`` that have a cross-attention,
giving the vision-side prompts appended to the image features that cross-attention reads.
Where they go is :mod:`petal.models.maple`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class MaplePrompts(nn.Module):
    def __init__(self, depth: int, length: int, hidden_size: int, image_size: int, cross_layers: list,
                 init_std: float):
        super().__init__()
        self.prompts = nn.Parameter(torch.randn(depth, length, hidden_size) * init_std)
        self.couplings = nn.ModuleDict({str(j): nn.Linear(hidden_size, image_size) for j in cross_layers})

    @property
    def depth(self) -> int:
        return self.prompts.shape[0]

    @property
    def length(self) -> int:
        return self.prompts.shape[1]

    def text(self, layer: int, batch: int, like: Tensor) -> Tensor:
        """(batch, P, d) instruction-side prompts of ``layer``, in ``like``'s dtype."""
        return self.prompts[layer].to(like.dtype).expand(batch, -1, -1)

    def vision(self, layer: int, batch: int, like: Tensor) -> Tensor:
        """(batch, P, image width) vision-side prompts of ``layer``: its coupling of the text prompts."""
        coupling = self.couplings[str(layer)]
        return coupling(self.prompts[layer].to(coupling.weight.dtype)).to(like.dtype).expand(batch, -1, -1)
