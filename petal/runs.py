"""What a run is made of: the model (embedded default or a Hugging Face checkpoint), its collators and
decoder, and the run configuration saved as ``run.json`` (flags and ``--config`` files share its keys)."""

from __future__ import annotations

import json
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Optional, Union

RUN_FILE = "run.json"


@dataclass
class RunConfig:
    model: str = "embedded"
    data: str = "synthetic"
    preset: str = "petal"
    petal: Optional[dict] = None        # a full PetalConfig dict; overrides preset
    families: Optional[list] = None     # synthetic data: question families to train and evaluate on
    domain: str = "standard"            # synthetic data: "standard" or "rotated" (colour channels rotated)
    epochs: float = 5.0
    max_steps: Optional[int] = None
    lr: float = 2e-5
    weight_decay: float = 0.02
    warmup_steps: Optional[int] = None
    batch_size: int = 16                # per process
    max_grad_norm: float = 1.0
    gradient_accumulation_steps: int = 1
    mixed_precision: str = "no"
    seed: int = 0
    eval_every: int = 0
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    train_limit: Optional[int] = None   # records
    few_shot: Optional[int] = None      # train on this many examples drawn with the seed (petal.data.fewshot)
    data_path: Optional[str] = None     # hub data: a local copy of the repository or a saved data set
    data_revision: Optional[str] = None  # hub data: the revision to read
    skip_bad_images: bool = False       # folder data: leave out records whose image is missing or unreadable
    eval_limit: Optional[int] = None    # records
    eval_split: str = "val"
    num_beams: int = 5
    max_new_tokens: int = 20
    pretrain_steps: Optional[int] = None  # embedded model: steps of the base's pre-training (None: 800)
    output_dir: str = "runs/train"
    extra: dict = field(default_factory=dict)

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_dict(cls, data: dict, source: str = "run config") -> RunConfig:
        if not isinstance(data, dict):
            raise ValueError(f"{source} must hold a JSON object, got {type(data).__name__}")
        unknown = sorted(set(data) - set(cls.keys()))
        if unknown:
            raise ValueError(f"{source}: unknown keys {unknown}; known keys are {cls.keys()}")
        hints = typing.get_type_hints(cls)
        for key, value in data.items():
            if not _has_type(value, hints[key]):
                raise ValueError(f"{source}: {key} must be {_type_name(hints[key])}, got {value!r}")
        config = cls(**data)
        config.validate(source)
        return config

    def validate(self, source: str = "run config") -> None:
        """Values the flags' parsers would refuse, refused here for config files too."""
        from .data.synthetic import DOMAINS, FAMILIES, SPLITS

        def bad(key: str, expected: str):
            raise ValueError(f"{source}: {key} must be {expected}, got {getattr(self, key)!r}")

        for key in ("num_beams", "max_new_tokens", "train_limit", "eval_limit", "pretrain_steps"):
            value = getattr(self, key)
            if value is not None and value < 1:
                bad(key, "a positive integer")
        if self.domain not in DOMAINS:
            bad("domain", f"one of {DOMAINS}")
        if self.eval_split not in SPLITS[1:]:
            bad("eval_split", f"one of {SPLITS[1:]}")
        if self.families is not None and (not self.families or any(f not in FAMILIES for f in self.families)):
            bad("families", f"a non-empty list drawn from {FAMILIES}")
        if self.data != "synthetic" and (self.families is not None or self.domain != "standard"):
            raise ValueError(f"{source}: families and domain describe the synthetic data; --data is "
                             f"{self.data!r}")

    @classmethod
    def from_file(cls, path: Union[str, Path], what: str = "--config") -> RunConfig:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"{what} {path} {'is not a file' if path.exists() else 'does not exist'}")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{what} {path} is not valid JSON ({e})") from None
        return cls.from_dict(data, str(path))

    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, directory: Union[str, Path]) -> Path:
        path = Path(directory) / RUN_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    def petal_config(self, source: str = "the run config"):
        """The PetalConfig of the run, validated (an invalid ``petal`` section names ``source``)."""
        import petal

        try:
            config = (petal.PetalConfig.from_dict(self.petal) if self.petal is not None
                      else petal.PetalConfig.from_preset(self.preset))
            config.validate()
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            what = "its petal section" if self.petal is not None else f"preset {self.preset!r}"
            raise ValueError(f"{source}: {what} is not a valid petal config ({e})") from None
        return config


def _has_type(value, hint) -> bool:
    if hint is Any:
        return True
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Union:
        return any(_has_type(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, origin or hint)


def _type_name(hint) -> str:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is Union:
        return f"{_type_name(args[0])} or null"
    return {str: "a string", int: "an integer", float: "a number", list: "a list", dict: "an object"}.get(
        typing.get_origin(hint) or hint, str(hint))


def find_run_config(adapter_dir: Union[str, Path]) -> Optional[Path]:
    """``run.json`` of the run an adapter directory belongs to (the adapter dir or one of its parents)."""
    here = Path(adapter_dir).resolve()
    for d in (here, *here.parents):
        if (d / RUN_FILE).is_file():
            return d / RUN_FILE
    return None


@dataclass
class LoadedModel:
    """A model with what it needs to be fed and read: collators and a decoder."""

    model: Any
    train_collator: Callable
    eval_collator: Callable
    decode: Callable[[list], list]
    image_size: int
    tokenizer: Any = None
    info: dict = field(default_factory=dict)


@dataclass
class ModelSpec:
    """What ``--model`` names, found without loading weights (so a run can be checked first)."""

    spec: str
    kind: str              # "embedded", "base" (a folder holding an embedded base) or "hf"
    image_size: int
    config: Any = None     # the Hugging Face config ("base", "hf")


def resolve_model(spec: str) -> ModelSpec:
    """``embedded``, a folder holding an embedded base (``pretrain.json``), or a Hugging Face InstructBLIP /
    BLIP-2 checkpoint (local path or hub name); a ``ValueError`` for anything else."""
    if spec == "embedded":
        from .embedded import EmbeddedSpec

        return ModelSpec(spec, "embedded", EmbeddedSpec().image_size)
    from transformers import AutoConfig

    local = spec.startswith((".", "/", "~")) or Path(spec).exists()
    if not local and spec.count("/") != 1:  # not a hub name either: fail before any network attempt
        raise ValueError(f"--model {spec!r} is neither 'embedded', an existing folder, nor a Hugging Face "
                         "hub name (owner/name)")
    if local and not Path(spec).expanduser().is_dir():
        raise ValueError(f"--model {spec!r}: no such folder")
    try:
        config = AutoConfig.from_pretrained(str(Path(spec).expanduser()) if local else spec)
    except Exception as e:  # noqa: BLE001 - transformers raises several kinds for a bad name
        raise ValueError(f"--model {spec!r} is neither 'embedded', a cached embedded base, nor a loadable "
                         f"Hugging Face checkpoint ({type(e).__name__}: {e})") from None
    if config.model_type not in ("instructblip", "blip-2"):
        raise ValueError(f"--model {spec!r} is a {config.model_type!r} model; petal trains InstructBLIP and "
                         "BLIP-2 checkpoints (or 'embedded')")
    kind = "base" if (Path(spec) / "pretrain.json").is_file() else "hf"
    return ModelSpec(spec, kind, config.vision_config.image_size, config)


def load_model(spec: Union[str, ModelSpec], cache_dir: Union[str, Path, None] = None,
               log: Callable[[str], None] = print, max_length: int = 32, pretrain_steps: Optional[int] = None,
               progress: Optional[bool] = None) -> LoadedModel:
    """The model ``spec`` names (see :func:`resolve_model`). ``embedded`` is the pre-trained embedded
    base, built once and cached under ``cache_dir`` (default: the user's cache, see
    :func:`petal.embedded.cache_root`) with ``pretrain_steps`` (default: the standard recipe)."""
    from .data.collate import WordCollator

    found = spec if isinstance(spec, ModelSpec) else resolve_model(spec)
    if found.kind == "hf":
        return _load_hf(found)
    from .embedded import EmbeddedSpec, PretrainSettings, load_base, pretrain_base

    if found.kind == "embedded":
        settings = PretrainSettings() if pretrain_steps is None else PretrainSettings(steps=pretrain_steps)
        model, tok, info = pretrain_base(cache_dir, settings=settings, log=log, progress=progress)
    else:
        path = Path(found.spec)
        model, tok = load_base(path)
        info = json.loads((path / "pretrain.json").read_text())
    q = model.config.num_query_tokens
    size = model.config.vision_config.image_size
    return LoadedModel(model, WordCollator(tok, q, size, max_length=max_length),
                       WordCollator(tok, q, size, max_length=max_length), tok.batch_decode, size, tok,
                       {"kind": "embedded", **info, "spec": asdict(EmbeddedSpec())})


def _load_hf(found: ModelSpec) -> LoadedModel:
    from transformers import AutoProcessor

    from .data.collate import ProcessorCollator

    if found.config.model_type == "instructblip":
        from transformers import InstructBlipForConditionalGeneration as cls
    else:
        from transformers import Blip2ForConditionalGeneration as cls
    model = cls.from_pretrained(found.spec)
    processor = AutoProcessor.from_pretrained(found.spec)
    enc_dec = not found.config.use_decoder_only_language_model
    # a decoder-only LM's training batch has the target inside input_ids: evaluate it on prompts alone
    return LoadedModel(model, ProcessorCollator(processor, enc_dec),
                       ProcessorCollator(processor, enc_dec, with_labels=enc_dec),
                       lambda seqs: processor.batch_decode(seqs, skip_special_tokens=True), found.image_size,
                       processor, {"kind": "hf", "path": found.spec})


__all__ = ["LoadedModel", "ModelSpec", "RUN_FILE", "RunConfig", "find_run_config", "load_model",
           "resolve_model"]
