"""``petal eval``: evaluate a saved adapter (or the base model) on a data split."""

from __future__ import annotations

import json
from pathlib import Path

from ..metrics import ROUGE_VARIANTS, TOKENIZERS
from .args import families, positive_int
from .common import load_split, metric_text


def add_parser(sub) -> None:
    ev = sub.add_parser("eval", help="evaluate a saved adapter (or the base model)")
    target = ev.add_mutually_exclusive_group(required=True)
    target.add_argument("--adapter",
                        help="adapter directory (adapter_config.json + adapter_model.safetensors)")
    target.add_argument("--base-only", action="store_true", help="evaluate the model without an adapter")
    ev.add_argument("--model", help="default: the model of the run the adapter belongs to (its run.json)")
    ev.add_argument("--run-dir", help="run directory holding run.json (and the embedded base cache)")
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


def run(args) -> int:
    import petal

    from ..data.collate import InstructionCollator
    from ..evaluate import evaluate
    from ..runs import RunConfig, find_run_config, load_model

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
    if args.data and args.data != run.data:
        run.data, run.data_path, run.data_revision = args.data, None, None  # the run's copy is of other data
    for key in ("data_path", "data_revision", "skip_bad_images"):
        if getattr(args, key):
            setattr(run, key, getattr(args, key))
    if args.families:
        run.families = args.families
    if args.domain:
        run.domain = args.domain
    model_spec = run.model
    if model_spec != "embedded" and not args.model and (run_dir / model_spec).is_dir():
        model_spec = str(run_dir / model_spec)  # a base stored inside the run directory
    loaded = load_model(model_spec, run_dir / "base", log=print)
    model, config = loaded.model, None
    if args.adapter:
        meta = json.loads((Path(args.adapter) / "adapter_config.json").read_text())
        config = petal.PetalConfig.from_dict(meta["config"])
        petal.patch(model, config)
        petal.load_adapter(model, args.adapter)
    data = load_split(run, args.split, args.limit, loaded.image_size)
    collator = InstructionCollator.for_config(loaded.eval_collator, config, train=False)
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
