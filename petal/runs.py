"""What a run is made of: the model (embedded default or a Hugging Face checkpoint), its collators and
decoder, and the run configuration saved as ``run.json`` (flags and ``--config`` files share its keys)."""

from __future__ import annotations

import json
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
    batch_size: int = 16
    max_grad_norm: float = 1.0
    gradient_accumulation_steps: int = 1
    mixed_precision: str = "no"
    seed: int = 0
    eval_every: int = 0
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    train_limit: Optional[int] = None
    few_shot: Optional[int] = None      # train on this many examples drawn with the seed (petal.data.fewshot)
    data_path: Optional[str] = None     # hub data: a local copy of the repository or a saved data set
    data_revision: Optional[str] = None  # hub data: the revision to read
    skip_bad_images: bool = False       # folder data: leave out records whose image is missing or unreadable
    eval_limit: Optional[int] = None
    eval_split: str = "val"
    num_beams: int = 5
    max_new_tokens: int = 20
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
        return cls(**data)

    @classmethod
    def from_file(cls, path: Union[str, Path]) -> RunConfig:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"--config {path} does not exist")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"--config {path} is not valid JSON ({e})") from None
        return cls.from_dict(data, str(path))

    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, directory: Union[str, Path]) -> Path:
        path = Path(directory) / RUN_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    def petal_config(self):
        import petal

        if self.petal is not None:
            return petal.PetalConfig.from_dict(self.petal)
        return petal.PetalConfig.from_preset(self.preset)


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


def load_model(spec: str, base_dir: Union[str, Path], log: Callable[[str], None] = print,
               max_length: int = 32) -> LoadedModel:
    """``embedded`` (the pre-trained embedded base, cached in ``base_dir``), a folder holding a cached
    embedded base, or a Hugging Face InstructBLIP / BLIP-2 checkpoint (local path or hub name)."""
    from .data.collate import WordCollator

    path = Path(spec)
    if spec == "embedded" or (path / "pretrain.json").is_file():
        from .embedded import EmbeddedSpec, load_base, pretrain_base

        if spec == "embedded":
            model, tok, info = pretrain_base(base_dir, log=log)
        else:
            model, tok = load_base(path)
            info = json.loads((path / "pretrain.json").read_text())
        q = model.config.num_query_tokens
        size = model.config.vision_config.image_size
        return LoadedModel(model, WordCollator(tok, q, size, max_length=max_length),
                           WordCollator(tok, q, size, max_length=max_length), tok.batch_decode, size, tok,
                           {"kind": "embedded", **info, "spec": asdict(EmbeddedSpec())})
    return _load_hf(spec)


def _load_hf(spec: str) -> LoadedModel:
    from transformers import AutoConfig, AutoProcessor

    from .data.collate import ProcessorCollator

    try:
        config = AutoConfig.from_pretrained(spec)
    except Exception as e:  # noqa: BLE001 - transformers raises several kinds for a bad name
        raise ValueError(f"--model {spec!r} is neither 'embedded', a cached embedded base, nor a loadable "
                         f"Hugging Face checkpoint ({type(e).__name__}: {e})") from None
    if config.model_type == "instructblip":
        from transformers import InstructBlipForConditionalGeneration as cls
    elif config.model_type == "blip-2":
        from transformers import Blip2ForConditionalGeneration as cls
    else:
        raise ValueError(f"--model {spec!r} is a {config.model_type!r} model; petal trains InstructBLIP and "
                         "BLIP-2 checkpoints (or 'embedded')")
    model = cls.from_pretrained(spec)
    processor = AutoProcessor.from_pretrained(spec)
    enc_dec = not config.use_decoder_only_language_model
    size = config.vision_config.image_size
    # a decoder-only LM's training batch has the target inside input_ids: evaluate it on prompts alone
    return LoadedModel(model, ProcessorCollator(processor, enc_dec),
                       ProcessorCollator(processor, enc_dec, with_labels=enc_dec),
                       lambda seqs: processor.batch_decode(seqs, skip_special_tokens=True), size, processor,
                       {"kind": "hf", "path": spec})


__all__ = ["LoadedModel", "RUN_FILE", "RunConfig", "find_run_config", "load_model"]
