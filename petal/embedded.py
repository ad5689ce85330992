"""The embedded default: a small InstructBLIP-shaped model built from configs (random init, no download).

``InstructBlipForConditionalGeneration`` with a tiny ViT (32×32 images, 8×8 patches), a Q-Former with
query tokens and cross-attention in every layer, and a tiny T5 language model, over the word-level
vocabulary of :mod:`petal.data.tokenizer` (shared by the Q-Former and the T5).

A frozen *random* vision encoder and LM make adapter tuning meaningless, so the embedded base model is
first pre-trained by full fine-tuning on the synthetic colour questions ("what colour is the circle?"),
standard camera (:func:`pretrain_base`), once per machine: the result is cached under the user's cache
directory (:func:`cache_root`), keyed by a fingerprint of everything that defines it, and shared by
``petal demo``, ``train`` and ``eval``. The demo then moves it to a
camera it never saw, whose colour channels are rotated (``domain="rotated"``: red objects look blue):
the base answers those questions badly, and PETAL adapts its Q-Former — vision encoder and T5 frozen —
to the new camera.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional, Union

import torch

from .data.tokenizer import WordTokenizer, embedded_tokenizer

BASE_FAMILIES = ("colour",)
DEMO_DOMAIN = "rotated"
# for the log's estimate: 800 pre-training steps took 35-48 s on one thread of a shared 2-core CPU
PRETRAIN_SECONDS_PER_STEP = 0.05


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


CACHE_ENV = "PETAL_CACHE"
BASES_DIR = "embedded-base"


def cache_root(override: Union[str, Path, None] = None) -> Path:
    """Where petal caches what it builds: ``override`` (``--cache-dir``), else ``$PETAL_CACHE``, else
    ``$XDG_CACHE_HOME/petal``, else ``~/.cache/petal``."""
    if override is not None:
        return Path(override).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "petal"


def base_path(cache_dir: Union[str, Path, None] = None, spec: EmbeddedSpec = EmbeddedSpec(),
              settings: PretrainSettings = PretrainSettings()) -> Path:
    """The cache entry of the base that ``spec`` and ``settings`` define."""
    return cache_root(cache_dir) / BASES_DIR / _fingerprint(spec, settings, embedded_tokenizer())


def _cached(path: Path):
    """The base cached at ``path`` (its name is the fingerprint), or None."""
    marker = path / "pretrain.json"
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or info.get("fingerprint") != path.name:
        return None
    model, tokenizer = load_base(path)
    return model, tokenizer, {**info, "cached": True, "path": str(path)}


def pretrain_base(cache_dir: Union[str, Path, None] = None, spec: EmbeddedSpec = EmbeddedSpec(),
                  settings: PretrainSettings = PretrainSettings(), log: Callable[[str], None] = print,
                  progress: Optional[bool] = None):
    """The embedded base model, pre-trained (all weights) on the base families; built once and cached in
    :func:`base_path` (``cache_dir``: the cache root, default :func:`cache_root`).

    Processes that need it at once wait for one to build it: ``torchrun`` ranks for rank 0 (transformers
    writes weights only on rank 0 of a process group), separate runs through a file lock; the builder
    writes into a temporary directory renamed into place. ``progress``: a progress bar while
    pre-training (None: when stderr is a terminal). Returns ``(model, tokenizer, info)``;
    ``info["cached"]`` says whether the cache was used.
    """
    from .distributed import launched_with_several_processes, process_state

    path = base_path(cache_dir, spec, settings)
    found = _cached(path)
    if found is not None:
        return found
    if launched_with_several_processes():
        with process_state().main_process_first():
            return _build_once(path, spec, settings, log, progress)
    return _build_once(path, spec, settings, log, progress)


def _build_once(path: Path, spec: EmbeddedSpec, settings: PretrainSettings, log: Callable[[str], None],
                progress: Optional[bool]):
    from filelock import FileLock, Timeout

    from .data.collate import WordCollator
    from .data.synthetic import SyntheticShapes
    from .train import TrainSettings, train_model

    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path) + ".lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log(f"waiting for another process that is pre-training the embedded base into {path}")
        lock.acquire()
    try:
        found = _cached(path)
        if found is not None:
            return found
        model, tokenizer = build_embedded_model(seed=settings.seed, spec=spec)
        model.requires_grad_(True)
        data = SyntheticShapes("train", seed=settings.data_seed, families=settings.families,
                               image_size=spec.image_size)
        collator = WordCollator(tokenizer, spec.num_query_tokens, spec.image_size)
        start = time.perf_counter()
        # the per-step time is measured for the default spec and batch only; another model gets no guess
        about = (f"; about {max(1, round(settings.steps * PRETRAIN_SECONDS_PER_STEP))} s on one CPU thread"
                 if spec == EmbeddedSpec() and settings.batch_size == PretrainSettings.batch_size else "")
        log(f"pre-training the embedded base model once for this machine ({settings.steps} steps of batch "
            f"{settings.batch_size}, all weights{about}) -> {path}")
        result = train_model(model, data, collator, TrainSettings(
            max_steps=settings.steps, batch_size=settings.batch_size, lr=settings.lr,
            weight_decay=settings.weight_decay, warmup_steps=settings.warmup_steps, seed=settings.seed,
            progress=progress, checkpoint_every=0), log=log, distributed=False, desc="pre-train base")
        model.eval()
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        save_base(model, tokenizer, tmp, {"fingerprint": path.name, "steps": settings.steps,
                                          "final_loss": result.last_loss,
                                          "seconds": round(time.perf_counter() - start, 1)})
        _replace_dir(tmp, path)
        info = json.loads((path / "pretrain.json").read_text())
        return model, tokenizer, {**info, "cached": False, "path": str(path)}
    finally:
        lock.release()


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


__all__ = ["BASE_FAMILIES", "CACHE_ENV", "DEMO_DOMAIN", "EmbeddedSpec", "PretrainSettings", "base_path",
           "build_embedded_model", "cache_root", "embedded_config", "load_base", "pretrain_base", "save_base"]
