"""Turn lists of records into model batches.

* :class:`WordCollator` — processor-free, for the embedded default: word-level tokenizer, images
  resized to the model's size and normalised to [-1, 1].
* :class:`ProcessorCollator` — for real models through an ``InstructBlipProcessor`` (or any processor
  with the same call: ``processor(images=..., text=..., return_tensors="pt")``), for encoder-decoder
  (T5) and decoder-only (Vicuna/OPT) language models.

Both give the model inputs as tensors plus ``batch["meta"]`` (ids, tasks, prompts, references) that
training drops and evaluation scores against. Records follow :mod:`petal.data.sources`.

Several instructions per image: when the records carry ``instructions`` (a list of n strings, the same
n for every record of the batch), the Q-Former reads those — ``qformer_input_ids`` and
``qformer_attention_mask`` come out ``(batch, n, length)``, which a model patched with AIM merges — and
the language model still reads the record's prompt. :class:`InstructionCollator` decides what the
records carry, from a ``PetalConfig``'s ``instructions`` section.
"""

from __future__ import annotations

import random
import zlib
from collections import Counter
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .instructions import SOURCES as INSTRUCTION_SOURCES
from .instructions import choose_instructions

VQA_PROMPT = "Question: {} Short answer:"


def format_prompt(record: dict, vqa_template: str = VQA_PROMPT) -> str:
    """The LM prompt: the VQA template around a question, or a captioning instruction as it is."""
    question = record.get("question") or ""
    return vqa_template.format(question) if record.get("task") == "vqa" else question


def training_target(record: dict) -> str:
    """VQA: the most frequent answer (first on ties). Captions: one reference chosen by a hash of the
    record id, so the same record always trains on the same caption (and resuming replays exactly)."""
    answers = record.get("answers")
    if not answers or not all(isinstance(a, str) for a in answers):
        raise ValueError(f"record {record.get('id')!r} needs a non-empty list of answer strings, "
                         f"got {answers!r}")
    if record.get("task") == "vqa":
        return Counter(answers).most_common(1)[0][0]
    return answers[zlib.crc32(str(record.get("id")).encode()) % len(answers)]


def image_tensor(image: Any, size: int) -> torch.Tensor:
    """A ``3×size×size`` float tensor in [0, 1] from a tensor (``3×H×W`` in [0, 1]), array or PIL image."""
    if isinstance(image, torch.Tensor):
        t = image.float()
    elif isinstance(image, np.ndarray):
        t = torch.from_numpy(image).float()
        t = t.permute(2, 0, 1) / 255.0 if t.dim() == 3 and t.shape[-1] in (1, 3, 4) else t
    elif hasattr(image, "convert"):  # PIL
        t = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1) / 255.0
    else:
        raise TypeError(f"image must be a torch.Tensor, numpy array or PIL image, got {type(image).__name__}")
    if t.dim() != 3 or t.shape[0] not in (1, 3):
        raise ValueError(f"image must have shape (3, H, W) or (1, H, W), got {tuple(t.shape)}")
    if t.shape[0] == 1:
        t = t.expand(3, -1, -1)
    if t.shape[1:] != (size, size):
        t = F.interpolate(t[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
    return t


def to_pil(image: Any):
    """PIL image from a record's image (tensors in [0, 1] are scaled to 0-255)."""
    from PIL import Image

    if hasattr(image, "convert"):
        return image.convert("RGB")
    t = image_tensor(image, image.shape[-1]) if isinstance(image, torch.Tensor) else None
    if t is None:
        return Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("RGB")
    return Image.fromarray((t.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy())


def _meta(records: Sequence[dict], prompts: list[str]) -> dict:
    return {"ids": [r.get("id") for r in records], "tasks": [r.get("task") for r in records],
            "families": [r.get("family") for r in records], "prompts": prompts,
            "answers": [list(r.get("answers") or []) for r in records],
            "instructions": [list(r.get("instructions") or []) for r in records]}


def instruction_lists(records: Sequence[dict]) -> Optional[list[list[str]]]:
    """Each record's ``instructions``, or ``None`` when no record has any; a batch must not mix records
    with and without them, nor different numbers of them."""
    lists = [r.get("instructions") for r in records]
    if not any(lists):
        return None
    for r, found in zip(records, lists):
        if not found or isinstance(found, str) or not all(isinstance(t, str) and t.strip() for t in found):
            raise ValueError(f"record {r.get('id')!r}: 'instructions' must be a non-empty list of non-empty "
                             f"strings when other records of its batch have them, got {found!r}")
    counts = sorted({len(found) for found in lists})
    if len(counts) > 1:
        raise ValueError(f"the records of a batch must carry the same number of instructions, got {counts}")
    return [list(found) for found in lists]


def _unflatten(t: torch.Tensor, n: int) -> torch.Tensor:
    """(B·n, L) -> (B, n, L)."""
    return t.reshape(t.shape[0] // n, n, t.shape[1])


def _pad(rows: list[list[int]], value: int, left: bool = False) -> torch.Tensor:
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            if left:
                out[i, width - len(r):] = torch.tensor(r)
            else:
                out[i, :len(r)] = torch.tensor(r)
    return out


class WordCollator:
    """Batches for the embedded model: ``pixel_values`` (normalised to [-1, 1]), the prompt for the
    Q-Former (``qformer_input_ids``) and for the T5 encoder behind ``num_query_tokens`` image
    placeholders (``input_ids``), and ``labels`` (target + ``</s>``, padding = -100)."""

    def __init__(self, tokenizer, num_query_tokens: int, image_size: int, vqa_template: str = VQA_PROMPT,
                 max_length: int = 32, with_labels: bool = True):
        if "{}" not in vqa_template:
            raise ValueError(f"vqa_template must contain '{{}}' for the question, got {vqa_template!r}")
        self.tokenizer, self.num_query_tokens, self.image_size = tokenizer, num_query_tokens, image_size
        self.vqa_template, self.max_length, self.with_labels = vqa_template, max_length, with_labels

    def __call__(self, records: Sequence[dict]) -> dict:
        if not records:
            raise ValueError("cannot collate an empty list of records")
        tok = self.tokenizer
        prompts = [format_prompt(r, self.vqa_template) for r in records]
        prompt_ids = [tok.encode(p)[-self.max_length:] for p in prompts]
        lm_ids = [[tok.image_token_id] * self.num_query_tokens + ids for ids in prompt_ids]
        instructions = instruction_lists(records)
        qformer_ids = prompt_ids
        if instructions is not None:
            qformer_ids = [tok.encode(t)[-self.max_length:] for texts in instructions for t in texts]
        batch = {
            "pixel_values": torch.stack([image_tensor(r["image"], self.image_size) for r in records]) * 2 - 1,
            "qformer_input_ids": _pad(qformer_ids, tok.pad_token_id),
            "qformer_attention_mask": _pad([[1] * len(p) for p in qformer_ids], 0),
            "input_ids": _pad(lm_ids, tok.pad_token_id),
            "attention_mask": _pad([[1] * len(p) for p in lm_ids], 0),
        }
        if instructions is not None:
            n = len(instructions[0])
            for key in ("qformer_input_ids", "qformer_attention_mask"):
                batch[key] = _unflatten(batch[key], n)
        if self.with_labels:
            targets = [tok.encode(training_target(r))[: self.max_length] for r in records]
            batch["labels"] = _pad(targets, -100)
        batch["meta"] = _meta(records, prompts)
        return batch


class ProcessorCollator:
    """Batches for a real InstructBLIP / BLIP-2 through its processor.

    ``encoder_decoder=True`` (T5): ``labels`` are the tokenised targets. ``False`` (decoder-only LM):
    the target and EOS are appended to each prompt, ``labels`` are -100 on the prompt and padding;
    with ``with_labels=False`` (generation) prompts are left-padded instead.
    """

    def __init__(self, processor, encoder_decoder: bool = True, vqa_template: str = VQA_PROMPT,
                 max_length: int = 128, max_target_length: int = 32, with_labels: bool = True):
        if not callable(processor) or not hasattr(processor, "tokenizer"):
            raise TypeError(f"processor must be a transformers processor with a .tokenizer, got "
                            f"{type(processor).__name__}")
        if "{}" not in vqa_template:
            raise ValueError(f"vqa_template must contain '{{}}' for the question, got {vqa_template!r}")
        self.processor, self.encoder_decoder, self.vqa_template = processor, encoder_decoder, vqa_template
        self.max_length, self.max_target_length, self.with_labels = max_length, max_target_length, with_labels

    def __call__(self, records: Sequence[dict]) -> dict:
        if not records:
            raise ValueError("cannot collate an empty list of records")
        tok = self.processor.tokenizer
        prompts = [format_prompt(r, self.vqa_template) for r in records]
        images = [to_pil(r["image"]) for r in records]
        decoder_only_train = self.with_labels and not self.encoder_decoder
        if not self.encoder_decoder:
            tok.padding_side = "right" if self.with_labels else "left"
        if decoder_only_train:  # ragged prompts: the targets are appended before padding
            enc = self.processor(images=images, text=prompts, padding=False, truncation=True,
                                 max_length=self.max_length)
            batch = {"pixel_values": torch.as_tensor(np.stack([np.asarray(p) for p in enc["pixel_values"]]))}
            batch.update(self._decoder_only(enc, records, tok))
        else:
            enc = self.processor(images=images, text=prompts, return_tensors="pt", padding=True,
                                 truncation=True, max_length=self.max_length)
            batch = {k: v for k, v in enc.items() if isinstance(v, torch.Tensor)}
            if self.with_labels:
                lab = tok([training_target(r) for r in records], padding=True, truncation=True,
                          max_length=self.max_target_length, return_tensors="pt")
                batch["labels"] = lab["input_ids"].masked_fill(lab["attention_mask"] == 0, -100)
        batch.update(self._instructions(records))
        batch["meta"] = _meta(records, prompts)
        return batch

    def _instructions(self, records: Sequence[dict]) -> dict:
        """(B, n, L) Q-Former ids and mask of the records' instructions (nothing when they have none)."""
        instructions = instruction_lists(records)
        if instructions is None:
            return {}
        qtok = getattr(self.processor, "qformer_tokenizer", None)
        if qtok is None:
            raise ValueError(f"the records carry instructions for the Q-Former, but "
                             f"{type(self.processor).__name__} has no qformer_tokenizer (BLIP-2 reads none)")
        enc = qtok([t for texts in instructions for t in texts], padding=True, truncation=True,
                   max_length=self.max_length, return_tensors="pt")
        n = len(instructions[0])
        return {"qformer_input_ids": _unflatten(enc["input_ids"], n),
                "qformer_attention_mask": _unflatten(enc["attention_mask"], n)}

    def _decoder_only(self, enc, records: Sequence[dict], tok) -> dict:
        eos = tok.eos_token_id
        pad = tok.pad_token_id if tok.pad_token_id is not None else eos
        ids, labels = [], []
        for prompt_ids, r in zip(enc["input_ids"], records):
            prompt_ids = [int(i) for i in prompt_ids]
            target = tok(training_target(r), add_special_tokens=False)["input_ids"][: self.max_target_length]
            target = list(target) + [eos]
            ids.append(prompt_ids + target)
            labels.append([-100] * len(prompt_ids) + target)
        input_ids = _pad(ids, pad)
        out = {"input_ids": input_ids, "attention_mask": _pad([[1] * len(i) for i in ids], 0),
               "labels": _pad(labels, -100)}
        if "qformer_input_ids" in enc:
            qtok = getattr(self.processor, "qformer_tokenizer", tok)
            qpad = qtok.pad_token_id if qtok.pad_token_id is not None else 0
            q = [[int(i) for i in x] for x in enc["qformer_input_ids"]]
            out["qformer_input_ids"] = _pad(q, qpad)
            out["qformer_attention_mask"] = _pad([[1] * len(x) for x in q], 0)
        return out


class InstructionCollator:
    """Puts on each record the instructions a ``PetalConfig``'s ``instructions`` section asks for
    (:func:`~petal.data.instructions.choose_instructions`), then calls ``collator``.

    ``merges=False`` (a model that cannot merge several instructions per image) strips them: the
    Q-Former reads the prompt. ``fresh_draws`` (training) draws ``"random"`` instructions per batch,
    seeded by torch's initial seed and the ids of the batch's records in order: a reshuffled epoch
    draws anew, and a resumed run (which rebuilds the same batches) draws what the interrupted one
    did. Without it (evaluation) each record's draw follows from its id alone.
    """

    def __init__(self, collator, source: str = "record", count: int = 3, merges: bool = True,
                 fresh_draws: bool = False):
        if source not in INSTRUCTION_SOURCES:
            raise ValueError(f"source must be one of {INSTRUCTION_SOURCES}, got {source!r}")
        self.collator, self.source, self.count = collator, source, count
        self.merges, self.fresh_draws = merges, fresh_draws

    @classmethod
    def for_config(cls, collator, config, train: bool) -> InstructionCollator:
        """From a ``PetalConfig`` (``None``: an unpatched model, which reads one instruction)."""
        if config is None:
            return cls(collator, merges=False)
        settings = config.instructions
        return cls(collator, settings.source, settings.count, config.merges_instructions, fresh_draws=train)

    def __call__(self, records: Sequence[dict]) -> dict:
        rng = None
        if self.fresh_draws and self.source == "random":
            ids = "/".join(str(r.get("id")) for r in records)
            rng = random.Random(f"petal-instructions/{torch.initial_seed()}/{ids}")
        chosen = [choose_instructions(r, self.source, self.count, rng) if self.merges else None
                  for r in records]
        return self.collator([{**r, "instructions": c} for r, c in zip(records, chosen)])


def model_inputs(batch: dict) -> dict:
    """The batch without ``meta`` (what the model is called with)."""
    return {k: v for k, v in batch.items() if k != "meta"}


__all__ = ["InstructionCollator", "ProcessorCollator", "VQA_PROMPT", "WordCollator", "format_prompt",
           "image_tensor", "instruction_lists", "model_inputs", "to_pil", "training_target"]
