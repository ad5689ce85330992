"""Trainable parameters on the real InstructBLIP Q-Former and T5-base configurations (built on the meta
device, no download)."""

import pytest
import torch
from transformers import (
    InstructBlipConfig,
    InstructBlipForConditionalGeneration,
    InstructBlipQFormerConfig,
    InstructBlipQFormerModel,
    T5Config,
    T5ForConditionalGeneration,
)

import petal
from petal.config import PetalConfig

R, D, V, LAYERS, CROSS = 64, 768, 1408, 12, 6
QFORMER_PRESETS = ["petal", "petal-official", "petal-no-aim", "petal-no-sib", "petal-dma-only",
                   "petal-no-dma", "random-instruction", "lora", "full", "head", "maple", "llama-adapter"]
T5_PRESETS = ["vl-pet-large", "vl-pet-large-up", "vl-pet-large-down-up", "vl-pet-large-down-up-pair",
              "vl-pet-middleX", "vl-pet-middleY", "vl-pet-small", "vl-adapter", "lora-t5"]


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
            print(f"  {name:<20} {c:>12,}")


def _linear(n_in, n_out):
    return n_in * n_out + n_out


def test_baselines_on_the_real_qformer(real_qformer):
    ffn = _linear(D, 3072) + _linear(3072, D) + 2 * D  # intermediate + output (dense, LayerNorm)
    last_layer = 3 * _linear(D, D) + _linear(D, D) + 2 * D + 2 * ffn  # self-attention block, two FFNs
    assert _count(real_qformer, "head") == last_layer == 11_811_840  # the paper's Head: 11.8 M
    cross_in_first_5 = 3  # layers 0, 2, 4
    assert _count(real_qformer, "maple") == 5 * 2 * D + cross_in_first_5 * _linear(D, V) == 3_255_936
    assert _count(real_qformer, "llama-adapter") == LAYERS * (128 * D + 12) == 1_179_792
    assert _count(real_qformer, "random-instruction") == _count(real_qformer, "petal")
    released_head = petal.PetalConfig(method="head", head=petal.HeadSettings(
        parts=("intermediate", "intermediate_query")))
    petal.patch(real_qformer, released_head)
    try:
        assert petal.trainable_parameters(real_qformer).count == 2 * _linear(D, 3072) == 4_724_736
    finally:
        petal.unpatch(real_qformer)


def test_language_projection_on_the_instructblip_flan_t5_xl_config():
    t5_xl = dict(model_type="t5", d_model=2048, d_ff=5120, num_layers=24, num_heads=32, d_kv=64,
                 vocab_size=32128, feed_forward_proj="gated-gelu")
    with torch.device("meta"):
        model = InstructBlipForConditionalGeneration(InstructBlipConfig(text_config=t5_xl))
    projection_only = petal.HeadSettings(qformer_layers=0, language_projection=True)
    cfg = petal.PetalConfig(method="head", head=projection_only)
    petal.patch(model, cfg)
    assert petal.trainable_parameters(model).count == _linear(D, 2048) == 1_574_912


@pytest.fixture(scope="module")
def t5_base():
    cfg = T5Config(d_model=768, d_ff=3072, num_layers=12, num_heads=12, d_kv=64, vocab_size=32128)
    with torch.device("meta"):
        return T5ForConditionalGeneration(cfg)


def test_vl_pet_and_its_baselines_at_t5_base(t5_base, capsys):
    counts = {name: _count(t5_base, name) for name in T5_PRESETS}
    d, D, heads, dg, w, layers = 768, 192, 4, 192, 96, 12
    adapter, gate = _linear(d, D) + _linear(D, d), _linear(d, dg) + _linear(dg, d)
    decoder = layers * (_linear(d, w) + _linear(w, d))
    assert counts["vl-pet-large"] == 2 * layers * (adapter + gate) + decoder == 15_981_696
    # N_h heads that read the same input and are concatenated are one wider linear: same count
    assert counts["vl-pet-large-up"] == counts["vl-pet-large-down-up"] == counts["vl-pet-large"]
    pair_up = heads * (D // heads) * (d // heads) + d  # head i's down output feeds head i's up only
    assert counts["vl-pet-large-down-up-pair"] == 2 * layers * (_linear(d, D) + pair_up + gate) + decoder
    assert counts["vl-adapter"] == (2 + 3) * layers * (_linear(d, 96) + _linear(96, d)) == 8_899_200
    assert counts["lora-t5"] == 3 * layers * 2 * 128 * (d + d) == 14_155_776
    with capsys.disabled():
        print("\ntrainable parameters at T5-base:")
        for name, c in counts.items():
            print(f"  {name:<26} {c:>12,}")
