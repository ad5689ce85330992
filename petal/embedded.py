"""The embedded default: a small InstructBLIP-shaped model built from configs (random init, no download).

``InstructBlipForConditionalGeneration`` with a tiny ViT (32×32 images, 8×8 patches), a Q-Former with
query tokens and cross-attention in every layer, and a tiny T5 language model, over the word-level
vocabulary of :mod:`petal.data.tokenizer` (shared by the Q-Former and the T5).

A frozen *random* vision encoder and LM make adapter tuning meaningless, so the embedded base model is
first pre-trained by full fine-tuning on the synthetic colour questions ("what colour is the circle?"),
standard camera (:func:`pretrain_base`, cached under the run directory). The demo then moves it to a
camera it never saw, whose colour channels are rotated (``domain="rotated"``: red objects look blue):
the base answers those questions badly, and PETAL adapts its Q-Former — vision encoder and T5 frozen —
to the new camera.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional, Union

import torch

from .data.tokenizer import WordTokenizer, embedded_tokenizer

BASE_FAMILIES = ("colour",)
DEMO_DOMAIN = "rotated"


@dataclass(frozen=True)
class EmbeddedSpec:
    image_size: int = 32
    patch_size: int = 8
    vision_hidden: int = 64
    vision_layers: int = 2
    qformer_hidden: int = 64
    qformer_layers: int = 2
    num_query_tokens: int = 8
    lm_hidden: int = 64
    lm_layers: int = 2
    heads: int = 4
    max_text_length: int = 32
    # init std of the ViT, the Q-Former and the projections: larger than BLIP's (1e-10 / 0.02, which
    # suit loading pretrained weights) so the queries depend on the image from the first step
    vision_init: float = 0.1
    qformer_init: float = 0.2
    init: float = 0.1


def embedded_config(vocab_size: int, image_token_id: int, spec: EmbeddedSpec = EmbeddedSpec()):
    from transformers import InstructBlipConfig

    vision = dict(hidden_size=spec.vision_hidden, intermediate_size=2 * spec.vision_hidden,
                  num_hidden_layers=spec.vision_layers, num_attention_heads=spec.heads,
                  image_size=spec.image_size, patch_size=spec.patch_size, attention_dropout=0.0,
                  initializer_range=spec.vision_init)
    qformer = dict(hidden_size=spec.qformer_hidden, num_hidden_layers=spec.qformer_layers,
                   num_attention_heads=spec.heads, intermediate_size=2 * spec.qformer_hidden,
                   encoder_hidden_size=spec.vision_hidden, cross_attention_frequency=1,
                   vocab_size=vocab_size, pad_token_id=0, max_position_embeddings=spec.max_text_length,
                   hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                   initializer_range=spec.qformer_init)
    text = dict(model_type="t5", vocab_size=vocab_size, d_model=spec.lm_hidden,
                d_kv=spec.lm_hidden // spec.heads, d_ff=2 * spec.lm_hidden, num_layers=spec.lm_layers,
                num_decoder_layers=spec.lm_layers, num_heads=spec.heads, dropout_rate=0.0,
                pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, bos_token_id=0)
    return InstructBlipConfig(vision_config=vision, qformer_config=qformer, text_config=text,
                              num_query_tokens=spec.num_query_tokens, image_token_index=image_token_id,
                              initializer_range=spec.init)


def build_embedded_model(tokenizer: Optional[WordTokenizer] = None, seed: int = 0,
                         spec: EmbeddedSpec = EmbeddedSpec()):
    """A freshly initialised embedded model (and its tokenizer)."""
    from transformers import InstructBlipForConditionalGeneration

    tokenizer = tokenizer or embedded_tokenizer()
    torch.manual_seed(seed)
    config = embedded_config(len(tokenizer), tokenizer.image_token_id, spec)
    model = InstructBlipForConditionalGeneration(config)
    # transformers zero-initialises the query tokens (real checkpoints overwrite them); identical queries
    # would stay identical forever, so draw them as LAVIS does for a fresh Q-Former
    with torch.no_grad():
        model.query_tokens.normal_(0.0, 0.02)
    return model.eval(), tokenizer


@dataclass(frozen=True)
class PretrainSettings:
    steps: int = 800
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 20
    seed: int = 0
    data_seed: int = 0
    families: tuple = BASE_FAMILIES     # question families of the pre-training data


def _fingerprint(spec: EmbeddedSpec, settings: PretrainSettings, tokenizer: WordTokenizer) -> str:
    pretrain = asdict(settings)
    families = list(pretrain.pop("families"))  # keyed as before, so the default's fingerprint is unchanged
    blob = json.dumps({"spec": asdict(spec), "pretrain": pretrain, "vocab": tokenizer.vocab,
                       "families": families, "version": 7}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_base(path: Union[str, Path]):
    """A cached pre-trained base (``save_pretrained`` layout plus ``tokenizer.json``) and its tokenizer."""
    from transformers import InstructBlipForConditionalGeneration

    path = Path(path)
    tokenizer = WordTokenizer.load(path / "tokenizer.json")
    with _quiet_transformers():
        model = InstructBlipForConditionalGeneration.from_pretrained(str(path))
    return model.eval(), tokenizer


def pretrain_base(cache_dir: Union[str, Path], spec: EmbeddedSpec = EmbeddedSpec(),
                  settings: PretrainSettings = PretrainSettings(), log: Callable[[str], None] = print):
    """The embedded base model, pre-trained (all weights) on the base families; cached in ``cache_dir``.

    Returns ``(model, tokenizer, info)``; ``info["cached"]`` says whether the cache was used.
    """
    from .data.collate import WordCollator
    from .data.synthetic import SyntheticShapes
    from .train import TrainSettings, train_model

    cache_dir = Path(cache_dir)
    tokenizer = embedded_tokenizer()
    fingerprint = _fingerprint(spec, settings, tokenizer)
    marker = cache_dir / "pretrain.json"
    if marker.is_file() and json.loads(marker.read_text()).get("fingerprint") == fingerprint:
        model, tokenizer = load_base(cache_dir)
        return model, tokenizer, {**json.loads(marker.read_text()), "cached": True}

    model, tokenizer = build_embedded_model(tokenizer, seed=settings.seed, spec=spec)
    model.requires_grad_(True)
    data = SyntheticShapes("train", seed=settings.data_seed, families=settings.families,
                           image_size=spec.image_size)
    collator = WordCollator(tokenizer, spec.num_query_tokens, spec.image_size)
    start = time.perf_counter()
    log(f"pre-training the embedded base model ({settings.steps} steps, all weights) -> {cache_dir}")
    result = train_model(model, data, collator, TrainSettings(
        max_steps=settings.steps, batch_size=settings.batch_size, lr=settings.lr,
        weight_decay=settings.weight_decay, warmup_steps=settings.warmup_steps, seed=settings.seed,
        progress=False, checkpoint_every=0))
    model.eval()
    tmp = cache_dir.with_name(cache_dir.name + ".tmp")
    save_base(model, tokenizer, tmp, {"fingerprint": fingerprint, "steps": settings.steps,
                                        "final_loss": result.last_loss,
                                        "seconds": round(time.perf_counter() - start, 1)})
    _replace_dir(tmp, cache_dir)
    return model, tokenizer, {**json.loads(marker.read_text()), "cached": False}


def save_base(model, tokenizer: WordTokenizer, path: Union[str, Path], info: dict) -> None:
    """Write a base model in the layout :func:`load_base` (and ``--model <dir>``) reads."""
    import shutil

    path = Path(path)

    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    with _quiet_transformers():
        model.save_pretrained(str(path))
    tokenizer.save(path / "tokenizer.json")
    (path / "pretrain.json").write_text(json.dumps(info, indent=2) + "\n")


@contextlib.contextmanager
def _quiet_transformers():
    """No per-shard progress bars while the tiny base model is saved or loaded."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _replace_dir(src: Path, dst: Path) -> None:
    import shutil

    if dst.exists():
        old = dst.with_name(dst.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        dst.rename(old)
        src.rename(dst)
        shutil.rmtree(old)
    else:
        src.rename(dst)


__all__ = ["BASE_FAMILIES", "DEMO_DOMAIN", "EmbeddedSpec", "PretrainSettings", "build_embedded_model",
           "embedded_config", "load_base", "pretrain_base", "save_base"]
