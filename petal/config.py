"""``PetalConfig``: what ``petal.patch`` inserts, validated, with a JSON round-trip.

Sections: ``dma`` (Dynamic Mode Approximation), ``aim`` (Adaptive Instruction MoEs), ``sib``
(Score-based Information Bottleneck loss), ``instructions`` (what the Q-Former reads per image), the
baselines ``lora`` (peft), ``head``, ``maple``, ``llama_adapter``, ``vl_adapter``, and ``vl_pet`` (VL-PET
on a T5). ``method`` says which family is applied: one of ``METHODS``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

from .baseline_config import HeadSettings, LlamaAdapterSettings, MapleSettings, VLAdapterSettings
from .config_fields import Section, check_bool, check_choice, check_int, check_keys, check_real, check_subset
from .data.instructions import FOCUS_INSTRUCTIONS
from .data.instructions import SOURCES as INSTRUCTION_SOURCES
from .vl_pet_config import VLPetConfig

METHODS = ("petal", "lora", "head", "full", "vl-pet", "maple", "llama-adapter", "vl-adapter")
LORA_TARGETS = ("qformer", "t5")
QFORMER_METHODS = ("petal", "head", "maple", "llama-adapter")
T5_METHODS = ("vl-pet", "vl-adapter")
CORES = ("cp", "tucker")
PROJECTIONS = ("query", "key", "value")
ATTENTIONS = ("self", "cross")
GATES = ("uniform", "softmax")
ESTIMATORS = ("infonce", "club", "mine")
EXECUTION_FIELDS = ("fast_paths",)  # how the patched model computes, not what its adapter holds


def check_fast_paths(name: str, value) -> None:
    """``value`` is a ``fast_paths`` option: ``"auto"``, ``True`` or ``False``."""
    if not (isinstance(value, bool) or value == "auto"):
        raise ValueError(f"{name} must be 'auto', True or False, got {value!r}")


@dataclass
class DMAConfig(Section):
    """DMA on the Q-Former's q/k/v projections (DESIGN §1.1).

    ``core="cp"`` is the paper (diagonal λ·p); ``"tucker"`` the official code's full R×R×R core.
    ``dynamic_lambda`` adds the input-conditioned term ``λ^m(x) = λ^m ⊙ (1 + tanh(A D mean(x^m)))``
    (``W_λ = A·D``, ``A`` zero-initialised R×R). ``query_transform`` is the official code's
    ``layer_output += 0.1·(attn_out ⊙ scale + shift)`` on every Q-Former self-attention output, with
    scale/shift drawn from N(0, ``query_transform_init_std``) as there (0 keeps patched == base).

    The released code also differs in three places that these switches reproduce (all three on in
    ``petal-official``): ``trainable_lambda=False`` fixes λ = 1 (it has no λ; ``per_modality_lambda``
    is then moot); ``dropout_per_projection`` draws one dropout mask on ``D x`` per projection (q, k, v
    each its own) instead of one shared mask; ``cross_batch_context`` (0.1 there) adds that multiple of
    the batch mean of query row 0 of each cross-attention's input to row 0 of its output, which makes
    every sample's output depend on the others in its batch (with several instructions per image, the
    mean is taken per instruction, as the released code runs each instruction as its own batch).
    """

    enabled: bool = True
    rank: int = 64
    core: str = "cp"
    projections: tuple = PROJECTIONS
    attentions: tuple = ATTENTIONS
    per_modality_lambda: bool = True
    dynamic_lambda: bool = True
    gamma: bool = True
    dropout: float = 0.0
    query_transform: bool = False
    query_transform_init_std: float = 0.0
    trainable_lambda: bool = True
    dropout_per_projection: bool = False
    cross_batch_context: float = 0.0

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        o = "DMAConfig"
        for name in ("enabled", "per_modality_lambda", "dynamic_lambda", "gamma", "query_transform",
                     "trainable_lambda", "dropout_per_projection"):
            check_bool(o, name, getattr(self, name))
        check_real(o, "cross_batch_context", self.cross_batch_context)
        check_int(o, "rank", self.rank)
        check_choice(o, "core", self.core, CORES)
        self.projections = check_subset(o, "projections", self.projections, PROJECTIONS)
        self.attentions = check_subset(o, "attentions", self.attentions, ATTENTIONS)
        check_real(o, "dropout", self.dropout, 0.0, 1.0, high_open=True)
        check_real(o, "query_transform_init_std", self.query_transform_init_std, 0.0)


@dataclass
class AIMConfig(Section):
    """AIM on the Q-Former input embeddings: ``e ← res·e + mix·Σ_k g_k E_k(e)`` (DESIGN §1.2).

    ``identity_init`` makes each expert ``E_k(e) = e + B_k A_k e`` with ``B_k = 0`` at init, so the
    patched model starts equal to the base model (res + mix = 1); ``False`` is the official plain
    ``Linear→Linear`` expert with PyTorch's default init. ``instruction_merge`` weights the Q-Former
    outputs of several instructions per image (multi-instruction mode): ``softmax`` (learned) or
    ``uniform``; ``max_instructions`` bounds how many learned weights exist.
    """

    enabled: bool = True
    num_experts: int = 6
    expert_rank: int = 64
    gate: str = "softmax"
    residual_weight: float = 0.6
    expert_weight: float = 0.4
    identity_init: bool = True
    instruction_merge: str = "softmax"
    max_instructions: int = 4

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        o = "AIMConfig"
        check_bool(o, "enabled", self.enabled)
        check_bool(o, "identity_init", self.identity_init)
        check_int(o, "num_experts", self.num_experts)
        check_int(o, "expert_rank", self.expert_rank)
        check_int(o, "max_instructions", self.max_instructions)
        check_choice(o, "gate", self.gate, GATES)
        check_choice(o, "instruction_merge", self.instruction_merge, GATES)
        check_real(o, "residual_weight", self.residual_weight)
        check_real(o, "expert_weight", self.expert_weight)


@dataclass
class SIBConfig(Section):
    """SIB loss ``-(I(Z;Y) - η I(Z;X))`` added to the LM loss with ``weight`` (DESIGN §1.3).

    ``learnable_weight`` makes the weight a trainable scalar initialised to ``weight``.
    ``proj_dim`` is the width of the learned Z/X projections the I(Z;X) estimator compares;
    ``temperature`` divides the cosine scores of the InfoNCE terms.
    """

    enabled: bool = True
    eta: float = 0.1
    estimator: str = "infonce"
    weight: float = 1.0
    learnable_weight: bool = False
    proj_dim: int = 64
    temperature: float = 0.1

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        o = "SIBConfig"
        check_bool(o, "enabled", self.enabled)
        check_bool(o, "learnable_weight", self.learnable_weight)
        check_choice(o, "estimator", self.estimator, ESTIMATORS)
        check_real(o, "eta", self.eta, 0.0)
        check_real(o, "weight", self.weight)
        check_int(o, "proj_dim", self.proj_dim)
        check_real(o, "temperature", self.temperature, 1e-6)


@dataclass
class LoraSettings(Section):
    """The ``lora`` baselines through ``peft``: ``target="qformer"`` adapts the Q-Former's q/k/v
    (``projections``); ``"t5"`` adapts the same projections (``q``/``k``/``v``) of every attention of
    a T5 (encoder self, decoder self and cross), the T5 itself or the one inside InstructBLIP."""

    rank: int = 64
    alpha: float = 128.0
    dropout: float = 0.05
    projections: tuple = PROJECTIONS
    target: str = "qformer"

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        o = "LoraSettings"
        check_int(o, "rank", self.rank)
        check_real(o, "alpha", self.alpha, 0.0)
        check_real(o, "dropout", self.dropout, 0.0, 1.0, high_open=True)
        self.projections = check_subset(o, "projections", self.projections, PROJECTIONS)
        check_choice(o, "target", self.target, LORA_TARGETS)


@dataclass
class InstructionSettings(Section):
    """What the Q-Former reads for each image; ``petal train`` / ``petal eval`` apply it to the data.

    ``source="record"``: the record's own ``instructions`` list when it has one (folder annotations,
    ``SyntheticShapes(instructions=True)``), else its question (or captioning instruction).
    ``"focus"``: the paper's ``count`` instructions of different focus (objects, their characteristics,
    their relationship) for every image. ``"random"``: ``count`` instructions drawn at random from the
    InstructBLIP template pool of the record's task (the paper's "w. random instruction"), anew for
    every training batch (seeded by the batch's record ids, so a resumed run draws the same), from the
    record id in evaluation. Several instructions per image need AIM's merge (method ``petal`` with
    ``aim.enabled``) on an InstructBLIP model.
    """

    source: str = "record"
    count: int = 3

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        o = "InstructionSettings"
        check_choice(o, "source", self.source, INSTRUCTION_SOURCES)
        check_int(o, "count", self.count)
        most = len(FOCUS_INSTRUCTIONS)
        if self.source == "focus" and self.count > most:
            raise ValueError(f"InstructionSettings.count must be at most {most} for source 'focus' (the "
                             f"paper's set has {most}), got {self.count}")


_SECTIONS = {"dma": DMAConfig, "aim": AIMConfig, "sib": SIBConfig, "lora": LoraSettings,
             "head": HeadSettings, "maple": MapleSettings, "llama_adapter": LlamaAdapterSettings,
             "vl_adapter": VLAdapterSettings, "instructions": InstructionSettings}

# name -> builder of a fresh PetalConfig; filled by ``petal.presets`` (which the ``petal`` package imports,
# so it is filled whenever this module is), keeping the import one way: presets -> config
PRESET_BUILDERS: dict[str, Callable[[], PetalConfig]] = {}


@dataclass
class PetalConfig:
    """Everything ``petal.patch`` needs. ``None`` for ``petal.patch`` means ``PetalConfig()``: the paper.

    ``fast_paths`` says where the CPU fast paths replace parts of the frozen Q-Former (attention core,
    residual + LayerNorm blocks, dropout masks; see :mod:`petal.models.qformer_fast`): ``"auto"`` on CPU
    tensors only (decided per call from the input's device), ``True`` on every device, ``False`` never
    (``transformers``' own code everywhere). It changes how the model computes, not what the adapter
    holds, so :meth:`differences` (and ``load_adapter``) ignore it.
    """

    method: str = "petal"
    dma: DMAConfig = field(default_factory=DMAConfig)
    aim: AIMConfig = field(default_factory=AIMConfig)
    sib: SIBConfig = field(default_factory=SIBConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    head: HeadSettings = field(default_factory=HeadSettings)
    maple: MapleSettings = field(default_factory=MapleSettings)
    llama_adapter: LlamaAdapterSettings = field(default_factory=LlamaAdapterSettings)
    vl_adapter: VLAdapterSettings = field(default_factory=VLAdapterSettings)
    instructions: InstructionSettings = field(default_factory=InstructionSettings)
    vl_pet: Optional[VLPetConfig] = None
    fast_paths: Union[str, bool] = "auto"

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        check_choice("PetalConfig", "method", self.method, METHODS)
        check_fast_paths("PetalConfig.fast_paths", self.fast_paths)
        for name, cls in _SECTIONS.items():
            value = getattr(self, name)
            if not isinstance(value, cls):
                raise TypeError(f"PetalConfig.{name} must be a {cls.__name__}, got {type(value).__name__}")
            value.validate()
        if self.vl_pet is not None:
            if not isinstance(self.vl_pet, VLPetConfig):
                raise TypeError(f"PetalConfig.vl_pet must be a VLPetConfig or None, got "
                                f"{type(self.vl_pet).__name__}")
            self.vl_pet.validate()
        if self.method == "vl-pet" and self.vl_pet is None:
            raise ValueError("PetalConfig.method 'vl-pet' needs PetalConfig.vl_pet (a VLPetConfig), got None")
        if self.method == "petal" and not (self.dma.enabled or self.aim.enabled or self.sib.enabled):
            raise ValueError("PetalConfig.method 'petal' needs at least one of dma/aim/sib enabled, got none")
        if self.instructions.source != "record":
            if not self.merges_instructions:
                raise ValueError(f"PetalConfig.instructions.source {self.instructions.source!r} gives "
                                 "several instructions per image, which only AIM's merge takes (method "
                                 f"'petal' with aim.enabled); got method {self.method!r}, "
                                 f"aim.enabled={self.aim.enabled}")
            if self.instructions.count > self.aim.max_instructions:
                raise ValueError(f"PetalConfig.instructions.count ({self.instructions.count}) exceeds "
                                 f"aim.max_instructions ({self.aim.max_instructions})")

    @property
    def adapts(self) -> str:
        """``"qformer"``, ``"t5"`` or ``"any"`` (``full``): where the method puts its trainable state."""
        if self.method == "lora":
            return self.lora.target
        return "qformer" if self.method in QFORMER_METHODS else "t5" if self.method in T5_METHODS else "any"

    @property
    def merges_instructions(self) -> bool:
        """Whether a model patched with this config merges several instructions per image (AIM)."""
        return self.method == "petal" and self.aim.enabled

    # ------------------------------------------------------------------ round-trip

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"method": self.method}
        for name in _SECTIONS:
            out[name] = getattr(self, name).to_dict()
        out["vl_pet"] = None if self.vl_pet is None else self.vl_pet.to_dict()
        out["fast_paths"] = self.fast_paths
        return out

    @classmethod
    def from_dict(cls, data: dict) -> PetalConfig:
        check_keys(cls, data)
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key in _SECTIONS:
                kwargs[key] = _SECTIONS[key].from_dict(value)
            elif key == "vl_pet":
                kwargs[key] = None if value is None else VLPetConfig.from_dict(value)
            else:
                kwargs[key] = value
        return cls(**kwargs)

    def to_json(self, path: Union[str, Path, None] = None) -> str:
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    @classmethod
    def from_json(cls, text_or_path: Union[str, Path]) -> PetalConfig:
        text = str(text_or_path)
        if not text.lstrip().startswith("{"):
            text = Path(text_or_path).read_text()
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"PetalConfig.from_json: not valid JSON ({e})") from None
        return cls.from_dict(data)

    @classmethod
    def from_preset(cls, name: str) -> PetalConfig:
        """A freshly built copy of the named preset (``petal.presets`` registers them)."""
        if name not in PRESET_BUILDERS:
            raise ValueError(f"unknown preset {name!r}; presets are {sorted(PRESET_BUILDERS)}")
        return PRESET_BUILDERS[name]()

    def differences(self, other: PetalConfig, prefix: str = "") -> list[str]:
        """Human-readable ``key: mine != theirs`` lines, for error messages; the execution options
        (``EXECUTION_FIELDS``) are not compared."""
        mine, theirs = self.to_dict(), other.to_dict()
        for name in EXECUTION_FIELDS:
            mine.pop(name)
            theirs.pop(name)
        return _diff(mine, theirs, prefix)


def _diff(a, b, prefix: str) -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            out += _diff(a.get(key), b.get(key), f"{prefix}{key}.")
        return out
    return [] if a == b else [f"{prefix.rstrip('.')}: {a!r} != {b!r}"]
