import json

import pytest
import torch

import petal
from petal.config import DMAConfig, PetalConfig

from .petal_models import composite_inputs, qformer_inputs, tiny_instructblip, tiny_qformer


def _perturb(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)


@pytest.mark.parametrize("preset", ["petal", "petal-official", "lora"])
def test_save_load_round_trips_exactly(preset, tmp_path):
    cfg = PetalConfig.from_preset(preset)
    a = petal.patch(tiny_instructblip("t5"), cfg)
    _perturb(a)
    petal.save_adapter(a, tmp_path)
    assert (tmp_path / "adapter_config.json").is_file() and (tmp_path / "adapter_model.safetensors").is_file()
    meta = json.loads((tmp_path / "adapter_config.json").read_text())
    assert meta["config"] == cfg.to_dict()
    assert meta["base_model_class"] == "InstructBlipForConditionalGeneration"

    b = petal.patch(tiny_instructblip("t5"), PetalConfig.from_preset(preset))
    petal.load_adapter(b, tmp_path)
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    assert pa.keys() == pb.keys()
    for n in pa:
        assert torch.equal(pa[n], pb[n]), n
    inp = composite_inputs(a)
    del inp["labels"]
    inp["decoder_input_ids"] = torch.zeros(2, 2, dtype=torch.long)
    with torch.no_grad():
        assert torch.equal(a(**inp).logits, b(**inp).logits)


def test_only_trainable_state_is_saved(tmp_path):
    from safetensors.torch import load_file

    q = petal.patch(tiny_qformer(), PetalConfig.from_preset("petal-dma-only"))
    petal.save_adapter(q, tmp_path)
    saved = load_file(str(tmp_path / "adapter_model.safetensors"))
    trainable = {n for n, p in q.named_parameters() if p.requires_grad}
    assert set(saved) == trainable
    assert sum(v.numel() for v in saved.values()) == petal.trainable_parameters(q).count


def test_loading_under_another_config_names_the_difference(tmp_path):
    petal.save_adapter(petal.patch(tiny_qformer(), PetalConfig(dma=DMAConfig(rank=8))), tmp_path)
    other = petal.patch(tiny_qformer(), PetalConfig(dma=DMAConfig(rank=4)))
    with pytest.raises(ValueError, match="another config.*dma.rank: 4 != 8"):
        petal.load_adapter(other, tmp_path)
    with pytest.raises(ValueError, match="not patched"):
        petal.load_adapter(tiny_qformer(), tmp_path)
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        petal.load_adapter(other, tmp_path / "nowhere")


def test_save_and_load_refuse_a_merged_model(tmp_path):
    q = petal.patch(tiny_qformer(), PetalConfig.from_preset("petal-dma-only"))
    petal.save_adapter(q, tmp_path)
    petal.merge(q)
    with pytest.raises(ValueError, match="unmerged"):
        petal.save_adapter(q, tmp_path / "m")
    with pytest.raises(ValueError, match="unmerged"):
        petal.load_adapter(q, tmp_path)
    petal.unmerge(q)
    petal.load_adapter(q, tmp_path)
    with torch.no_grad():
        q(**qformer_inputs())
