"""``petal eval``: evaluate a saved adapter (or the base model) on a data split."""

from __future__ import annotations

import json
from pathlib import Path

from ..metrics import ROUGE_VARIANTS, TOKENIZERS
from .args import families, positive_int
from .common import add_model_flags, load_split, metric_text


def add_parser(sub) -> None:
    ev = sub.add_parser("eval", help="evaluate a saved adapter (or the base model)")
    target = ev.add_mutually_exclusive_group(required=True)
    target.add_argument("--adapter",
                        help="adapter directory (adapter_config.json + adapter_model.safetensors)")
    target.add_argument("--base-only", action="store_true", help="evaluate the model without an adapter")
    ev.add_argument("--model", help="default: the model of the run the adapter belongs to (its run.json)")
    ev.add_argument("--run-dir", help="run directory holding run.json")
    ev.add_argument("--data", help="default: the run's data")
    ev.add_argument("--families", type=families)
    ev.add_argument("--domain", choices=("standard", "rotated"))
    ev.add_argument("--data-path", help="hub data: a local copy of the hub repository or a saved data set")
    ev.add_argument("--data-revision", help="hub data: the revision to read")
    ev.add_argument("--skip-bad-images", action="store_true",
                    help="folder data: leave out records whose image is missing or unreadable")
    ev.add_argument("--split", choices=("val", "test"), default="test")
    ev.add_argument("--limit", type=positive_int, default=None, help="evaluate only the first N records")
    ev.add_argument("--batch-size", type=positive_int, default=32)
    ev.add_argument("--num-beams", "--beams", dest="num_beams", type=positive_int, default=5)
    ev.add_argument("--max-new-tokens", type=positive_int, default=20)
    ev.add_argument("--rouge-variant", choices=ROUGE_VARIANTS, default="rouge-score",
                    help="rouge-score: best reference, stemmed; petal-paper: the PETAL code's, averaged over "
                    "references")
    ev.add_argument("--cider-tokenizer", choices=TOKENIZERS, default="auto",
                    help="PTB tokenizer for CIDEr: auto (Java when present), ptb-java, ptb-python")
    ev.add_argument("--output", help="write metrics and predictions to this JSON file")
    add_model_flags(ev)


def run(args) -> int:
    import petal

    from ..adapter_io import read_adapter_config, read_adapter_weights
    from ..data.collate import InstructionCollator
    from ..evaluate import evaluate
    from ..runs import RUN_FILE, RunConfig, find_run_config, load_model, resolve_model

    # ---- every input checked before the model is loaded (or its base pre-trained)
    run_file = None
    if args.run_dir:
        run_file = Path(args.run_dir) / RUN_FILE
        if not run_file.is_file():
            raise ValueError(f"--run-dir {args.run_dir} has no {RUN_FILE}")
    elif args.adapter:
        if not Path(args.adapter).is_dir():
            raise ValueError(f"--adapter {args.adapter} is not a directory")
        run_file = find_run_config(args.adapter)
    if args.adapter:
        _, adapter_config = read_adapter_config(args.adapter)
        read_adapter_weights(args.adapter)  # a truncated or corrupt file is reported now
    if args.output and Path(args.output).is_dir():
        raise ValueError(f"--output {args.output} is a directory; give a file name")
    run = RunConfig.from_file(run_file, what="run file") if run_file else RunConfig(output_dir=".")
    run_dir = run_file.parent if run_file else Path(".")
    if args.model:
        run.model = args.model
    if args.data and args.data != run.data:
        run.data, run.data_path, run.data_revision = args.data, None, None  # the run's copy is of other data
        if args.data != "synthetic":
            run.families, run.domain = None, "standard"
    for key in ("data_path", "data_revision", "skip_bad_images"):
        if getattr(args, key):
            setattr(run, key, getattr(args, key))
    if args.families:
        run.families = args.families
    if args.domain:
        run.domain = args.domain
    run.validate("--model/--data/--families/--domain")
    model_spec = run.model
    if model_spec != "embedded" and not args.model and (run_dir / model_spec).is_dir():
        model_spec = str(run_dir / model_spec)  # a base stored inside the run directory
    found = resolve_model(model_spec)
    data = load_split(run, args.split, args.limit, found.image_size)

    loaded = load_model(found, args.cache_dir, log=print, pretrain_steps=run.pretrain_steps,
                        progress=args.progress)
    model = loaded.model
    if args.adapter:
        petal.patch(model, adapter_config)
        petal.load_adapter(model, args.adapter)
    collator = InstructionCollator.for_config(loaded.eval_collator, adapter_config if args.adapter else None,
                                              train=False)
    r = evaluate(model, data, collator, loaded.decode, batch_size=args.batch_size,
                 num_beams=args.num_beams, max_new_tokens=args.max_new_tokens,
                 cider_tokenizer=args.cider_tokenizer, rouge_variant=args.rouge_variant)
    what = f"adapter {args.adapter}" if args.adapter else "base model"
    loss = f"{r['loss']:.4f}" if r["loss"] is not None else "-"
    print(f"{what} on {run.data} {args.split} ({r['num_examples']} records, beam {args.num_beams}): "
          f"loss {loss}, {metric_text(r['metrics'])}")
    for fam, m in r["metrics"].get("by_family", {}).items():
        print(f"  {fam}: {metric_text(m)}")
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps({"loss": r["loss"], "metrics": r["metrics"],
                                                 "predictions": r["rows"]}, indent=2, default=str) + "\n")
        print(f"wrote {args.output}")
    return 0
