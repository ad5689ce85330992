"""Named configurations: the paper's PETAL, the released code, the ablations (V1–V4, random instruction),
VL-PET and its multi-head designs, and the baselines of both papers' tables."""

from __future__ import annotations

import copy
from typing import Callable

from .config import (
    PRESET_BUILDERS,
    AIMConfig,
    DMAConfig,
    InstructionSettings,
    LoraSettings,
    PetalConfig,
    SIBConfig,
)
from .vl_pet_config import VL_PET_PRESETS


def _petal() -> PetalConfig:
    return PetalConfig()


def _official() -> PetalConfig:
    return PetalConfig(
        dma=DMAConfig(core="tucker", per_modality_lambda=False, dynamic_lambda=False, gamma=False,
                      dropout=0.1, query_transform=True, query_transform_init_std=2e-4,
                      trainable_lambda=False, dropout_per_projection=True, cross_batch_context=0.1),
        aim=AIMConfig(gate="uniform", identity_init=False, instruction_merge="uniform"),
        sib=SIBConfig(weight=0.0, learnable_weight=True),
    )


def _without(**disabled: bool) -> Callable[[], PetalConfig]:
    def build() -> PetalConfig:
        cfg = PetalConfig()
        for section in disabled:
            getattr(cfg, section).enabled = False
        cfg.validate()
        return cfg
    return build


_BUILDERS: dict[str, Callable[[], PetalConfig]] = {
    "petal": _petal,
    "petal-official": _official,
    "petal-no-aim": _without(aim=True),             # V1: DMA + SIB
    "petal-no-sib": _without(sib=True),             # V2: DMA + AIM
    "petal-dma-only": _without(aim=True, sib=True),  # V3
    "petal-no-dma": _without(dma=True),             # V4: AIM + SIB
    "petal-focus": lambda: PetalConfig(instructions=InstructionSettings(source="focus")),
    "random-instruction": lambda: PetalConfig(instructions=InstructionSettings(source="random")),
    "lora": lambda: PetalConfig(method="lora"),
    "head": lambda: PetalConfig(method="head"),
    "full": lambda: PetalConfig(method="full"),
    "maple": lambda: PetalConfig(method="maple"),
    "llama-adapter": lambda: PetalConfig(method="llama-adapter"),
    # VL-PET's baselines on a T5: VL-Adapter as its single_adapter.sh, LoRA r=128 on q/v as its
    # single_lora.sh (lora_alpha and lora_dropout at that code's defaults, 32 and 0.1)
    "vl-adapter": lambda: PetalConfig(method="vl-adapter"),
    "lora-t5": lambda: PetalConfig(method="lora", lora=LoraSettings(
        target="t5", rank=128, alpha=32.0, dropout=0.1, projections=("query", "value"))),
}
for _name, _vl in VL_PET_PRESETS.items():
    _BUILDERS[_name] = (lambda v: lambda: PetalConfig(method="vl-pet", vl_pet=copy.deepcopy(v)))(_vl)

PRESET_BUILDERS.update(_BUILDERS)
PRESETS: dict[str, PetalConfig] = {name: build() for name, build in _BUILDERS.items()}


def preset(name: str) -> PetalConfig:
    """A freshly built copy of the named preset (edits to it, or to ``PRESETS``, never leak)."""
    return PetalConfig.from_preset(name)
