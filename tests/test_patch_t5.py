import dataclasses

import pytest
import torch
from torch import nn
from transformers import T5Config, T5EncoderModel, T5ForConditionalGeneration
from transformers.models.t5.modeling_t5 import T5LayerFF, T5LayerSelfAttention

from petal.layers.base import AdapterWrapper
from petal.layers.gated_adapter import ParallelAdapterLinear
from petal.models.t5 import T5GatedFF, T5GatedSelfAttention, patch_t5
from petal.vl_pet_config import VARIANTS, VL_PET_PRESETS, VLPetConfig
from petal_kernels import reference

PRESETS = sorted(VL_PET_PRESETS)
WRAPPED = [
    "encoder.block.0.layer.0", "encoder.block.0.layer.1",
    "encoder.block.1.layer.0", "encoder.block.1.layer.1",
    "decoder.block.0.layer.1.EncDecAttention.v", "decoder.block.1.layer.1.EncDecAttention.v",
]


def t5_config(**kw):
    return T5Config(d_model=32, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4, d_kv=8,
                    vocab_size=100, decoder_start_token_id=0, pad_token_id=0, attn_implementation="eager",
                    **kw)


def tiny_t5(seed=0, **kw):
    torch.manual_seed(seed)
    return T5ForConditionalGeneration(t5_config(**kw))


def batch(seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 100, (2, 6), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    labels = torch.randint(1, 100, (2, 4), generator=g)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def adapter_parameters(model):
    """Parameters inside a wrapper but not inside its base_layer: what the patch framework trains."""
    names = set()
    for prefix, module in model.named_modules():
        if isinstance(module, AdapterWrapper):
            for name, _ in module.named_parameters():
                if not name.startswith("base_layer."):
                    names.add(f"{prefix}.{name}")
    return names


def freeze(model):
    trainable = adapter_parameters(model)
    for name, p in model.named_parameters():
        p.requires_grad_(name in trainable)
    return trainable


def randomize_adapters(model, seed=3):
    g = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name in sorted(adapter_parameters(model)):
            p = params[name]
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3)


def expected_count(cfg, d=32, layers=2, inner=32):
    D, heads, dg, w = cfg.reduction_dim, cfg.num_heads, cfg.gate_dim, cfg.decoder_adapter_dim
    up = D * d // heads + d if cfg.variant == "down_up_pair" else D * d + d
    gate = {"large": d * dg + dg + dg * d + d, "middleX": d + 1, "middleY": d, "small": 2 * d + 1}
    return 2 * layers * (d * D + D + up + gate[cfg.granularity]) + layers * (d * w + w + w * inner + inner)


def test_wraps_the_documented_places():
    model = tiny_t5()
    originals = {name: model.get_submodule(name) for name in WRAPPED}
    weight_ptrs = {n: p.data_ptr() for n, p in model.named_parameters()}
    names = patch_t5(model, VL_PET_PRESETS["vl-pet-large"])
    assert names == WRAPPED
    for name in WRAPPED:
        wrapper = model.get_submodule(name)
        assert wrapper.base_layer is originals[name]
    assert isinstance(model.get_submodule(WRAPPED[0]), T5GatedSelfAttention)
    assert isinstance(model.get_submodule(WRAPPED[1]), T5GatedFF)
    assert isinstance(model.get_submodule(WRAPPED[4]), ParallelAdapterLinear)
    # decoder self-attention and FFN untouched
    assert isinstance(model.get_submodule("decoder.block.0.layer.0"), T5LayerSelfAttention)
    assert isinstance(model.get_submodule("decoder.block.0.layer.2"), T5LayerFF)
    assert all(model.get_submodule(name).training for name in WRAPPED)
    # frozen weights are the same storage; nothing was frozen or unfrozen
    adapters = adapter_parameters(model)
    seen = set()
    for name, p in model.named_parameters():
        assert p.requires_grad
        base_name = name.replace(".base_layer", "")
        if base_name in weight_ptrs:
            assert p.data_ptr() == weight_ptrs[base_name]
            seen.add(base_name)
        else:
            assert name in adapters
    assert seen == set(weight_ptrs)


def test_wrappers_take_the_mode_of_the_module_they_replace():
    model = tiny_t5().eval()
    patch_t5(model, VL_PET_PRESETS["vl-pet-large"])
    assert not any(m.training for m in model.modules())


def test_placement_switches():
    cfg = VLPetConfig(encoder_ffn=False, decoder_cross_attention_value=False)
    assert patch_t5(tiny_t5(), cfg) == ["encoder.block.0.layer.0", "encoder.block.1.layer.0"]
    cfg = VLPetConfig(encoder_self_attention=False, encoder_ffn=False)
    assert patch_t5(tiny_t5(), cfg) == WRAPPED[4:]


@pytest.mark.parametrize("preset", PRESETS)
def test_trainable_parameter_count(preset):
    model = tiny_t5()
    patch_t5(model, VL_PET_PRESETS[preset])
    trainable = freeze(model)
    params = dict(model.named_parameters())
    assert sum(params[n].numel() for n in trainable) == expected_count(VL_PET_PRESETS[preset])


@pytest.mark.parametrize("variant", VARIANTS)
def test_trainable_parameter_count_per_variant(variant):
    cfg = VLPetConfig(variant=variant)
    model = tiny_t5()
    patch_t5(model, cfg)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) > 0
    params = dict(model.named_parameters())
    assert sum(params[n].numel() for n in freeze(model)) == expected_count(cfg)


def test_hand_count_for_vl_pet_large():
    # per encoder sublayer: adapter 32*192+192 + 192*32+32 = 12512, large gate the same; x4 sublayers;
    # decoder value adapter 32*96+96 + 96*32+32 = 6272, x2 layers
    assert expected_count(VL_PET_PRESETS["vl-pet-large"]) == 4 * (12512 + 12512) + 2 * 6272 == 112640


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_forward_backward_reaches_adapters_only(preset, variant):
    model = tiny_t5()
    patch_t5(model, dataclasses.replace(VL_PET_PRESETS[preset], variant=variant))
    trainable = freeze(model)
    randomize_adapters(model)
    model.train()
    model(**batch()).loss.backward()
    for name, p in model.named_parameters():
        if name in trainable:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name


def capture_sublayers(model):
    """Record (wrapper, input, call kwargs, output) of every wrapped encoder sublayer in the next forward."""
    seen = {}
    for name, module in model.named_modules():
        if isinstance(module, (T5GatedSelfAttention, T5GatedFF)):
            module.register_forward_hook(
                lambda m, args, kwargs, out, name=name: seen.__setitem__(name, (m, args[0], kwargs, out)),
                with_kwargs=True)
    return seen


def sublayer_output_h(wrapper, x, kwargs):
    """The wrapped T5 sublayer's own output before its residual, recomputed from its children."""
    base = wrapper.base_layer
    if isinstance(base, T5LayerFF):
        return base.DenseReluDense(base.layer_norm(x))
    return base.SelfAttention(base.layer_norm(x), mask=kwargs.get("attention_mask"),
                              position_bias=kwargs.get("position_bias"))[0]


@pytest.mark.parametrize("preset", PRESETS)
def test_sublayer_output_is_reference_of_its_intermediates(preset):
    model = tiny_t5()
    patch_t5(model, VL_PET_PRESETS[preset])
    randomize_adapters(model)
    model.eval()
    seen = capture_sublayers(model)
    with torch.no_grad():
        b = batch()
        model.encoder(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
        assert len(seen) == 4
        for wrapper, x, kwargs, out in seen.values():
            out = out[0] if isinstance(out, tuple) else out
            h = sublayer_output_h(wrapper, x, kwargs)
            args = wrapper.vl_pet.intermediates(x, h)
            assert torch.count_nonzero(args["u"]) > 0
            torch.testing.assert_close(out, reference.gated_residual(**args), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("preset", PRESETS)
def test_init_state_is_scaled_sublayers_and_identity_value_adapters(preset):
    """What is true right after patching with the official init (see petal/layers/gated_adapter.py):
    each encoder sublayer gives x + s_g * G0 * h (G0 = 0.5, or 1 for middleY) instead of x + h, so the
    model output differs from the base model's; the decoder value adapters start at exactly W_v E."""
    model = tiny_t5().eval()
    ids = batch()["input_ids"]
    with torch.no_grad():
        base_logits = model(input_ids=ids, decoder_input_ids=ids[:, :3]).logits
        patch_t5(model, VL_PET_PRESETS[preset])
        seen = capture_sublayers(model)
        logits = model(input_ids=ids, decoder_input_ids=ids[:, :3]).logits
        g0 = 1.0 if preset == "vl-pet-middleY" else 0.5
        assert len(seen) == 4
        for wrapper, x, kwargs, out in seen.values():
            out = out[0] if isinstance(out, tuple) else out
            torch.testing.assert_close(out, x + 0.3 * g0 * sublayer_output_h(wrapper, x, kwargs))
        for name in WRAPPED[4:]:
            v = model.get_submodule(name)
            e = torch.randn(2, 5, 32)
            assert torch.equal(v(e), v.base_layer(e))
    assert not torch.allclose(logits, base_logits, atol=1e-3)


def test_middle_y_with_unit_gate_scale_equals_base_model_at_init():
    model = tiny_t5().eval()
    b = batch()
    with torch.no_grad():
        base = model(**b)
        patch_t5(model, VLPetConfig(granularity="middleY", gate_scale=1.0))
        patched = model(**b)
    torch.testing.assert_close(patched.logits, base.logits, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(patched.loss, base.loss)


@pytest.mark.parametrize("preset", ["vl-pet-large", "vl-pet-small"])
def test_generate_with_and_without_cache(preset):
    model = tiny_t5()
    patch_t5(model, VL_PET_PRESETS[preset])
    randomize_adapters(model)
    model.eval()
    b = batch()
    kw = {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"], "max_new_tokens": 5,
          "do_sample": False}
    cached = model.generate(**kw, use_cache=True)
    uncached = model.generate(**kw, use_cache=False)
    assert cached.shape == (2, 6)
    assert torch.equal(cached, uncached)
    beams = model.generate(**kw, num_beams=3)
    assert beams.shape[0] == 2


def test_gradient_checkpointing_gives_the_same_gradients():
    grads = []
    for checkpointing in (False, True):
        model = tiny_t5(dropout_rate=0.2)
        patch_t5(model, VL_PET_PRESETS["vl-pet-large"])
        trainable = freeze(model)
        randomize_adapters(model)
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        torch.manual_seed(11)
        model(**batch()).loss.backward()
        params = dict(model.named_parameters())
        grads.append({n: params[n].grad.clone() for n in sorted(trainable)})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-7, msg=name)


def test_dropout_uses_the_sublayer_rate_unless_configured():
    model = tiny_t5(dropout_rate=0.3)
    patch_t5(model, VL_PET_PRESETS["vl-pet-middleX"])
    assert model.get_submodule(WRAPPED[0]).dropout_rate() == 0.3
    model = tiny_t5(dropout_rate=0.3)
    patch_t5(model, VLPetConfig(dropout=0.05))
    assert model.get_submodule(WRAPPED[1]).dropout_rate() == 0.05
    model.train()
    torch.manual_seed(0)
    a = model(**batch()).logits
    torch.manual_seed(1)
    b = model(**batch()).logits
    assert not torch.allclose(a, b)  # dropout is live in training


def test_output_attentions_still_recorded():
    model = tiny_t5().eval()
    b = {k: v for k, v in batch().items() if k != "labels"}
    dec = b["input_ids"][:, :3]
    with torch.no_grad():
        base = model(**b, decoder_input_ids=dec, output_attentions=True)
        patch_t5(model, VL_PET_PRESETS["vl-pet-large"])
        out = model(**b, decoder_input_ids=dec, output_attentions=True)
    assert len(out.encoder_attentions) == 2 and len(out.cross_attentions) == 2
    torch.testing.assert_close(out.encoder_attentions[0], base.encoder_attentions[0])
    assert not torch.allclose(out.encoder_attentions[1], base.encoder_attentions[1])


def test_unpatching_by_base_layer_restores_the_original_model():
    model = tiny_t5().eval()
    b = batch()
    with torch.no_grad():
        before = model(**b).logits
        names = patch_t5(model, VL_PET_PRESETS["vl-pet-small"])
        for name in names:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, model.get_submodule(name).base_layer)
        after = model(**b).logits
    assert not any(isinstance(m, AdapterWrapper) for m in model.modules())
    assert torch.equal(before, after)


def test_encoder_only_model():
    torch.manual_seed(0)
    model = T5EncoderModel(t5_config())
    assert patch_t5(model, VLPetConfig()) == WRAPPED[:4]
    assert model(input_ids=batch()["input_ids"]).last_hidden_state.shape == (2, 6, 32)


def test_bfloat16_model():
    model = tiny_t5().to(torch.bfloat16)
    patch_t5(model, VL_PET_PRESETS["vl-pet-large"])
    adapter_dtypes = {p.dtype for n, p in model.named_parameters() if n in adapter_parameters(model)}
    assert adapter_dtypes == {torch.float32}
    logits = model(**batch()).logits
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()


def test_t5_inside_instructblip():
    from transformers import (
        InstructBlipConfig,
        InstructBlipForConditionalGeneration,
        InstructBlipQFormerConfig,
        InstructBlipVisionConfig,
    )

    vision = InstructBlipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, image_size=16, patch_size=8)
    qformer = InstructBlipQFormerConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, encoder_hidden_size=16, vocab_size=50)
    config = InstructBlipConfig(vision_config=vision.to_dict(), qformer_config=qformer.to_dict(),
                                text_config=t5_config().to_dict(), num_query_tokens=4)
    model = InstructBlipForConditionalGeneration(config)
    names = patch_t5(model, VL_PET_PRESETS["vl-pet-middleY"])
    assert names == ["language_model." + n for n in WRAPPED]
    assert isinstance(model.language_model.encoder.block[1].layer[1], T5GatedFF)


def test_errors():
    model = tiny_t5()
    patch_t5(model, VLPetConfig())
    with pytest.raises(ValueError, match="already patched"):
        patch_t5(model, VLPetConfig())
    with pytest.raises(TypeError, match="supports T5ForConditionalGeneration.*got Linear"):
        patch_t5(nn.Linear(2, 2), VLPetConfig())
    with pytest.raises(TypeError, match="cfg must be a VLPetConfig, got dict"):
        patch_t5(tiny_t5(), {"granularity": "large"})
    with pytest.raises(ValueError, match="d_model=30 into num_heads=4"):
        patch_t5(T5ForConditionalGeneration(T5Config(d_model=30, d_ff=16, num_layers=1, num_heads=2, d_kv=4,
                                                     vocab_size=20)), VLPetConfig(variant="up"))


@pytest.mark.parametrize("preset", ["vl-pet-large", "vl-pet-small"])
def test_petal_patch_trains_exactly_the_vl_pet_modules(preset):
    import petal

    if not hasattr(petal, "patch") or not hasattr(petal, "PetalConfig"):
        pytest.skip("petal.patch / petal.PetalConfig not available in this checkout")
    model = tiny_t5().eval()
    b = batch()
    with torch.no_grad():
        before = model(**b).logits
    petal.patch(model, petal.PetalConfig.from_preset(preset))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == adapter_parameters(model)
    count = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert count == expected_count(VL_PET_PRESETS[preset])
    petal.unpatch(model)
    with torch.no_grad():
        assert torch.equal(model(**b).logits, before)
