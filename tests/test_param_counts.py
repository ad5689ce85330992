"""Trainable parameters on the real InstructBLIP Q-Former configuration (built on the meta device)."""

import pytest
import torch
from transformers import InstructBlipQFormerConfig, InstructBlipQFormerModel

import petal
from petal.config import PetalConfig

R, D, V, LAYERS, CROSS = 64, 768, 1408, 12, 6
QFORMER_PRESETS = ["petal", "petal-official", "petal-no-aim", "petal-no-sib", "petal-dma-only",
                   "petal-no-dma", "lora", "full"]


@pytest.fixture(scope="module")
def real_qformer():
    cfg = InstructBlipQFormerConfig()  # hidden 768, 12 layers, cross-attention every 2nd, 1408-wide image
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.encoder_hidden_size) == (D, LAYERS, V)
    with torch.device("meta"):
        return InstructBlipQFormerModel(cfg)


def _count(model, preset):
    petal.patch(model, PetalConfig.from_preset(preset))
    try:
        table = petal.trainable_parameters(model)
        print(f"\n== {preset} ==\n{table}")
        return table.count
    finally:
        petal.unpatch(model)


def test_petal_preset_is_about_one_million(real_qformer):
    count = _count(real_qformer, "petal")
    projections = LAYERS * 3 + CROSS * 3
    dma = (R * D + D * R + R * R) + (R * V + D * R + R * R) + 3 * R + projections * (R + D)
    aim = 6 * (D * 64 + 64 + 64 * D + D) + (D * 6 + 6) + 4
    assert count == dma + aim
    assert 0.8e6 < count < 1.2e6  # the paper: 1 M


def test_lora_r64_is_about_five_times_more(real_qformer):
    lora = _count(real_qformer, "lora")
    assert lora == LAYERS * 3 * R * (D + D) + CROSS * (R * (D + D) + 2 * R * (V + D))
    assert lora > 5 * _count(real_qformer, "petal")


def test_every_preset_count_is_printed(real_qformer, capsys):
    counts = {name: _count(real_qformer, name) for name in QFORMER_PRESETS}
    out = capsys.readouterr().out
    assert all(f"== {name} ==" in out for name in QFORMER_PRESETS) and "trainable:" in out
    assert counts["petal-no-aim"] == counts["petal-dma-only"] < counts["petal"]
    assert counts["petal-no-sib"] == counts["petal"]  # SIB lives on the full model, not the Q-Former
    assert counts["full"] == sum(p.numel() for p in real_qformer.parameters())
    with capsys.disabled():
        print("\ntrainable parameters on the InstructBLIP Q-Former:")
        for name, c in counts.items():
            print(f"  {name:<16} {c:>12,}")
