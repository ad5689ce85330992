"""The ``petal`` command: ``demo``, ``train``, ``eval``, ``presets``. Run ``petal <command> -h``."""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

DEMO_DIR = "runs/demo"


# ---------------------------------------------------------------------- argument types


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def _families(text: str) -> list:
    from .data.synthetic import FAMILIES

    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in FAMILIES]
    if not names or bad:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list drawn from {', '.join(FAMILIES)}, "
                                         f"got {text!r}")
    return names


def _preset(text: str) -> str:
    from .presets import PRESETS

    if text not in PRESETS:
        raise argparse.ArgumentTypeError(f"unknown preset {text!r}; choose from {', '.join(sorted(PRESETS))}")
    return text


# ---------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="petal", description="Parameter-efficient tuning of vision-language models (PETAL, VL-PET): "
        "train, evaluate, and a CPU demo.")
    parser.add_argument("--threads", type=_positive_int, default=None,
                        help="torch CPU threads (default: 1 for demo, else torch's choice)")
    sub = parser.add_subparsers(dest="command", metavar="{demo,train,eval,presets}")
    sub.required = True

    demo = sub.add_parser("demo", help="pre-train the embedded model, PETAL-tune it, compare before/after")
    demo.add_argument("--output-dir", default=DEMO_DIR, help=f"where everything goes (default {DEMO_DIR})")
    demo.add_argument("--steps", type=_positive_int, default=400, help="PETAL training steps (default 400)")
    demo.add_argument("--pretrain-steps", type=_positive_int, default=None,
                      help="steps of the base model's pre-training (default: the cached recipe)")
    demo.add_argument("--lr", type=_positive_float, default=3e-3, help="PETAL learning rate (default 3e-3)")
    demo.add_argument("--batch-size", type=_positive_int, default=32)
    demo.add_argument("--beams", type=_positive_int, default=5, help="beam search width (default 5)")
    demo.add_argument("--test-scenes", type=_positive_int, default=200)
    demo.add_argument("--preset", type=_preset, default="petal")
    demo.add_argument("--progress", action="store_true", help="show a progress bar while training")

    S = argparse.SUPPRESS  # flags left out fall back to --config, then to the defaults of RunConfig
    train = sub.add_parser("train", help="train adapters (a run directory with checkpoints and the adapter)")
    train.add_argument("--config", help="run.json with any of the flags below as keys (flags win)")
    train.add_argument("--model", default=S, help="'embedded' (default) or an InstructBLIP/BLIP-2 checkpoint")
    train.add_argument("--data", default=S, help="'synthetic' (default), flickr30k, textcaps, okvqa, "
                       "aokvqa, textvqa, or a folder (images + annotations.jsonl)")
    train.add_argument("--families", type=_families, default=S,
                       help="synthetic data: comma-separated question families (default all)")
    train.add_argument("--domain", choices=("standard", "rotated"), default=S,
                       help="synthetic data: the camera (rotated = colour channels rotated)")
    train.add_argument("--preset", type=_preset, default=S,
                       help="PETAL/VL-PET/baseline preset (default petal)")
    train.add_argument("--epochs", type=_positive_float, default=S)
    train.add_argument("--max-steps", type=_positive_int, default=S,
                       help="optimizer steps (overrides epochs)")
    train.add_argument("--lr", type=_positive_float, default=S,
                       help="default 2e-5 (the paper's VQA recipe); the tiny embedded model wants ~3e-3")
    train.add_argument("--weight-decay", type=_non_negative_float, default=S)
    train.add_argument("--warmup-steps", type=_non_negative_int, default=S)
    train.add_argument("--batch-size", type=_positive_int, default=S)
    train.add_argument("--gradient-accumulation-steps", type=_positive_int, default=S)
    train.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default=S)
    train.add_argument("--seed", type=_non_negative_int, default=S)
    train.add_argument("--eval-every", type=_non_negative_int, default=S)
    train.add_argument("--checkpoint-every", type=_non_negative_int, default=S)
    train.add_argument("--train-limit", type=_positive_int, default=S, help="use only this many training "
                       "records (synthetic: scenes)")
    train.add_argument("--eval-limit", type=_positive_int, default=S)
    train.add_argument("--eval-split", choices=("val", "test"), default=S)
    train.add_argument("--num-beams", "--beams", dest="num_beams", type=_positive_int, default=S)
    train.add_argument("--output-dir", default=S, help="run directory (default runs/train)")
    train.add_argument("--resume", action="store_true", help="continue from the run's newest checkpoint")
    train.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)

    ev = sub.add_parser("eval", help="evaluate a saved adapter (or the base model)")
    target = ev.add_mutually_exclusive_group(required=True)
    target.add_argument("--adapter",
                        help="adapter directory (adapter_config.json + adapter_model.safetensors)")
    target.add_argument("--base-only", action="store_true", help="evaluate the model without an adapter")
    ev.add_argument("--model", help="default: the model of the run the adapter belongs to (its run.json)")
    ev.add_argument("--run-dir", help="run directory holding run.json (and the embedded base cache)")
    ev.add_argument("--data", help="default: the run's data")
    ev.add_argument("--families", type=_families)
    ev.add_argument("--domain", choices=("standard", "rotated"))
    ev.add_argument("--split", choices=("val", "test"), default="test")
    ev.add_argument("--limit", type=_positive_int, default=None, help="evaluate only the first N records")
    ev.add_argument("--batch-size", type=_positive_int, default=32)
    ev.add_argument("--num-beams", "--beams", dest="num_beams", type=_positive_int, default=5)
    ev.add_argument("--max-new-tokens", type=_positive_int, default=20)
    ev.add_argument("--output", help="write metrics and predictions to this JSON file")

    sub.add_parser("presets", help="list the presets with their trainable parameters on the embedded model")
    return parser


# ---------------------------------------------------------------------- helpers


def _fmt_count(n: int, total: Optional[int] = None) -> str:
    return f"{n:,}" + (f" ({100.0 * n / total:.1f}%)" if total else "")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def _metric_text(metrics: dict) -> str:
    parts = []
    if "vqa_accuracy" in metrics:
        parts.append(f"VQA acc {100 * metrics['vqa_accuracy']:.1f}%")
    if "cider" in metrics:
        parts.append(f"CIDEr {100 * metrics['cider']:.1f}")
        parts.append(f"ROUGE-L F1 {100 * metrics['rougeL_f']:.1f}")
    return ", ".join(parts) or "-"


def _pct(fraction: float) -> str:
    return f"{100 * fraction:.1f}%"


def _count_params(model) -> tuple[int, int]:
    import petal

    tp = petal.trainable_parameters(model)
    return tp.trainable, tp.total


def _patch(model, config):
    import petal

    return petal.patch(model, config)


# ---------------------------------------------------------------------- demo


def cmd_demo(args) -> int:
    import torch

    import petal

    from .data.synthetic import SyntheticShapes
    from .embedded import BASE_FAMILIES, DEMO_DOMAIN, EmbeddedSpec, PretrainSettings, pretrain_base
    from .evaluate import evaluate
    from .runs import RunConfig
    from .train import TrainSettings, train_model

    start = time.perf_counter()
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    spec = EmbeddedSpec()
    print("petal demo: PETAL on the embedded InstructBLIP-shaped model (random init, CPU, synthetic data)")
    settings = PretrainSettings()
    if args.pretrain_steps is not None:
        settings = PretrainSettings(steps=args.pretrain_steps)
    model, tok, info = pretrain_base(out / "base", spec, settings, log=lambda s: print("  " + s))
    n_total = sum(p.numel() for p in model.parameters())
    parts = {"ViT": model.vision_model, "Q-Former": model.qformer, "T5": model.language_model}
    print(f"  base model: {n_total:,} parameters ("
          + ", ".join(f"{k} {sum(p.numel() for p in m.parameters()):,}" for k, m in parts.items()) + ")")
    how = "loaded from cache" if info["cached"] else f"pre-trained in {info['seconds']:.0f} s"
    print(f"  base: all weights trained {info['steps']} steps on {'/'.join(BASE_FAMILIES)} questions "
          f"from the standard camera, final loss {info['final_loss']:.3f} ({how}: {out / 'base'})")

    families, size = BASE_FAMILIES, spec.image_size
    train = SyntheticShapes("train", families=families, image_size=size, domain=DEMO_DOMAIN)
    test = {d: SyntheticShapes("test", num_scenes=args.test_scenes, families=families, image_size=size,
                               domain=d) for d in (DEMO_DOMAIN, "standard")}
    collator = _word_collator(tok, spec)
    example = train[0]
    print(f"  new task: the same questions (e.g. {example['question']!r} -> {example['answers'][0]!r}) "
          f"from a camera with rotated colour channels (R,G,B -> G,B,R), never seen by the base; "
          f"{len(train)} train / {len(test[DEMO_DOMAIN])} test questions")

    def measure(m) -> dict:
        return {d: evaluate(m, t, collator, tok.batch_decode, batch_size=64, num_beams=args.beams,
                            max_new_tokens=4) for d, t in test.items()}

    before = measure(model)
    config = petal.PetalConfig.from_preset(args.preset)
    _patch(model, config)
    trainable, total = _count_params(model)
    print(f"  PETAL preset {args.preset!r} on the Q-Former (ViT and T5 frozen): {trainable:,} trainable "
          f"parameters; {args.steps} steps on the new camera, batch {args.batch_size}, lr {args.lr:g}")
    shutil.rmtree(out / "petal", ignore_errors=True)  # the demo's own run directory: start afresh
    tstart = time.perf_counter()
    result = train_model(model, train, collator, TrainSettings(
        max_steps=args.steps, batch_size=args.batch_size, lr=args.lr, weight_decay=0.02,
        warmup_steps=max(1, args.steps // 20), progress=args.progress, seed=0),
        output_dir=out / "petal")
    train_seconds = time.perf_counter() - tstart
    after = measure(model)
    petal.save_adapter(model, out / "adapter")

    def row(name, params, r):
        new, std = r[DEMO_DOMAIN], r["standard"]
        return [name, params, f"{new['loss']:.3f}", _pct(new["metrics"]["vqa_accuracy"]),
                _pct(std["metrics"]["vqa_accuracy"])]

    print()
    print(f"test split, {len(test[DEMO_DOMAIN])} colour questions per camera, beam search {args.beams}:")
    print(_table(["model", "trainable params", "new-camera LM loss", "new-camera VQA acc",
                  "standard-camera VQA acc"],
                 [row("base (untuned)", "-", before),
                  row(f"base + PETAL ({args.preset})", _fmt_count(trainable, total), after)]))
    print()
    logs = [e for e in _read_jsonl(out / "petal" / "metrics.jsonl") if "loss" in e]
    if logs and "sib_loss" in logs[0]:
        print(f"  training ({result.step} steps, {train_seconds:.0f} s): LM loss {logs[0]['lm_loss']:.3f} -> "
              f"{logs[-1]['lm_loss']:.3f}; SIB loss {logs[0]['sib_loss']:.3f} -> {logs[-1]['sib_loss']:.3f}")
    elif logs:
        print(f"  training ({result.step} steps, {train_seconds:.0f} s): loss {logs[0]['loss']:.3f} -> "
              f"{logs[-1]['loss']:.3f}")
    print("  random guessing among the 6 colour words scores 16.7%. The adapter is specific to the new "
          "camera (see the last column); petal.unpatch restores the base bit for bit.")
    print("  At this toy scale rank-64 factors are not small next to a 64-wide Q-Former, so the trainable "
          "share is far above the paper's (~1M parameters of InstructBLIP's ~4-8B).")
    results = {"preset": args.preset, "trainable_parameters": trainable, "total_parameters": total,
               "steps": result.step, "train_seconds": train_seconds, "base_pretrain": info,
               "test_records": len(test[DEMO_DOMAIN]), "num_beams": args.beams,
               "before": {d: {"loss": r["loss"], "metrics": r["metrics"]} for d, r in before.items()},
               "after": {d: {"loss": r["loss"], "metrics": r["metrics"]} for d, r in after.items()}}
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    with open(out / "predictions.jsonl", "w") as f:
        for b, a in zip(before[DEMO_DOMAIN]["rows"], after[DEMO_DOMAIN]["rows"]):
            f.write(json.dumps({"id": b["id"], "prompt": b["prompt"], "answers": b["answers"],
                                "base": b["prediction"], "petal": a["prediction"]}) + "\n")
    tok.save(out / "tokenizer.json")
    RunConfig(model="base", data="synthetic", families=list(families), domain=DEMO_DOMAIN, preset=args.preset,
              max_steps=args.steps, lr=args.lr, batch_size=args.batch_size, num_beams=args.beams,
              output_dir=str(out)).save(out)  # so `petal eval --adapter <out>/adapter` finds the base
    print(f"  wrote {out}/: adapter/, results.json, predictions.jsonl, run.json, petal/ (checkpoint, "
          f"metrics.jsonl), base/ (cached base model); evaluate again with "
          f"`petal eval --adapter {out / 'adapter'}`")
    print(f"  total time {time.perf_counter() - start:.0f} s (torch threads: {torch.get_num_threads()})")
    return 0


def _word_collator(tok, spec):
    from .data.collate import WordCollator

    return WordCollator(tok, spec.num_query_tokens, spec.image_size)


def _read_jsonl(path: Path) -> list:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ---------------------------------------------------------------------- train


def _run_config(args):
    from .runs import RUN_FILE, RunConfig

    explicit = {k: v for k, v in vars(args).items() if k in RunConfig.keys()}
    if args.config:
        base = RunConfig.from_file(args.config).to_dict()
    else:
        out = Path(explicit.get("output_dir", RunConfig.output_dir))
        base = (RunConfig.from_file(out / RUN_FILE).to_dict()
                if args.resume and (out / RUN_FILE).is_file() else RunConfig().to_dict())
    base.update(explicit)
    if "preset" in explicit:
        base["petal"] = None  # an explicit --preset replaces a config file's full petal section
    return RunConfig.from_dict(base)


def _load_split(run, split: str, limit: Optional[int], image_size: int):
    from .data.sources import load_data

    families = tuple(run.families) if run.families else None
    return load_data(run.data, split, limit=limit, seed=run.seed, synthetic_families=families,
                     image_size=image_size, synthetic_domain=run.domain)


def cmd_train(args) -> int:
    from .evaluate import evaluate
    from .runs import load_model
    from .train import TrainSettings, train_model

    run = _run_config(args)
    config = run.petal_config()
    out = Path(run.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    loaded = load_model(run.model, out / "base", log=print)
    train_data = _load_split(run, "train", run.train_limit, loaded.image_size)
    eval_data = _load_split(run, run.eval_split, run.eval_limit, loaded.image_size)
    model = _patch(loaded.model, config)
    trainable, total = _count_params(model)
    run.save(out)
    if loaded.tokenizer is not None and hasattr(loaded.tokenizer, "save"):
        loaded.tokenizer.save(out / "tokenizer.json")
    preset = run.preset if run.petal is None else "from config"
    print(f"model {run.model}: {_fmt_count(trainable, total)} trainable parameters (preset {preset}); "
          f"data {run.data}: {len(train_data)} train / {len(eval_data)} {run.eval_split} records")

    def eval_fn(m):
        r = evaluate(m, eval_data, loaded.eval_collator, loaded.decode, batch_size=max(run.batch_size, 16),
                     num_beams=run.num_beams, max_new_tokens=run.max_new_tokens)
        return {"loss": r["loss"], **{k: v for k, v in r["metrics"].items() if k != "by_family"}}

    settings = TrainSettings(
        epochs=run.epochs, max_steps=run.max_steps, batch_size=run.batch_size, lr=run.lr,
        weight_decay=run.weight_decay, warmup_steps=run.warmup_steps, max_grad_norm=run.max_grad_norm,
        gradient_accumulation_steps=run.gradient_accumulation_steps, seed=run.seed, eval_every=run.eval_every,
        checkpoint_every=run.checkpoint_every, keep_checkpoints=run.keep_checkpoints,
        mixed_precision=run.mixed_precision, progress=args.progress)
    try:
        result = train_model(model, train_data, loaded.train_collator, settings, output_dir=out,
                             resume=args.resume, eval_fn=eval_fn)
    except KeyboardInterrupt:
        print(f"\ninterrupted: a checkpoint is in {out / 'checkpoints'}; continue with "
              f"`petal train --output-dir {out} --resume`", file=sys.stderr)
        return 130
    import petal

    petal.save_adapter(model, out / "adapter")
    final = result.evals[-1][1] if result.evals else {}
    summary = json.dumps({"step": result.step, **final}, indent=2)
    (out / f"eval_{run.eval_split}.json").write_text(summary + "\n")
    loss = f"{result.last_loss:.4f}" if result.last_loss is not None else "-"
    eval_loss = f"{final['loss']:.4f}" if final.get("loss") is not None else "-"
    print(f"trained {result.step} steps in {result.seconds:.0f} s; last train loss {loss}; "
          f"{run.eval_split} loss {eval_loss}, {_metric_text(final)}")
    print(f"adapter: {out / 'adapter'}")
    return 0


# ---------------------------------------------------------------------- eval


def cmd_eval(args) -> int:
    import petal

    from .evaluate import evaluate
    from .runs import RunConfig, find_run_config, load_model

    run_file = None
    if args.run_dir:
        run_file = Path(args.run_dir) / "run.json"
        if not run_file.is_file():
            raise ValueError(f"--run-dir {args.run_dir} has no run.json")
    elif args.adapter:
        if not Path(args.adapter).is_dir():
            raise ValueError(f"--adapter {args.adapter} is not a directory")
        run_file = find_run_config(args.adapter)
    run = RunConfig.from_file(run_file) if run_file else RunConfig(output_dir=".")
    run_dir = run_file.parent if run_file else Path(".")
    if args.model:
        run.model = args.model
    if args.data:
        run.data = args.data
    if args.families:
        run.families = args.families
    if args.domain:
        run.domain = args.domain
    model_spec = run.model
    if model_spec != "embedded" and not args.model and (run_dir / model_spec).is_dir():
        model_spec = str(run_dir / model_spec)  # a base stored inside the run directory
    loaded = load_model(model_spec, run_dir / "base", log=print)
    model = loaded.model
    if args.adapter:
        meta = json.loads((Path(args.adapter) / "adapter_config.json").read_text())
        petal.patch(model, petal.PetalConfig.from_dict(meta["config"]))
        petal.load_adapter(model, args.adapter)
    data = _load_split(run, args.split, args.limit, loaded.image_size)
    r = evaluate(model, data, loaded.eval_collator, loaded.decode, batch_size=args.batch_size,
                 num_beams=args.num_beams, max_new_tokens=args.max_new_tokens)
    what = f"adapter {args.adapter}" if args.adapter else "base model"
    loss = f"{r['loss']:.4f}" if r["loss"] is not None else "-"
    print(f"{what} on {run.data} {args.split} ({r['num_examples']} records, beam {args.num_beams}): "
          f"loss {loss}, {_metric_text(r['metrics'])}")
    for fam, m in r["metrics"].get("by_family", {}).items():
        print(f"  {fam}: {_metric_text(m)}")
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps({"loss": r["loss"], "metrics": r["metrics"],
                                                 "predictions": r["rows"]}, indent=2, default=str) + "\n")
        print(f"wrote {args.output}")
    return 0


# ---------------------------------------------------------------------- presets


def cmd_presets(args) -> int:
    import petal

    from .embedded import build_embedded_model

    base, _ = build_embedded_model()
    total = sum(p.numel() for p in base.parameters())
    rows = []
    for name in sorted(petal.PRESETS):
        model = copy.deepcopy(base)
        try:
            petal.patch(model, petal.PetalConfig.from_preset(name))
            n = petal.trainable_parameters(model).trainable
            rows.append([name, petal.PRESETS[name].method, _fmt_count(n, total)])
        except Exception as e:  # noqa: BLE001 - report and keep listing
            rows.append([name, petal.PRESETS[name].method, f"n/a ({type(e).__name__}: {e})"])
    print(f"presets on the embedded model ({total:,} parameters before patching):")
    print(_table(["preset", "method", "trainable params (% of the unpatched model)"], rows))
    return 0


COMMANDS = {"demo": cmd_demo, "train": cmd_train, "eval": cmd_eval, "presets": cmd_presets}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.threads or args.command == "demo":
        import torch

        # the embedded model's ops are tiny: one thread beats several (and is far faster on a busy machine)
        torch.set_num_threads(args.threads or 1)
    try:
        return COMMANDS[args.command](args)
    except ValueError as e:
        parser.exit(2, f"petal {args.command}: error: {e}\n")


if __name__ == "__main__":
    sys.exit(main())
