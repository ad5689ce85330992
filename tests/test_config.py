import json

import pytest

import petal
from petal.config import AIMConfig, DMAConfig, PetalConfig, SIBConfig


@pytest.mark.parametrize("name", sorted(petal.PRESETS))
def test_every_preset_round_trips_through_json(name, tmp_path):
    cfg = PetalConfig.from_preset(name)
    assert PetalConfig.from_json(cfg.to_json()) == cfg
    cfg.to_json(tmp_path / "c.json")
    assert PetalConfig.from_json(tmp_path / "c.json") == cfg
    assert json.loads(cfg.to_json())["method"] == cfg.method


def test_default_is_the_paper():
    cfg = PetalConfig()
    assert cfg == PetalConfig.from_preset("petal")
    assert (cfg.dma.core, cfg.dma.rank, cfg.dma.gamma, cfg.dma.per_modality_lambda) == ("cp", 64, True, True)
    assert cfg.dma.projections == ("query", "key", "value") and cfg.dma.attentions == ("self", "cross")
    assert (cfg.aim.num_experts, cfg.aim.gate) == (6, "softmax")
    assert (cfg.sib.eta, cfg.sib.estimator) == (0.1, "infonce")


def test_official_and_ablations():
    off = PetalConfig.from_preset("petal-official")
    assert off.dma.core == "tucker" and off.aim.gate == "uniform" and not off.dma.gamma
    assert off.dma.dropout == 0.1 and off.dma.query_transform
    enabled = {n: (c.dma.enabled, c.aim.enabled, c.sib.enabled) for n, c in petal.PRESETS.items()
               if n.startswith("petal-no") or n == "petal-dma-only"}
    assert enabled == {"petal-no-aim": (True, False, True), "petal-no-sib": (True, True, False),
                       "petal-dma-only": (True, False, False), "petal-no-dma": (False, True, True)}
    assert PetalConfig.from_preset("vl-pet-middleX").vl_pet.granularity == "middleX"
    assert {PetalConfig.from_preset(n).method for n in ("lora", "head", "full")} == {"lora", "head", "full"}


def test_from_preset_returns_an_independent_copy():
    cfg = PetalConfig.from_preset("petal")
    cfg.dma.rank = 3
    assert petal.PRESETS["petal"].dma.rank == 64


@pytest.mark.parametrize("data, match", [
    ({"methd": "petal"}, "unknown keys \\['methd'\\]"),
    ({"dma": {"rnak": 4}}, "DMAConfig: unknown keys \\['rnak'\\]"),
    ({"sib": {"estimator": "kde"}}, "SIBConfig.estimator"),
    ({"method": "prefix"}, "PetalConfig.method"),
    ({"dma": {"rank": 0}}, "DMAConfig.rank"),
    ({"dma": {"core": "tt"}}, "DMAConfig.core"),
    ({"dma": {"dropout": 1.0}}, "DMAConfig.dropout"),
    ({"dma": {"projections": ["query", "dense"]}}, "DMAConfig.projections"),
    ({"dma": {"gamma": 1}}, "DMAConfig.gamma"),
    ({"aim": {"num_experts": 2.5}}, "AIMConfig.num_experts"),
    ({"aim": {"gate": "top1"}}, "AIMConfig.gate"),
    ({"sib": {"eta": -1}}, "SIBConfig.eta"),
    ({"method": "vl-pet"}, "needs PetalConfig.vl_pet"),
    ({"vl_pet": {"granularity": "huge"}}, "VLPetConfig.granularity"),
])
def test_bad_values_and_unknown_keys_are_clear_errors(data, match):
    with pytest.raises(ValueError, match=match):
        PetalConfig.from_dict(data)


def test_type_errors_and_unknown_preset():
    with pytest.raises(TypeError, match="expects a dict"):
        PetalConfig.from_dict([1])
    with pytest.raises(TypeError, match="PetalConfig.dma must be a DMAConfig"):
        PetalConfig(dma={"rank": 4})
    with pytest.raises(ValueError, match="unknown preset 'petal-xl'.*petal-official"):
        PetalConfig.from_preset("petal-xl")
    with pytest.raises(ValueError, match="not valid JSON"):
        PetalConfig.from_json("{oops")
    with pytest.raises(ValueError, match="at least one of dma/aim/sib"):
        PetalConfig(dma=DMAConfig(enabled=False), aim=AIMConfig(enabled=False), sib=SIBConfig(enabled=False))


def test_differences_names_the_fields():
    a, b = PetalConfig(), PetalConfig(dma=DMAConfig(rank=8))
    assert a.differences(b) == ["dma.rank: 64 != 8"]
