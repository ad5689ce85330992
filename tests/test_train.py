import json
import shutil
import sys

import pytest
import torch

import petal
from petal import train as train_mod
from petal.cli import main
from petal.data.collate import WordCollator, model_inputs
from petal.data.synthetic import SyntheticShapes
from petal.embedded import EmbeddedSpec, build_embedded_model, save_base
from petal.train import TrainSettings, latest_checkpoint, list_checkpoints, train_model, write_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

SPEC = EmbeddedSpec(vision_hidden=32, qformer_hidden=32, lm_hidden=32, num_query_tokens=4, vision_layers=1,
                    qformer_layers=1, lm_layers=1)
SMALL = petal.PetalConfig(dma=petal.DMAConfig(rank=8), aim=petal.AIMConfig(num_experts=2, expert_rank=8),
                          sib=petal.SIBConfig(proj_dim=8))


def _patched(adapter_seed=0):
    model, tok = build_embedded_model(seed=0, spec=SPEC)
    torch.manual_seed(adapter_seed + 1)
    petal.patch(model, SMALL)
    return model, tok


@pytest.fixture(scope="module")
def data():
    return SyntheticShapes("train", num_scenes=8, families=("spatial", "colour"))


def _collator(tok):
    return WordCollator(tok, SPEC.num_query_tokens, SPEC.image_size)


def _settings(**kw):
    base = dict(max_steps=4, batch_size=4, lr=5e-3, warmup_steps=1, progress=False, seed=0)
    base.update(kw)
    return TrainSettings(**base)


def _adapter(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_a_few_steps_lower_the_loss(data):
    model, tok = build_embedded_model(seed=0, spec=SPEC)
    no_sib = SMALL.to_dict()
    no_sib["sib"]["enabled"] = False
    no_sib = petal.PetalConfig.from_dict(no_sib)
    petal.patch(model, no_sib)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    batch = model_inputs(_collator(tok)(list(data)))
    with torch.no_grad():
        before = model(**batch).loss.item()
    result = train_model(model, data, _collator(tok), _settings(max_steps=12, batch_size=16, lr=2e-2))
    with torch.no_grad():
        after = model(**batch).loss.item()
    assert result.step == 12 and len(result.losses) == 12
    assert after < before - 0.05, (before, after)
    params = dict(model.named_parameters())
    assert frozen and all(torch.equal(params[n], v) for n, v in frozen.items())


def test_checkpoint_and_resume_match_an_uninterrupted_run(tmp_path, data):
    straight, tok = _patched()
    train_model(straight, data, _collator(tok), _settings(), output_dir=tmp_path / "a")

    def stop_at_two(step, logs):
        if step == 2:
            raise KeyboardInterrupt

    first, tok = _patched()
    with pytest.raises(KeyboardInterrupt):
        train_model(first, data, _collator(tok), _settings(), output_dir=tmp_path / "b", on_step=stop_at_two,
                    log=lambda s: None)
    assert latest_checkpoint(tmp_path / "b").name == "step-00000002"

    resumed, tok = _patched(adapter_seed=5)  # another adapter init: all must come from the checkpoint
    result = train_model(resumed, data, _collator(tok), _settings(), output_dir=tmp_path / "b", resume=True,
                         log=lambda s: None)
    assert result.resumed_from == 2 and result.step == 4
    a, b = _adapter(straight), _adapter(resumed)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-5, atol=1e-6, msg=name)
    state = torch.load(latest_checkpoint(tmp_path / "b") / "training_state.pt", weights_only=False)
    assert state["position"]["step"] == 4 and state["scheduler"]["last_epoch"] == 4


def test_interrupted_write_leaves_the_previous_checkpoint(tmp_path, data, monkeypatch):
    model, tok = _patched()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    settings = _settings()
    pos = {"step": 1, "epoch": 0, "batches_done": 1}
    first = write_checkpoint(tmp_path, 1, model, opt, sched, pos, settings, keep=2)
    saved = _adapter(model)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(1.0)

    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(train_mod.torch, "save", disk_full)
    with pytest.raises(OSError, match="space"):
        write_checkpoint(tmp_path, 2, model, opt, sched, {**pos, "step": 2}, settings, keep=1)
    monkeypatch.undo()
    assert list_checkpoints(tmp_path) == [first]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-00000001"]
    fresh, _ = _patched(adapter_seed=9)
    petal.load_adapter(fresh, first / "adapter")
    for name, value in _adapter(fresh).items():
        torch.testing.assert_close(value, saved[name], rtol=0, atol=0)
    # a crash that leaves a half-written temporary directory: ignored, then cleaned up by the next run
    (tmp_path / "checkpoints" / ".tmp-step-00000003-1").mkdir()
    assert list_checkpoints(tmp_path) == [first]


def test_settings_reject_bad_values():
    with pytest.raises(ValueError, match="batch_size"):
        TrainSettings(batch_size=0)
    with pytest.raises(ValueError, match="mixed_precision"):
        TrainSettings(mixed_precision="fp8")
    with pytest.raises(ValueError, match="resume"):
        train_model(torch.nn.Linear(2, 2), [1], lambda x: x, _settings(), resume=True)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("base") / "tiny"
    model, tok = build_embedded_model(spec=SPEC)
    save_base(model, tok, path, {"steps": 0, "note": "untrained, for tests"})
    return path


def test_cli_train_then_eval(tmp_path, base_dir, capsys):
    run = tmp_path / "run"
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"model": str(base_dir), "families": ["spatial"], "petal": SMALL.to_dict(),
                                  "batch_size": 4, "lr": 1e-3, "num_beams": 2, "max_new_tokens": 3}))
    code = main(["train", "--config", str(config), "--max-steps", "3", "--train-limit", "4",
                 "--eval-limit", "4", "--output-dir", str(run), "--no-progress"])
    assert code == 0
    out = capsys.readouterr().out
    assert "trained 3 steps" in out and "VQA acc" in out
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    assert json.loads((run / "run.json").read_text())["max_steps"] == 3
    assert latest_checkpoint(run).name == "step-00000003"
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 4  # 3 steps + the final eval

    with pytest.raises(SystemExit) as e:  # a fresh run never overwrites an earlier run's checkpoints
        main(["train", "--config", str(config), "--output-dir", str(run), "--no-progress"])
    assert e.value.code == 2 and "--resume" in capsys.readouterr().err

    code = main(["train", "--output-dir", str(run), "--resume", "--max-steps", "4", "--no-progress"])
    assert code == 0 and latest_checkpoint(run).name == "step-00000004"
    assert "resumed from" in capsys.readouterr().out

    report = tmp_path / "eval.json"
    code = main(["eval", "--adapter", str(run / "adapter"), "--split", "test", "--limit", "3", "--beams", "2",
                 "--max-new-tokens", "3", "--output", str(report)])
    assert code == 0
    text = capsys.readouterr().out
    assert "on synthetic test (3 records, beam 2)" in text
    result = json.loads(report.read_text())
    assert 0.0 <= result["metrics"]["vqa_accuracy"] <= 1.0 and len(result["predictions"]) == 3


def test_cli_rejects_bad_arguments(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--lr", "0"])
    assert e.value.code == 2 and "--lr" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["train", "--config", str(tmp_path / "missing.json")])
    assert e.value.code == 2 and "missing.json" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["eval"])
    assert e.value.code == 2
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"learning_rate": 1}))
    with pytest.raises(SystemExit) as e:
        main(["train", "--config", str(bad)])
    assert "learning_rate" in capsys.readouterr().err


def test_cli_presets_lists_trainable_counts(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines()[3:]}
    assert {"petal", "lora", "vl-pet-large", "petal-official"} <= set(rows)
    counts = {name: int(line.split()[2].replace(",", "")) for name, line in rows.items()}
    assert 0 < counts["petal-dma-only"] < counts["petal-no-sib"] < counts["petal"]


def test_resume_cuts_metrics_back_to_the_checkpoint(tmp_path, base_dir, capsys):
    run = tmp_path / "run"
    args = ["train", "--model", str(base_dir), "--families", "colour", "--batch-size", "4", "--train-limit",
            "8", "--eval-limit", "4", "--num-beams", "1", "--max-new-tokens", "2", "--no-progress",
            "--output-dir", str(run), "--keep-checkpoints", "5", "--checkpoint-every", "2"]
    assert main([*args, "--max-steps", "3"]) == 0
    # a crash after step 3 was logged but before its checkpoint was complete: step-2 is the newest
    shutil.rmtree(run / "checkpoints" / "step-00000003")
    logged = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert logged == [1, 2, 3, 3]  # 3 steps and the final evaluation
    assert main(["train", "--output-dir", str(run), "--resume", "--no-progress"]) == 0
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in lines] == [1, 2, 3, 3] and "eval" in lines[-1]
    assert not [p for p in run.iterdir() if p.name.startswith(".metrics")]  # the temporary file is gone
    assert "resumed from" in capsys.readouterr().out


def test_limits_count_records(tmp_path, base_dir, capsys):
    run = tmp_path / "run"
    code = main(["train", "--model", str(base_dir), "--max-steps", "1", "--batch-size", "4",
                 "--train-limit", "9", "--eval-limit", "6", "--num-beams", "1", "--max-new-tokens", "2",
                 "--no-progress", "--output-dir", str(run)])
    assert code == 0 and "9 train / 6 val records" in capsys.readouterr().out
    assert main(["eval", "--adapter", str(run / "adapter"), "--limit", "5", "--beams", "1",
                 "--max-new-tokens", "2"]) == 0
    assert "(5 records, beam 1)" in capsys.readouterr().out


def test_presets_and_train_print_the_same_percentage(tmp_path, capsys):
    assert main(["presets"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("petal "))
    share = row.split()[3]  # "(17.8%)": the embedded model's column
    assert main(["train", "--model", "embedded", "--pretrain-steps", "5", "--max-steps", "1",
                 "--batch-size", "4", "--train-limit", "4", "--eval-limit", "2", "--num-beams", "1",
                 "--max-new-tokens", "2", "--no-progress", "--output-dir", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert f"{row.split()[2]} {share} trainable parameters" in out, (row, out)


def test_progress_bar_by_default_only_in_a_terminal(monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert TrainSettings().show_progress() and not TrainSettings(progress=False).show_progress()
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    assert not TrainSettings().show_progress() and TrainSettings(progress=True).show_progress()


def test_accelerate_launch_mixed_precision_applies_unless_the_flag_is_given(monkeypatch):
    from petal.cli import build_parser
    from petal.cli.common import run_config

    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # as `accelerate launch --mixed_precision bf16`
    parse = build_parser().parse_args
    assert run_config(parse(["train"]))[0].mixed_precision == "bf16"
    assert run_config(parse(["train", "--mixed-precision", "no"]))[0].mixed_precision == "no"
