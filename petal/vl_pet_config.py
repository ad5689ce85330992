"""Configuration of VL-PET (Hu et al., ICCV 2023) for T5 encoder-decoder language models.

Defaults are the T5-base settings of the official scripts (``scripts/image-text/T5-VL-PET-*.sh``):
encoder modules with D = 192, N_h = 4 down heads, large-gate width d_g = 192, gate scale s_g = 0.3,
adapter scale s_a = 1.0; decoder parallel adapter of width 96 on the cross-attention value.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Optional

from petal_kernels import GRANULARITIES

from .config_fields import check_keys

VARIANTS = ("down", "up", "down_up", "down_up_pair")


@dataclass
class VLPetConfig:
    """What VL-PET inserts into a T5 model, and where.

    * ``granularity``: the gate G — ``large`` (N×d, from a d→d_g→d bottleneck on the sublayer input x),
      ``middleX`` (N×1 from x + h'), ``middleY`` (1×d, 1 + g), ``small`` (one scalar per example,
      the mean over its tokens of σ([x; h'] w + b), padding tokens included as in the official code).
    * ``variant``: where the adapter has ``num_heads`` heads — ``down`` (N_h down projections d→D/N_h,
      concatenated), ``up`` (N_h up projections D→d/N_h, concatenated), ``down_up`` (both), or
      ``down_up_pair`` (N_h independent d→D/N_h→d/N_h adapters, concatenated).
    * ``dropout``: rate of the dropout on s_g·G·h'; ``None`` uses the wrapped T5 sublayer's own rate
      (``T5Config.dropout_rate``), which is what the official code does.
    * ``t5_module``: where the T5 lives inside a composite model (``InstructBlipForConditionalGeneration``
      keeps it at ``language_model``); ignored when the model passed is a T5 itself.
    """

    granularity: str = "large"
    variant: str = "down"
    reduction_dim: int = 192
    num_heads: int = 4
    gate_dim: int = 192
    gate_scale: float = 0.3
    adapter_scale: float = 1.0
    dropout: Optional[float] = None
    decoder_adapter_dim: int = 96
    encoder_self_attention: bool = True
    encoder_ffn: bool = True
    decoder_cross_attention_value: bool = True
    t5_module: str = "language_model"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError``/``TypeError`` naming the first bad field and its value."""
        if self.granularity not in GRANULARITIES:
            raise ValueError(
                f"VLPetConfig.granularity must be one of {GRANULARITIES}, got {self.granularity!r}")
        if self.variant not in VARIANTS:
            raise ValueError(f"VLPetConfig.variant must be one of {VARIANTS}, got {self.variant!r}")
        for name in ("reduction_dim", "num_heads", "gate_dim", "decoder_adapter_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"VLPetConfig.{name} must be a positive integer, got {value!r}")
        if self.reduction_dim % self.num_heads:
            raise ValueError(
                f"VLPetConfig.reduction_dim must be divisible by num_heads={self.num_heads}, "
                f"got {self.reduction_dim!r}")
        for name in ("gate_scale", "adapter_scale"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise ValueError(f"VLPetConfig.{name} must be a finite real number, got {value!r}")
        p = self.dropout
        if p is not None and (isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0 <= p < 1):
            raise ValueError(f"VLPetConfig.dropout must be None or a number in [0, 1), got {p!r}")
        places = ("encoder_self_attention", "encoder_ffn", "decoder_cross_attention_value")
        for name in places:
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"VLPetConfig.{name} must be True or False, got {getattr(self, name)!r}")
        if not any(getattr(self, name) for name in places):
            raise ValueError(f"VLPetConfig: at least one of {places} must be True, got all False")
        if not isinstance(self.t5_module, str) or not self.t5_module:
            raise ValueError(f"VLPetConfig.t5_module must be a non-empty module path, got {self.t5_module!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> VLPetConfig:
        check_keys(cls, data)
        return cls(**data)


VL_PET_PRESETS: dict[str, VLPetConfig] = {
    f"vl-pet-{granularity}": VLPetConfig(granularity=granularity) for granularity in GRANULARITIES
}
# the multi-head designs beside "down" (vl-pet-large): VL-PET-large with the heads placed elsewhere
VL_PET_PRESETS.update({f"vl-pet-large-{variant.replace('_', '-')}": VLPetConfig(variant=variant)
                       for variant in VARIANTS if variant != "down"})
