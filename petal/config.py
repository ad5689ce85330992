"""``PetalConfig``: what ``petal.patch`` inserts, validated, with a JSON round-trip.

Sections: ``dma`` (Dynamic Mode Approximation), ``aim`` (Adaptive Instruction MoEs), ``sib``
(Score-based Information Bottleneck loss), ``lora`` (the peft baseline), ``vl_pet`` (VL-PET on a T5).
``method`` says which family is applied: ``petal``, ``lora``, ``head``, ``full`` or ``vl-pet``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

from .vl_pet_config import VLPetConfig

METHODS = ("petal", "lora", "head", "full", "vl-pet")
CORES = ("cp", "tucker")
PROJECTIONS = ("query", "key", "value")
ATTENTIONS = ("self", "cross")
GATES = ("uniform", "softmax")
ESTIMATORS = ("infonce", "club", "mine")


def _int(owner: str, name: str, value, low: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{owner}.{name} must be an integer >= {low}, got {value!r}")


def _real(owner: str, name: str, value, low: float = -math.inf, high: float = math.inf,
          high_open: bool = False) -> None:
    ok = not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value)
    ok = ok and low <= value and (value < high if high_open else value <= high)
    if not ok:
        bracket = ")" if high_open else "]"
        raise ValueError(f"{owner}.{name} must be a finite number in [{low}, {high}{bracket}, got {value!r}")


def _bool(owner: str, name: str, value) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{owner}.{name} must be True or False, got {value!r}")


def _choice(owner: str, name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{owner}.{name} must be one of {choices}, got {value!r}")


def _subset(owner: str, name: str, value, choices) -> tuple:
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"{owner}.{name} must be a non-empty list drawn from {choices}, got {value!r}")
    bad = [v for v in value if v not in choices]
    if bad or len(set(value)) != len(value):
        raise ValueError(f"{owner}.{name} must hold distinct entries of {choices}, got {list(value)!r}")
    return tuple(value)


class _Section:
    """from_dict with unknown-key errors, shared by every section."""

    @classmethod
    def from_dict(cls, data: dict):
        if not isinstance(data, dict):
            raise TypeError(f"{cls.__name__}.from_dict expects a dict, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown keys {unknown}; known keys are {sorted(known)}")
        return cls(**data)

    def to_dict(self) -> dict:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
                for f in dataclasses.fields(self)}


@dataclass
class DMAConfig(_Section):
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
            _bool(o, name, getattr(self, name))
        _real(o, "cross_batch_context", self.cross_batch_context)
        _int(o, "rank", self.rank)
        _choice(o, "core", self.core, CORES)
        self.projections = _subset(o, "projections", self.projections, PROJECTIONS)
        self.attentions = _subset(o, "attentions", self.attentions, ATTENTIONS)
        _real(o, "dropout", self.dropout, 0.0, 1.0, high_open=True)
        _real(o, "query_transform_init_std", self.query_transform_init_std, 0.0)


@dataclass
class AIMConfig(_Section):
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
        _bool(o, "enabled", self.enabled)
        _bool(o, "identity_init", self.identity_init)
        _int(o, "num_experts", self.num_experts)
        _int(o, "expert_rank", self.expert_rank)
        _int(o, "max_instructions", self.max_instructions)
        _choice(o, "gate", self.gate, GATES)
        _choice(o, "instruction_merge", self.instruction_merge, GATES)
        _real(o, "residual_weight", self.residual_weight)
        _real(o, "expert_weight", self.expert_weight)


@dataclass
class SIBConfig(_Section):
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
        _bool(o, "enabled", self.enabled)
        _bool(o, "learnable_weight", self.learnable_weight)
        _choice(o, "estimator", self.estimator, ESTIMATORS)
        _real(o, "eta", self.eta, 0.0)
        _real(o, "weight", self.weight)
        _int(o, "proj_dim", self.proj_dim)
        _real(o, "temperature", self.temperature, 1e-6)


@dataclass
class LoraSettings(_Section):
    """The ``lora`` baseline, applied through ``peft`` to the Q-Former's q/k/v."""

    rank: int = 64
    alpha: float = 128.0
    dropout: float = 0.05
    projections: tuple = PROJECTIONS

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        o = "LoraSettings"
        _int(o, "rank", self.rank)
        _real(o, "alpha", self.alpha, 0.0)
        _real(o, "dropout", self.dropout, 0.0, 1.0, high_open=True)
        self.projections = _subset(o, "projections", self.projections, PROJECTIONS)


_SECTIONS = {"dma": DMAConfig, "aim": AIMConfig, "sib": SIBConfig, "lora": LoraSettings}

# name -> builder of a fresh PetalConfig; filled by ``petal.presets`` (which the ``petal`` package imports,
# so it is filled whenever this module is), keeping the import one way: presets -> config
PRESET_BUILDERS: dict[str, Callable[[], PetalConfig]] = {}


@dataclass
class PetalConfig:
    """Everything ``petal.patch`` needs. ``None`` for ``petal.patch`` means ``PetalConfig()``: the paper."""

    method: str = "petal"
    dma: DMAConfig = field(default_factory=DMAConfig)
    aim: AIMConfig = field(default_factory=AIMConfig)
    sib: SIBConfig = field(default_factory=SIBConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    vl_pet: Optional[VLPetConfig] = None

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        _choice("PetalConfig", "method", self.method, METHODS)
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

    # ------------------------------------------------------------------ round-trip

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"method": self.method}
        for name in _SECTIONS:
            out[name] = getattr(self, name).to_dict()
        out["vl_pet"] = None if self.vl_pet is None else self.vl_pet.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict) -> PetalConfig:
        if not isinstance(data, dict):
            raise TypeError(f"PetalConfig.from_dict expects a dict, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"PetalConfig: unknown keys {unknown}; known keys are {sorted(known)}")
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
        """Human-readable ``key: mine != theirs`` lines, for error messages."""
        return _diff(self.to_dict(), other.to_dict(), prefix)


def _diff(a, b, prefix: str) -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            out += _diff(a.get(key), b.get(key), f"{prefix}{key}.")
        return out
    return [] if a == b else [f"{prefix.rstrip('.')}: {a!r} != {b!r}"]
