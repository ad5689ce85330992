"""Several processes train one model: the global batch's split, and real 2-process CPU (gloo) runs
launched by torchrun, compared with one process."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import petal
from petal.distributed import GlobalBatchSampler, label_tokens

ROOT = Path(petal.__file__).resolve().parents[1]


def _env(cache: Path) -> dict:
    env = dict(os.environ, PETAL_CACHE=str(cache), OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def _run(cmd, cache: Path, timeout=600) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, env=_env(cache), capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def _torchrun(*args) -> list:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]


def _losses(run_dir: Path) -> list:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(e["step"], e["loss"], e["lm_loss"], e["sib_loss"]) for e in lines if "loss" in e]


def test_sampler_splits_each_global_batch_across_processes():
    one = GlobalBatchSampler(23, seed=3, batch_size=8)
    two = [GlobalBatchSampler(23, seed=3, batch_size=4, num_replicas=2, rank=r) for r in range(2)]
    for s in (one, *two):
        s.set_epoch(1)
    single, parts = list(one), [list(s) for s in two]
    assert len(single) == 16 and all(len(p) == 8 for p in parts)  # 2 global batches; 7 records dropped
    for k in range(2):
        assert single[8 * k:8 * k + 8] == parts[0][4 * k:4 * k + 4] + parts[1][4 * k:4 * k + 4]
    two[1].set_epoch(1, skip=1)  # a resumed run starts at the second global batch
    assert list(two[1]) == parts[1][4:]
    with pytest.raises(ValueError, match="fewer than one global batch"):
        GlobalBatchSampler(7, seed=0, batch_size=4, num_replicas=2)
    assert list(GlobalBatchSampler(3, seed=0, batch_size=8)) != []  # one process: a small set is one batch


def test_label_tokens_counts_what_the_lm_loss_averages():
    labels = torch.tensor([[5, 6, -100], [7, -100, -100]])
    enc_dec = torch.nn.Linear(1, 1)
    assert label_tokens(enc_dec, labels) == 3
    enc_dec.config = type("C", (), {"use_decoder_only_language_model": True})()
    assert label_tokens(enc_dec, labels) == 1  # a causal LM never predicts the first position


@pytest.mark.slow
def test_two_processes_train_like_one_with_the_global_batch(tmp_path):
    cache = tmp_path / "cache"  # empty: the two ranks need the base at once, one builds it
    common = ["-m", "petal", "train", "--model", "embedded", "--pretrain-steps", "5", "--data", "synthetic",
              "--max-steps", "5", "--train-limit", "40", "--eval-limit", "8", "--num-beams", "1",
              "--max-new-tokens", "2", "--lr", "3e-3", "--checkpoint-every", "2", "--no-progress"]
    two = _run(_torchrun(*common, "--batch-size", "4", "--output-dir", str(tmp_path / "two")), cache)
    one = _run([sys.executable, *common, "--batch-size", "8", "--output-dir", str(tmp_path / "one")], cache)

    curve1, curve2 = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert [s for s, *_ in curve2] == [1, 2, 3, 4, 5]  # every step once: one process writes the log
    for a, b in zip(curve1, curve2):
        for x, y in zip(a[1:], b[1:]):  # loss, LM loss (global token mean), SIB loss (global negatives)
            assert abs(x - y) <= 1e-3 * abs(x), (curve1, curve2)
    assert "batch 4 × 2 processes" in two.stdout and two.stdout.count("trained 5 steps") == 1
    assert two.stdout.count("pre-training the embedded base") == 1
    assert "pre-training" not in one.stdout  # built once per machine
    entries = [p.name for p in (cache / "embedded-base").iterdir()]
    assert len([e for e in entries if not e.endswith(".lock")]) == 1, entries
    last = tmp_path / "two" / "checkpoints" / "step-00000005"
    assert json.loads((last / "trainer_state.json").read_text())["num_processes"] == 2
    rngs = torch.load(last / "training_state.pt", weights_only=False)["rng"]
    assert len(rngs) == 2  # each process's RNG, for an exact resume
    assert (tmp_path / "two" / "adapter" / "adapter_model.safetensors").is_file()

    # the 2-process run interrupted after step 4's checkpoint (step 5 logged, its checkpoint lost)
    # resumes on 2 processes to the same step 5, logging every step once
    shutil.rmtree(last)
    _run(_torchrun(*common[:2], "train", "--output-dir", str(tmp_path / "two"), "--resume", "--no-progress"),
         cache)
    assert _losses(tmp_path / "two") == curve2


@pytest.mark.slow
def test_adapter_saves_and_loads_under_fsdp2(tmp_path):
    """FSDP2 (fully_shard) on 2 CPU processes: the adapter file equals the unsharded model's adapter,
    and loading it into another sharded model sets the shards (FSDP1 segfaults on CPU here)."""
    done = _run(_torchrun(str(ROOT / "tests" / "fsdp_adapter_worker.py"), str(tmp_path)), tmp_path / "cache",
                timeout=300)
    assert "rank 0 ok" in done.stdout and "rank 1 ok" in done.stdout, done.stdout + done.stderr
