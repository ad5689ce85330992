"""Evaluation: the LM loss, beam-search generation, and the task metrics, overall and per question family
when the records name one. Each record is scored by the metric it names (``metric``: ``caption``, ``vqa``,
``aokvqa`` or ``exact``; see :mod:`petal.metrics.scores`)."""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from .data.collate import model_inputs
from .metrics import task_scores

GENERATE_KEYS = ("pixel_values", "qformer_input_ids", "qformer_attention_mask", "input_ids", "attention_mask")


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _is_encoder_decoder(model: torch.nn.Module) -> bool:
    lm = getattr(model, "language_model", None)
    return bool(getattr(getattr(lm, "config", None), "is_encoder_decoder", True))


@torch.no_grad()
def run(model: torch.nn.Module, loader: DataLoader, decode: Callable[[list], list[str]], num_beams: int = 5,
        max_new_tokens: int = 20, with_loss: bool = True, generate: bool = True) -> dict:
    """One pass over ``loader``: mean LM loss per example and the generated text of every record."""
    if isinstance(num_beams, bool) or not isinstance(num_beams, int) or num_beams < 1:
        raise ValueError(f"num_beams must be a positive integer, got {num_beams!r}")
    was_training = model.training
    model.eval()
    device = _device(model)
    loss_sum, count, rows = 0.0, 0, []
    try:
        for batch in loader:
            batch = _to(batch, device)
            meta, inputs = batch["meta"], model_inputs(batch)
            n = len(meta["ids"])
            if with_loss and "labels" in inputs:
                out = model(**inputs)
                lm = out.get("lm_loss") if hasattr(out, "get") else None
                loss_sum += float(lm if lm is not None else out.loss) * n
                count += n
            predictions = [None] * n
            if generate:
                gen_inputs = {k: inputs[k] for k in GENERATE_KEYS if k in inputs}
                seqs = model.generate(**gen_inputs, num_beams=num_beams, max_new_tokens=max_new_tokens,
                                      do_sample=False)
                if not _is_encoder_decoder(model) and seqs.shape[1] > inputs["input_ids"].shape[1]:
                    seqs = seqs[:, inputs["input_ids"].shape[1]:]
                predictions = [p.strip() for p in decode(seqs.tolist())]
            for i in range(n):
                rows.append({"id": meta["ids"][i], "task": meta["tasks"][i], "family": meta["families"][i],
                             "prompt": meta["prompts"][i], "prediction": predictions[i],
                             "answers": meta["answers"][i], **_scoring_fields(meta, i)})
    finally:
        model.train(was_training)
    return {"loss": loss_sum / count if count else None, "rows": rows}


def _scoring_fields(meta: dict, i: int) -> dict:
    """What scoring needs beyond the collators' meta: the record's metric and A-OKVQA's difficult flag."""
    return {k: meta[f"scoring_{k}"][i] for k in ("metric", "difficult") if f"scoring_{k}" in meta}


def with_scoring_fields(collator: Callable) -> Callable:
    """``collator`` whose batches also carry each record's ``metric`` and ``difficult`` in ``meta``."""
    def collate(records: Sequence[dict]) -> dict:
        batch = collator(records)
        batch["meta"]["scoring_metric"] = [r.get("metric") for r in records]
        batch["meta"]["scoring_difficult"] = [bool(r.get("difficult")) for r in records]
        return batch

    return collate


def score_rows(rows: Sequence[dict], cider_tokenizer: str = "auto",
               rouge_variant: str = "rouge-score") -> dict:
    """Metrics over all rows, plus ``by_family`` when rows come from several question families."""
    rows = [r for r in rows if r["prediction"] is not None]
    if not rows:
        return {}

    def scores(subset):
        return task_scores(subset, [r["prediction"] for r in subset], cider_tokenizer, rouge_variant)

    out = scores(rows)
    families = sorted({r["family"] for r in rows if r.get("family")})
    if len(families) > 1:
        out["by_family"] = {fam: scores([r for r in rows if r.get("family") == fam]) for fam in families}
    return out


def evaluate(model: torch.nn.Module, dataset: Dataset, collator: Callable, decode: Callable[[list], list],
             batch_size: int = 32, num_beams: int = 5, max_new_tokens: int = 20, limit: Optional[int] = None,
             with_loss: bool = True, generate: bool = True, cider_tokenizer: str = "auto",
             rouge_variant: str = "rouge-score") -> dict:
    """``{"loss", "metrics", "rows", "num_examples"}`` of ``model`` on (the first ``limit`` records of)
    ``dataset``. ``cider_tokenizer`` and ``rouge_variant``: see :mod:`petal.metrics`."""
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
        dataset = Subset(dataset, range(min(limit, len(dataset))))
    if len(dataset) == 0:
        raise ValueError("the evaluation data set is empty")
    collate = with_scoring_fields(collator)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    result = run(model, loader, decode, num_beams, max_new_tokens, with_loss, generate)
    return {"loss": result["loss"], "metrics": score_rows(result["rows"], cider_tokenizer, rouge_variant),
            "rows": result["rows"], "num_examples": len(dataset)}


def headline(metrics: dict) -> tuple[str, Optional[float]]:
    """The one number to show for a task: VQA accuracy, else CIDEr."""
    if "vqa_accuracy" in metrics:
        return "vqa_accuracy", metrics["vqa_accuracy"]
    if "cider" in metrics:
        return "cider", metrics["cider"]
    return "none", None


__all__ = ["evaluate", "headline", "run", "score_rows", "with_scoring_fields"]
