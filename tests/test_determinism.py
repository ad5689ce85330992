"""``--seed`` fixes a run: the same ``petal train`` command twice gives bit-identical adapters and losses."""

import json

import torch

from petal.cli import main


def _train(out, cache, seed="0"):
    args = ["train", "--model", "embedded", "--pretrain-steps", "5", "--preset", "petal-official",
            "--max-steps", "3", "--batch-size", "4", "--train-limit", "16", "--eval-limit", "4",
            "--lr", "3e-3", "--num-beams", "1", "--max-new-tokens", "2", "--seed", seed, "--no-progress",
            "--output-dir", str(out), "--cache-dir", str(cache)]
    assert main(args) == 0
    losses = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return (out / "adapter" / "adapter_model.safetensors").read_bytes(), losses


def test_the_same_command_twice_gives_the_same_adapter(tmp_path, capsys):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # the first run pre-trains the base (drawing from the global RNG), the second loads it: the
        # adapter's initialisation, data order and dropout (petal-official: p=0.1) must not care
        first = _train(tmp_path / "a", tmp_path / "cache")
        assert "pre-training" in capsys.readouterr().out
        torch.manual_seed(1234)  # whatever the global RNG holds before the run
        second = _train(tmp_path / "b", tmp_path / "cache")
        assert "pre-training" not in capsys.readouterr().out
        other = _train(tmp_path / "c", tmp_path / "cache", seed="1")
    finally:
        torch.set_num_threads(threads)
    assert first[0] == second[0]  # bit-identical adapter file
    assert first[1] == second[1]  # every logged loss, bit for bit
    assert other[0] != first[0] and other[1] != first[1]  # the seed does matter
