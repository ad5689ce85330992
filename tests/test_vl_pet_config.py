import json

import pytest

from petal.vl_pet_config import GRANULARITIES, VARIANTS, VL_PET_PRESETS, VLPetConfig


def test_defaults_are_the_official_t5_settings():
    cfg = VLPetConfig()
    assert (cfg.granularity, cfg.variant) == ("large", "down")
    assert (cfg.reduction_dim, cfg.num_heads, cfg.gate_dim) == (192, 4, 192)
    assert (cfg.gate_scale, cfg.adapter_scale, cfg.decoder_adapter_dim) == (0.3, 1.0, 96)
    assert cfg.dropout is None
    assert cfg.encoder_self_attention and cfg.encoder_ffn and cfg.decoder_cross_attention_value


def test_presets_differ_only_in_granularity_or_multi_head_design():
    designs = [f"vl-pet-large-{v.replace('_', '-')}" for v in VARIANTS if v != "down"]
    assert designs == ["vl-pet-large-up", "vl-pet-large-down-up", "vl-pet-large-down-up-pair"]
    assert sorted(VL_PET_PRESETS) == sorted([f"vl-pet-{g}" for g in GRANULARITIES] + designs)
    for name, cfg in VL_PET_PRESETS.items():
        if name in designs:
            design = name.removeprefix("vl-pet-large-")
            assert (cfg.granularity, cfg.variant.replace("_", "-")) == ("large", design)
            changed = ("variant",)
        else:
            assert (cfg.granularity, cfg.variant) == (name.removeprefix("vl-pet-"), "down")
            changed = ("granularity",)
        others = {k: v for k, v in cfg.to_dict().items() if k not in changed}
        defaults = {k: v for k, v in VLPetConfig().to_dict().items() if k not in changed}
        assert others == defaults


@pytest.mark.parametrize("variant", VARIANTS)
def test_json_round_trip(variant):
    cfg = VLPetConfig(granularity="small", variant=variant, dropout=0.2, gate_scale=1.0, encoder_ffn=False)
    again = VLPetConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg


def test_from_dict_rejects_unknown_keys():
    data = VLPetConfig().to_dict()
    data["reduction_factor"] = 8
    with pytest.raises(ValueError, match="unknown keys \\['reduction_factor'\\]"):
        VLPetConfig.from_dict(data)
    with pytest.raises(TypeError, match="expects a dict"):
        VLPetConfig.from_dict([("granularity", "large")])


@pytest.mark.parametrize("field, value", [
    ("granularity", "medium"),
    ("variant", "pair"),
    ("reduction_dim", 0),
    ("reduction_dim", 190),  # not divisible by num_heads=4
    ("num_heads", 2.0),
    ("gate_dim", True),
    ("decoder_adapter_dim", -1),
    ("gate_scale", float("nan")),
    ("adapter_scale", "1"),
    ("dropout", 1.0),
    ("dropout", -0.1),
    ("encoder_ffn", 1),
    ("t5_module", ""),
])
def test_bad_field_is_named(field, value):
    with pytest.raises(ValueError, match=f"VLPetConfig.{field}"):
        VLPetConfig(**{field: value})


def test_validate_catches_later_mutation_and_empty_placement():
    cfg = VLPetConfig()
    cfg.num_heads = 5
    with pytest.raises(ValueError, match="reduction_dim must be divisible by num_heads=5"):
        cfg.validate()
    with pytest.raises(ValueError, match="at least one of"):
        VLPetConfig(encoder_self_attention=False, encoder_ffn=False, decoder_cross_attention_value=False)
