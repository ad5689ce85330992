"""``petal train``: train adapters into a run directory (checkpoints, metrics, the adapter)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .args import families, non_negative_float, non_negative_int, positive_float, positive_int, preset
from .common import count_params, fmt_count, load_split, metric_text, run_config


def add_parser(sub) -> None:
    S = argparse.SUPPRESS  # flags left out fall back to --config, then to the defaults of RunConfig
    train = sub.add_parser("train", help="train adapters (a run directory with checkpoints and the adapter)")
    train.add_argument("--config", help="run.json with any of the flags below as keys (flags win)")
    train.add_argument("--model", default=S, help="'embedded' (default) or an InstructBLIP/BLIP-2 checkpoint")
    train.add_argument("--data", default=S, help="'synthetic' (default), flickr30k, textcaps, okvqa, "
                       "aokvqa, textvqa, or a folder (images + annotations.jsonl)")
    train.add_argument("--families", type=families, default=S,
                       help="synthetic data: comma-separated question families (default all)")
    train.add_argument("--domain", choices=("standard", "rotated"), default=S,
                       help="synthetic data: the camera (rotated = colour channels rotated)")
    train.add_argument("--preset", type=preset, default=S,
                       help="PETAL/VL-PET/baseline preset (default petal)")
    train.add_argument("--epochs", type=positive_float, default=S)
    train.add_argument("--max-steps", type=positive_int, default=S,
                       help="optimizer steps (overrides epochs)")
    train.add_argument("--lr", type=positive_float, default=S,
                       help="default 2e-5 (the paper's VQA recipe); the tiny embedded model wants ~3e-3")
    train.add_argument("--weight-decay", type=non_negative_float, default=S)
    train.add_argument("--warmup-steps", type=non_negative_int, default=S)
    train.add_argument("--batch-size", type=positive_int, default=S)
    train.add_argument("--gradient-accumulation-steps", type=positive_int, default=S)
    train.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default=S)
    train.add_argument("--seed", type=non_negative_int, default=S)
    train.add_argument("--eval-every", type=non_negative_int, default=S)
    train.add_argument("--checkpoint-every", type=non_negative_int, default=S)
    train.add_argument("--train-limit", type=positive_int, default=S, help="use only the first N training "
                       "records (synthetic: scenes)")
    train.add_argument("--few-shot", type=positive_int, default=S, help="train on N examples (VQA: "
                       "questions, captions: images) drawn with --seed; their ids go to few_shot_ids.json")
    train.add_argument("--data-path", default=S, help="hub data: a local copy of the hub repository (its "
                       "parquet files) or a data set saved with save_to_disk")
    train.add_argument("--data-revision", default=S, help="hub data: the revision to read")
    train.add_argument("--skip-bad-images", action="store_true", default=S,
                       help="folder data: leave out records whose image is missing or unreadable")
    train.add_argument("--eval-limit", type=positive_int, default=S)
    train.add_argument("--eval-split", choices=("val", "test"), default=S)
    train.add_argument("--num-beams", "--beams", dest="num_beams", type=positive_int, default=S)
    train.add_argument("--output-dir", default=S, help="run directory (default runs/train)")
    train.add_argument("--resume", action="store_true", help="continue from the run's newest checkpoint")
    train.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)


def run(args) -> int:
    from ..data.collate import InstructionCollator
    from ..evaluate import evaluate
    from ..runs import load_model
    from ..train import TrainSettings, train_model

    run = run_config(args)
    if run.few_shot is not None and run.train_limit is not None:
        raise ValueError("--few-shot and --train-limit both choose the training records; give one")
    config = run.petal_config()
    out = Path(run.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    loaded = load_model(run.model, out / "base", log=print)
    train_data = load_split(run, "train", run.train_limit, loaded.image_size)
    if run.few_shot is not None:
        from ..data.fewshot import take_few_shot

        train_data = take_few_shot(train_data, run.few_shot, run.seed, out, resume=args.resume)
    eval_data = load_split(run, run.eval_split, run.eval_limit, loaded.image_size)
    import petal

    model = petal.patch(loaded.model, config)
    trainable, total = count_params(model)
    run.save(out)
    if loaded.tokenizer is not None and hasattr(loaded.tokenizer, "save"):
        loaded.tokenizer.save(out / "tokenizer.json")
    preset = run.preset if run.petal is None else "from config"
    print(f"model {run.model}: {fmt_count(trainable, total)} trainable parameters (preset {preset}); "
          f"data {run.data}: {len(train_data)} train / {len(eval_data)} {run.eval_split} records")

    train_collator = InstructionCollator.for_config(loaded.train_collator, config, train=True)
    eval_collator = InstructionCollator.for_config(loaded.eval_collator, config, train=False)

    def eval_fn(m):
        r = evaluate(m, eval_data, eval_collator, loaded.decode, batch_size=max(run.batch_size, 16),
                     num_beams=run.num_beams, max_new_tokens=run.max_new_tokens)
        return {"loss": r["loss"], **{k: v for k, v in r["metrics"].items() if k != "by_family"}}

    settings = TrainSettings(
        epochs=run.epochs, max_steps=run.max_steps, batch_size=run.batch_size, lr=run.lr,
        weight_decay=run.weight_decay, warmup_steps=run.warmup_steps, max_grad_norm=run.max_grad_norm,
        gradient_accumulation_steps=run.gradient_accumulation_steps, seed=run.seed, eval_every=run.eval_every,
        checkpoint_every=run.checkpoint_every, keep_checkpoints=run.keep_checkpoints,
        mixed_precision=run.mixed_precision, progress=args.progress)
    try:
        result = train_model(model, train_data, train_collator, settings, output_dir=out,
                             resume=args.resume, eval_fn=eval_fn)
    except KeyboardInterrupt:
        print(f"\ninterrupted: a checkpoint is in {out / 'checkpoints'}; continue with "
              f"`petal train --output-dir {out} --resume`", file=sys.stderr)
        return 130
    petal.save_adapter(model, out / "adapter")
    final = result.evals[-1][1] if result.evals else {}
    summary = json.dumps({"step": result.step, **final}, indent=2)
    (out / f"eval_{run.eval_split}.json").write_text(summary + "\n")
    loss = f"{result.last_loss:.4f}" if result.last_loss is not None else "-"
    eval_loss = f"{final['loss']:.4f}" if final.get("loss") is not None else "-"
    print(f"trained {result.step} steps in {result.seconds:.0f} s; last train loss {loss}; "
          f"{run.eval_split} loss {eval_loss}, {metric_text(final)}")
    print(f"adapter: {out / 'adapter'}")
    return 0
