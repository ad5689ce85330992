"""``petal train``: train adapters into a run directory (checkpoints, metrics, the adapter).

Everything that can refuse a run (flags, config files, the run directory's state, the model name, the
data, the preset against the model) is checked before anything is written or pre-trained. Launched by
``torchrun`` / ``accelerate launch`` with several processes, they train one model; only the main process
writes and prints.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .args import families, non_negative_float, non_negative_int, positive_float, positive_int, preset
from .common import add_model_flags, fmt_count, load_split, metric_text, run_config

# what a resumed run may change; every other setting must stay as the run was started
RESUMABLE = ("epochs", "max_steps", "eval_every", "checkpoint_every", "keep_checkpoints", "eval_limit",
             "eval_split", "num_beams", "max_new_tokens", "output_dir", "extra")


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
    train.add_argument("--batch-size", type=positive_int, default=S,
                       help="records per process and step (default 16): N processes take N × this per step")
    train.add_argument("--gradient-accumulation-steps", type=positive_int, default=S)
    train.add_argument("--max-grad-norm", type=positive_float, default=S)
    train.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default=S)
    train.add_argument("--seed", type=non_negative_int, default=S,
                       help="fixes the adapter's initialisation, the data order and dropout (default 0)")
    train.add_argument("--eval-every", type=non_negative_int, default=S)
    train.add_argument("--checkpoint-every", type=non_negative_int, default=S)
    train.add_argument("--keep-checkpoints", type=positive_int, default=S)
    train.add_argument("--train-limit", type=positive_int, default=S, help="use only the first N training "
                       "records")
    train.add_argument("--few-shot", type=positive_int, default=S, help="train on N examples (VQA: "
                       "questions, captions: images) drawn with --seed; their ids go to few_shot_ids.json")
    train.add_argument("--data-path", default=S, help="hub data: a local copy of the hub repository (its "
                       "parquet files) or a data set saved with save_to_disk")
    train.add_argument("--data-revision", default=S, help="hub data: the revision to read")
    train.add_argument("--skip-bad-images", action="store_true", default=S,
                       help="folder data: leave out records whose image is missing or unreadable")
    train.add_argument("--eval-limit", type=positive_int, default=S, help="evaluate on the first N records")
    train.add_argument("--eval-split", choices=("val", "test"), default=S)
    train.add_argument("--num-beams", "--beams", dest="num_beams", type=positive_int, default=S)
    train.add_argument("--max-new-tokens", type=positive_int, default=S)
    train.add_argument("--pretrain-steps", type=positive_int, default=S,
                       help="embedded model: steps of its base's pre-training (default: the cached recipe)")
    train.add_argument("--output-dir", default=S, help="run directory (default runs/train)")
    train.add_argument("--resume", action="store_true", help="continue from the run's newest checkpoint")
    add_model_flags(train)


def _settings(run, progress, source: str):
    from ..train import TrainSettings

    try:
        return TrainSettings(
            epochs=run.epochs, max_steps=run.max_steps, batch_size=run.batch_size, lr=run.lr,
            weight_decay=run.weight_decay, warmup_steps=run.warmup_steps, max_grad_norm=run.max_grad_norm,
            gradient_accumulation_steps=run.gradient_accumulation_steps, seed=run.seed,
            eval_every=run.eval_every, checkpoint_every=run.checkpoint_every,
            keep_checkpoints=run.keep_checkpoints, mixed_precision=run.mixed_precision, progress=progress)
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from None


def _check_resume(run, config, out: Path, checkpoint: Path) -> None:
    """A resumed run continues the run as it was started: refuse changed settings or adapter config."""
    from ..adapter_io import read_adapter_config, read_adapter_weights
    from ..checkpoints import read_training_state
    from ..runs import RUN_FILE, RunConfig

    if (out / RUN_FILE).is_file():
        saved = RunConfig.from_file(out / RUN_FILE, what="run file").to_dict()
        now = run.to_dict()
        changed = [f"{k} {saved[k]!r} -> {now[k]!r}" for k in now
                   if k not in RESUMABLE and saved[k] != now[k]]
        if changed:
            raise ValueError(f"--resume continues the run in {out} as it was started; these settings differ "
                             f"from its {RUN_FILE}: {'; '.join(changed)} (only {', '.join(RESUMABLE[:-2])} "
                             "may change)")
    adapter = checkpoint / "adapter"
    if (adapter / "adapter_config.json").is_file():
        _, saved_config = read_adapter_config(adapter)
        diff = config.differences(saved_config)
        if diff:
            raise ValueError(f"--resume: the checkpoint {checkpoint} holds an adapter of another config "
                             f"(run != checkpoint): {'; '.join(diff)}")
        read_adapter_weights(adapter)
    read_training_state(checkpoint)


def run(args) -> int:
    import torch

    from .. import distributed as dist
    from ..data.collate import InstructionCollator
    from ..runs import load_model, resolve_model
    from ..train import check_data, check_output_dir, latest_checkpoint, train_model

    # ---- everything that can refuse the run, before anything is written or pre-trained
    run, source = run_config(args)
    if run.few_shot is not None and run.train_limit is not None:
        raise ValueError("--few-shot and --train-limit both choose the training records; give one")
    config = run.petal_config(source)
    settings = _settings(run, args.progress, source)
    out = Path(run.output_dir)
    processes = dist.launched_processes()
    checkpoint = check_output_dir(out, args.resume, settings, processes)
    if checkpoint is not None:
        _check_resume(run, config, out, checkpoint)
    found = resolve_model(run.model)
    train_data = load_split(run, "train", run.train_limit, found.image_size)
    few_shot_entry = None
    if run.few_shot is not None:
        from ..data.fewshot import take_few_shot

        train_data, few_shot_entry = take_few_shot(train_data, run.few_shot, run.seed, out,
                                                   resume=args.resume)
    eval_data = load_split(run, run.eval_split, run.eval_limit, found.image_size)
    check_data(len(train_data), settings, processes)
    main = dist.is_main_process()
    say = print if main else (lambda *a, **k: None)
    if dist.single_process_of_accelerate_cpu():
        print("petal train: warning: `accelerate launch --cpu` started one process (accelerate starts "
              "several CPU processes only through MPI); for N processes use `accelerate launch --multi_gpu "
              "--num_processes N` (a CPU group on a machine without GPUs) or `torchrun --nproc_per_node N`",
              file=sys.stderr)
    loaded = load_model(found, args.cache_dir, log=say, pretrain_steps=run.pretrain_steps,
                        progress=args.progress)
    import petal

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(run.seed)  # the adapter's initialisation is the run's, whatever ran before
        model = petal.patch(loaded.model, config)

    # ---- the run directory
    if main:
        out.mkdir(parents=True, exist_ok=True)
        run.save(out)
        if loaded.tokenizer is not None and hasattr(loaded.tokenizer, "save"):
            loaded.tokenizer.save(out / "tokenizer.json")
        if few_shot_entry is not None:
            from ..data.fewshot import record_few_shot

            record_few_shot(out, few_shot_entry)
    preset_name = run.preset if run.petal is None else "from config"
    per_step = f"batch {run.batch_size}" + (f" × {processes} processes" if processes > 1 else "")
    say(f"model {run.model}: {fmt_count(petal.trainable_parameters(model))} trainable parameters (preset "
        f"{preset_name}); data {run.data}: {len(train_data)} train / {len(eval_data)} {run.eval_split} "
        f"records; {per_step}")

    train_collator = InstructionCollator.for_config(loaded.train_collator, config, train=True)
    eval_collator = InstructionCollator.for_config(loaded.eval_collator, config, train=False)

    def eval_fn(m):
        return _evaluate(m, eval_data, loaded.decode, eval_collator, run)

    try:
        result = train_model(model, train_data, train_collator, settings, output_dir=out,
                             resume=args.resume, eval_fn=eval_fn, log=say)
    except KeyboardInterrupt:
        newest = latest_checkpoint(out)
        if main and newest is not None:
            print(f"\ninterrupted: the newest checkpoint is {newest}; continue with "
                  f"`petal train --output-dir {out} --resume`", file=sys.stderr)
        elif main:
            print("\ninterrupted before the first checkpoint", file=sys.stderr)
        return 130
    petal.save_adapter(model, out / "adapter")  # with several processes, rank 0 writes
    final = result.evals[-1][1] if result.evals else {}
    if main:
        summary = json.dumps({"step": result.step, **final}, indent=2)
        (out / f"eval_{run.eval_split}.json").write_text(summary + "\n")
    loss = f"{result.last_loss:.4f}" if result.last_loss is not None else "-"
    eval_loss = f"{final['loss']:.4f}" if final.get("loss") is not None else "-"
    say(f"trained {result.step} steps in {result.seconds:.0f} s; last train loss {loss}; "
        f"{run.eval_split} loss {eval_loss}, {metric_text(final)}")
    say(f"adapter: {out / 'adapter'}")
    return 0


def _evaluate(model, data, decode, collator, run) -> dict:
    """Loss and metrics on ``data``. With several processes each evaluates every N-th batch of the
    one-process run (the same batches, so the same loss) and the scores are computed over all records."""
    from torch.utils.data import Subset

    from .. import distributed as dist
    from ..adapter_io import is_sharded
    from ..evaluate import evaluate, score_rows

    rank, size = dist.world()
    bs = max(run.batch_size, 16)
    kwargs = dict(batch_size=bs, num_beams=run.num_beams, max_new_tokens=run.max_new_tokens)
    if size == 1 or is_sharded(model):  # FSDP: every forward is a collective, so all take the same batches
        r = evaluate(model, data, collator, decode, **kwargs)
        return {"loss": r["loss"], **{k: v for k, v in r["metrics"].items() if k != "by_family"}}
    starts = range(rank * bs, len(data), size * bs)
    share = Subset(data, [i for start in starts for i in range(start, min(start + bs, len(data)))])
    r = (evaluate(model, share, collator, decode, **kwargs) if len(share)
         else {"loss": None, "rows": [], "num_examples": 0})
    parts = dist.gather_objects((r["loss"], r["num_examples"], r["rows"]))
    counted = [(loss, n) for loss, n, _ in parts if loss is not None]
    loss = sum(loss * n for loss, n in counted) / sum(n for _, n in counted) if counted else None
    metrics = score_rows([row for _, _, rows in parts for row in rows])
    return {"loss": loss, **{k: v for k, v in metrics.items() if k != "by_family"}}
