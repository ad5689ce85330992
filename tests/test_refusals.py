"""A refused command changes nothing (the run directory stays byte-identical, nothing is pre-trained), and
every input a user can get wrong gets one line naming the file or flag and what is wrong (exit code 2)."""

import json
import shutil

import pytest

from petal.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--model", "embedded", "--pretrain-steps", "5", "--batch-size", "4", "--train-limit", "8",
        "--eval-limit", "4", "--num-beams", "1", "--max-new-tokens", "2", "--no-progress"]


def snapshot(path):
    if not path.exists():
        return None
    return {str(p.relative_to(path)): (p.read_bytes() if p.is_file() else None) for p in path.rglob("*")}


def refused(args, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        main(args)
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run with checkpoints at steps 1 and 2 (and its run.json, metrics, adapter)."""
    path = tmp_path_factory.mktemp("refusals") / "run"
    args = ["train", *TINY, "--max-steps", "2", "--checkpoint-every", "1", "--output-dir", str(path)]
    assert main(args) == 0
    return path


@pytest.fixture
def run(run_dir, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    return copy


@pytest.mark.parametrize("flags, message", [
    (["--preset", "lora"], "holds checkpoints of an earlier run"),
    (["--resume", "--preset", "lora"], "preset 'petal' -> 'lora'"),
    (["--resume", "--batch-size", "8"], "batch_size 4 -> 8"),
    (["--resume", "--lr", "0.5"], "lr"),
    (["--resume", "--seed", "3"], "seed 0 -> 3"),
    (["--resume", "--data", "/nonexistent/folder"], "data 'synthetic' -> '/nonexistent/folder'"),
    (["--resume", "--gradient-accumulation-steps", "2"], "gradient_accumulation_steps 1 -> 2"),
])
def test_refused_train_leaves_the_run_directory_as_it_was(run, capsys, flags, message):
    before = snapshot(run)
    err = refused(["train", "--output-dir", str(run), *flags, "--no-progress"], capsys)
    assert message in err
    assert snapshot(run) == before


def test_resume_under_another_number_of_processes_is_refused(run, capsys, monkeypatch):
    before = snapshot(run)
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun --nproc_per_node 2 sets it; refused before joining
    assert "num_processes 1 -> 2" in refused(["train", "--output-dir", str(run), "--resume"], capsys)
    assert snapshot(run) == before


@pytest.mark.parametrize("damage, message", [
    (lambda ck: (ck / "adapter" / "adapter_model.safetensors").write_bytes(b"\x00" * 40),
     "adapter_model.safetensors is not a readable safetensors file"),
    (lambda ck: (ck / "adapter" / "adapter_model.safetensors").write_bytes(
        (ck / "adapter" / "adapter_model.safetensors").read_bytes()[:100]),
     "adapter_model.safetensors is not a readable safetensors file"),
    (lambda ck: (ck / "training_state.pt").write_bytes(b"garbage"), "training_state.pt is not readable"),
    (lambda ck: (ck / "trainer_state.json").write_text("{"), "trainer_state.json is not readable JSON"),
    (lambda ck: (ck / "adapter" / "adapter_config.json").write_text("[1, 2"),
     "adapter_config.json is not valid"),
    (lambda ck: (ck.parents[1] / "run.json").write_text('{"model": 3}'), "run.json: model must be a string"),
    (lambda ck: (ck.parents[1] / "run.json").write_text("{oops"), "run.json is not valid JSON"),
])
def test_resume_from_a_damaged_run_is_refused_with_one_line(run, capsys, damage, message):
    damage(run / "checkpoints" / "step-00000002")
    before = snapshot(run)
    assert message in refused(["train", "--output-dir", str(run), "--resume"], capsys)
    assert snapshot(run) == before


@pytest.mark.parametrize("flags, message", [
    (["--data", "/nonexistent/folder"], "data must be 'synthetic'"),
    (["--model", "embeded"], "--model 'embeded' is neither"),
    (["--model", "./no/such/dir"], "no such folder"),
    (["--families", "colour", "--data", "okvqa"], "families and domain describe the synthetic data"),
    (["--gradient-accumulation-steps", "8"], "needs at least 8 global batches"),
    (["--train-limit", "2", "--batch-size", "4"], None),  # fine: one small batch (control)
])
def test_bad_inputs_are_refused_before_anything_is_written_or_pretrained(tmp_path, capsys, flags, message):
    out, cache = tmp_path / "new-run", tmp_path / "fresh-cache"
    args = ["train", *TINY, "--max-steps", "1", "--output-dir", str(out), "--cache-dir", str(cache), *flags]
    if message is None:
        assert main(args) == 0 and out.is_dir() and cache.is_dir()
        return
    assert message in refused(args, capsys)
    assert not out.exists() and not cache.exists()


def test_a_bad_config_file_is_refused(tmp_path, capsys):
    for content, message in [('{"num_beams": 0}', "num_beams must be a positive integer"),
                             ('{"batch_size": "4"}', "batch_size must be an integer"),
                             ('{"petal": {"dma": 3}}', "its petal section is not a valid petal config"),
                             ('{"domain": "sideways"}', "domain must be one of"),
                             ('{"max_grad_norm": 0}', "max_grad_norm > 0"),
                             ("[]", "must hold a JSON object")]:
        config = tmp_path / "c.json"
        config.write_text(content)
        err = refused(["train", "--config", str(config), "--output-dir", str(tmp_path / "out")], capsys)
        assert message in err and str(config) in err, err
        assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def adapter_dir(run_dir):
    return run_dir / "adapter"


@pytest.mark.parametrize("damage, message", [
    (lambda a: (a / "adapter_model.safetensors").write_bytes(b"\x07" * 64),
     "not a readable safetensors file"),
    (lambda a: (a / "adapter_model.safetensors").write_bytes(
        (a / "adapter_model.safetensors").read_bytes()[:-9]), "not a readable safetensors file"),
    (lambda a: (a / "adapter_config.json").write_text("{"), "adapter_config.json is not valid JSON"),
    (lambda a: (a / "adapter_config.json").write_text('{"format": "lora"}'), "is not a petal adapter config"),
    (lambda a: (a / "adapter_config.json").write_text('{"format": "petal-adapter/1", "config": {"dma": 3}}'),
     "holds no valid petal config"),
    (lambda a: (a / "adapter_config.json").unlink(), "missing adapter_config.json"),
])
def test_eval_names_a_damaged_adapter_file(adapter_dir, tmp_path, capsys, damage, message):
    run = tmp_path / "run"
    shutil.copytree(adapter_dir.parent, run)
    damage(run / "adapter")
    err = refused(["eval", "--adapter", str(run / "adapter"), "--limit", "2", "--beams", "1"], capsys)
    assert message in err and str(run / "adapter") in err, err


def test_eval_flags_a_new_user_can_get_wrong(adapter_dir, tmp_path, capsys):
    assert "is not a directory" in refused(["eval", "--adapter", str(tmp_path / "nowhere")], capsys)
    assert "has no run.json" in refused(["eval", "--base-only", "--run-dir", str(tmp_path)], capsys)
    assert "is a directory" in refused(["eval", "--adapter", str(adapter_dir), "--output", str(tmp_path)],
                                       capsys)
    bad_run = tmp_path / "r"
    bad_run.mkdir()
    (bad_run / "run.json").write_text(json.dumps({"learning_rate": 1}))
    err = refused(["eval", "--base-only", "--run-dir", str(bad_run)], capsys)
    assert "unknown keys ['learning_rate']" in err
    err = refused(["eval", "--base-only", "--data", str(tmp_path / "x")], capsys)
    assert "data must be 'synthetic'" in err
    with pytest.raises(SystemExit) as e:  # argparse: its usage, then one error line
        main(["eval", "--adapter", str(adapter_dir), "--limit", "0"])
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert err.strip().splitlines()[-1].endswith("--limit: expected a positive integer, got '0'")


def test_demo_refuses_an_output_dir_that_is_a_file(tmp_path, capsys):
    file = tmp_path / "f"
    file.write_text("x")
    assert "is not a directory" in refused(["demo", "--output-dir", str(file), "--cache-dir",
                                            str(tmp_path / "c")], capsys)
    assert not (tmp_path / "c").exists()
