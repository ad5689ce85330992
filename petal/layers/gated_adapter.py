"""VL-PET modules: the multi-head bottleneck adapter, the granularity-controlled gate, the decoder's
parallel value adapter.

For a sublayer with residual input ``x`` and output ``h`` (DESIGN §1)::

    u   = up(φ(down(h)))                     # MultiHeadAdapter, φ = gelu_new
    h'  = h + s_a · u
    out = x + s_g · dropout(G ⊙ h')         # petal_kernels.gated_residual

Initialisation follows the official code: the adapter's up projection and the gate's last layer
(large: the d_g→d linear; middleX/small: w and b; middleY: g) are zero, so at init ``h' = h`` and
``G = 0.5`` (large, middleX, small) or ``G = 1`` (middleY). The patched sublayer therefore starts at
``x + s_g·G·h`` — with the default s_g = 0.3 that is ``x + 0.15·h`` (``x + 0.3·h`` for middleY), **not**
the base model's ``x + h``. Only ``granularity="middleY", gate_scale=1.0`` starts exactly at the base
model. The decoder's parallel adapter (zero up projection) always starts at the base model.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import petal_kernels

from ..vl_pet_config import VLPetConfig
from .base import AdapterWrapper


def gelu_new(x: Tensor) -> Tensor:
    return F.gelu(x, approximate="tanh")


def adapter_dtype(dtype: torch.dtype) -> torch.dtype:
    """Adapters keep float32 (or float64) weights when the base model runs in half precision."""
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


class HeadwiseLinear(nn.Module):
    """``heads`` independent linears ``in/heads → out/heads`` on consecutive input chunks, outputs
    concatenated: a block-diagonal ``in → out`` linear (``down_up_pair``'s up projections)."""

    def __init__(self, in_features: int, out_features: int, heads: int, device=None, dtype=None):
        super().__init__()
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            if value % heads:
                raise ValueError(f"HeadwiseLinear: {name}={value} is not divisible by heads={heads}")
        self.heads = heads
        self.weight = nn.Parameter(torch.empty(heads, out_features // heads, in_features // heads,
                                               device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(out_features, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1 / math.sqrt(self.weight.shape[-1])  # what nn.Linear gives each head
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        chunks = x.unflatten(-1, (self.heads, -1))
        return torch.einsum("...hi,hoi->...ho", chunks, self.weight).flatten(-2) + self.bias


class MultiHeadAdapter(nn.Module):
    """``u = up(φ(down(h)))`` with ``num_heads`` heads placed by ``variant``.

    N_h heads of d→D/N_h concatenated are one d→D linear (and N_h heads of D→d/N_h concatenated are one
    D→d linear), with the same default init since each head has the same fan-in; so ``down``, ``up`` and
    ``down_up`` store one ``nn.Linear`` each way. ``down_up_pair`` pairs head i's down with head i's up
    only, which makes the up projection block-diagonal (``HeadwiseLinear``).
    """

    def __init__(self, d: int, reduction_dim: int, num_heads: int, variant: str, device=None, dtype=None):
        super().__init__()
        if variant in ("up", "down_up", "down_up_pair") and d % num_heads:
            raise ValueError(f"variant {variant!r} splits the model width d={d} into num_heads={num_heads} "
                             f"up heads; d must be divisible by num_heads")
        if reduction_dim % num_heads:
            raise ValueError(f"reduction_dim={reduction_dim} must be divisible by num_heads={num_heads}")
        self.variant = variant
        self.num_heads = num_heads
        self.down = nn.Linear(d, reduction_dim, device=device, dtype=dtype)
        if variant == "down_up_pair":
            self.up = HeadwiseLinear(reduction_dim, d, num_heads, device=device, dtype=dtype)
        else:
            self.up = nn.Linear(reduction_dim, d, device=device, dtype=dtype)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: Tensor) -> Tensor:
        return self.up(gelu_new(self.down(h)))


class GranularityGate(nn.Module):
    """The trainable part of G; ``arguments(x)`` returns the gate keywords of ``gated_residual``."""

    def __init__(self, granularity: str, d: int, gate_dim: int, device=None, dtype=None):
        super().__init__()
        self.granularity = granularity
        kw = {"device": device, "dtype": dtype}
        if granularity == "large":
            self.down = nn.Linear(d, gate_dim, **kw)
            self.up = nn.Linear(gate_dim, d, **kw)
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)
        elif granularity in ("middleX", "small"):
            width = d if granularity == "middleX" else 2 * d
            self.weight = nn.Parameter(torch.zeros(width, **kw))
            self.bias = nn.Parameter(torch.zeros(1, **kw))
        elif granularity == "middleY":
            self.vector = nn.Parameter(torch.zeros(d, **kw))
        else:
            raise ValueError(f"granularity must be one of {petal_kernels.GRANULARITIES}, got {granularity!r}")

    def arguments(self, x: Tensor, dtype: torch.dtype) -> dict:
        """``x`` is the sublayer's residual input; tensors come back in ``dtype``."""
        if self.granularity == "large":
            xa = x.to(self.down.weight.dtype)
            return {"gate_logits": self.up(gelu_new(self.down(xa))).to(dtype)}
        if self.granularity == "middleY":
            return {"gate_vector": self.vector.to(dtype)}
        return {"gate_weight": self.weight.to(dtype), "gate_bias": self.bias.to(dtype)}


class GatedAdapter(nn.Module):
    """One VL-PET module: ``forward(x, h, dropout_p)`` returns ``x + s_g · dropout(G ⊙ (h + s_a·u))``."""

    def __init__(self, d: int, config: VLPetConfig, device=None, dtype=None):
        super().__init__()
        self.granularity = config.granularity
        self.adapter_scale = float(config.adapter_scale)
        self.gate_scale = float(config.gate_scale)
        self.adapter = MultiHeadAdapter(d, config.reduction_dim, config.num_heads, config.variant,
                                        device=device, dtype=dtype)
        self.gate = GranularityGate(config.granularity, d, config.gate_dim, device=device, dtype=dtype)

    def intermediates(self, x: Tensor, h: Tensor) -> dict:
        """Everything ``gated_residual`` receives except the dropout mask, in the dtype of ``x + h``."""
        dtype = torch.promote_types(x.dtype, h.dtype)
        u = self.adapter(h.to(self.adapter.down.weight.dtype)).to(dtype)
        return {"x": x.to(dtype), "h": h.to(dtype), "u": u, "granularity": self.granularity,
                "adapter_scale": self.adapter_scale, "gate_scale": self.gate_scale,
                **self.gate.arguments(x, dtype)}

    def forward(self, x: Tensor, h: Tensor, dropout_p: float = 0.0) -> Tensor:
        # dropout made inside the kernel (a Philox stream seeded from torch's generator), not a saved mask
        p = float(dropout_p) if self.training else 0.0
        return petal_kernels.gated_residual(**self.intermediates(x, h), dropout_p=p)


class ParallelAdapter(nn.Module):
    """``up(φ(down(e)))``: the decoder's value adapter (up projection zero-initialised), and with
    ``zero_init=False`` (PyTorch's default init both ways) VL-Adapter's bottleneck adapter."""

    def __init__(self, in_features: int, width: int, out_features: int, device=None, dtype=None,
                 zero_init: bool = True):
        super().__init__()
        self.down = nn.Linear(in_features, width, device=device, dtype=dtype)
        self.up = nn.Linear(width, out_features, device=device, dtype=dtype)
        if zero_init:
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)

    def forward(self, e: Tensor) -> Tensor:
        return self.up(gelu_new(self.down(e)))


class ParallelAdapterLinear(AdapterWrapper):
    """Wraps a frozen ``nn.Linear``: ``y = base(e) + up(φ(down(e)))`` (VL-PET's ``V = W_v E + ...``)."""

    def __init__(self, base_layer: nn.Linear, width: int):
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f"ParallelAdapterLinear wraps an nn.Linear, got {type(base_layer).__name__}")
        super().__init__(base_layer)
        w = base_layer.weight
        self.adapter = ParallelAdapter(base_layer.in_features, width, base_layer.out_features,
                                       device=w.device, dtype=adapter_dtype(w.dtype))

    @property
    def weight(self) -> Tensor:
        return self.base_layer.weight

    @property
    def bias(self):
        return self.base_layer.bias

    def forward(self, e: Tensor) -> Tensor:
        y = self.base_layer(e)
        delta = self.adapter(e.to(self.adapter.down.weight.dtype))
        return y + delta.to(y.dtype)
