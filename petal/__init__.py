"""petal: parameter-efficient tuning of vision-language models (PETAL: DMA / AIM / SIB; VL-PET).

    model = petal.patch(model, petal.PetalConfig.from_preset("petal"))
    print(petal.trainable_parameters(model))
    petal.save_adapter(model, "out/")   # adapter_config.json + adapter_model.safetensors

Multi-instruction AIM: call a patched ``InstructBlipForConditionalGeneration`` with
``qformer_input_ids`` (and ``qformer_attention_mask``) of shape ``(batch, num_instructions, seq_len)``,
or a patched ``InstructBlipQFormerModel`` with ``input_ids`` of that shape; each instruction runs
through the Q-Former and the outputs are merged with the weights of ``AIMConfig.instruction_merge``.
"""

from __future__ import annotations

from . import losses
from .adapter_io import load_adapter, save_adapter
from .baseline_config import HeadSettings, LlamaAdapterSettings, MapleSettings, VLAdapterSettings
from .config import AIMConfig, DMAConfig, InstructionSettings, LoraSettings, PetalConfig, SIBConfig
from .patch import SUPPORTED, is_patched, merge, patch, trainable_parameters, unmerge, unpatch
from .presets import PRESETS
from .vl_pet_config import VL_PET_PRESETS, VLPetConfig

__all__ = [
    "AIMConfig", "DMAConfig", "HeadSettings", "InstructionSettings", "LlamaAdapterSettings", "LoraSettings",
    "MapleSettings", "PRESETS", "PetalConfig", "SIBConfig", "SUPPORTED", "VLAdapterSettings", "VLPetConfig",
    "VL_PET_PRESETS", "is_patched", "load_adapter", "losses", "merge", "patch", "save_adapter",
    "trainable_parameters", "unmerge", "unpatch",
]
__version__ = "0.1.0"
