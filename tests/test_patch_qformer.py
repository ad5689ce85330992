import pytest
import torch
from torch import nn

import petal
from petal.baseline_config import HeadSettings
from petal.config import PetalConfig
from petal.layers.base import AdapterWrapper

from .petal_models import composite_inputs, qformer_inputs, tiny_blip2, tiny_instructblip, tiny_qformer

BUILDERS = {
    "instructblip-t5": lambda: tiny_instructblip("t5"),
    "instructblip-llama": lambda: tiny_instructblip("llama"),
    "blip2-opt": tiny_blip2,
}
QFORMER_PRESETS = ["petal", "petal-no-aim", "petal-no-sib", "petal-dma-only", "petal-no-dma", "lora", "full"]


def _frozen_snapshot(model):
    return {n: (p.detach().clone(), p.data_ptr()) for n, p in model.named_parameters()}


@pytest.mark.parametrize("preset", QFORMER_PRESETS)
def test_bare_qformer_outputs_equal_base_right_after_patch(preset):
    q, inp = tiny_qformer(), qformer_inputs()
    with torch.no_grad():
        ref = q(**inp).last_hidden_state
        petal.patch(q, PetalConfig.from_preset(preset))
        out = q(**inp).last_hidden_state
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize("family", sorted(BUILDERS))
def test_full_models_logits_equal_base_right_after_patch(family):
    model = BUILDERS[family]()
    inp = composite_inputs(model)
    with torch.no_grad():
        ref = model(**inp)
        petal.patch(model)
        out = model(**inp)
    # equal up to float32 rounding: the fused frozen paths round differently from transformers' ops,
    # and a language model on top amplifies that by the CPU's GEMM kernels (1.4e-6 on logits of ~2
    # on an AVX2 machine); a wrong adapter contribution would be orders of magnitude above this
    torch.testing.assert_close(out.logits, ref.logits, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.lm_loss, ref.loss, rtol=1e-5, atol=1e-6)
    assert torch.isfinite(out.sib_loss)


def _train_steps(model, inputs, loss_of, steps=3):
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        loss_of(model(**inputs)).backward()
        opt.step()
    model.eval()


@pytest.mark.parametrize("family", sorted(BUILDERS))
def test_training_changes_only_adapters_and_keeps_frozen_storage(family):
    model = BUILDERS[family]()
    inp = composite_inputs(model)
    before = _frozen_snapshot(model)
    petal.patch(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(("petal_" in n or ".p." in n or ".gamma." in n or "embeddings." in n
                              or "layernorm." in n) for n in trainable)
    _train_steps(model, inp, lambda out: out.loss)
    after = dict(model.named_parameters())
    changed = 0
    for name, p in after.items():
        orig = name.replace(".base_layer", "")
        if orig in before and not p.requires_grad:
            assert p.data_ptr() == before[orig][1], f"{name} was copied"
            assert torch.equal(p, before[orig][0]), f"{name} changed"
        elif p.requires_grad:
            changed += int(not torch.equal(p, before[orig][0]) if orig in before else True)
    assert changed > 0
    assert model.qformer.petal_dma.text.up.abs().sum() > 0  # the zero-init up factor trained


def test_unpatch_restores_the_original_modules_and_flags():
    model = tiny_instructblip("t5")
    inp = composite_inputs(model)
    with torch.no_grad():
        ref = model(**inp).logits
    modules = dict(model.named_modules())
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    petal.patch(model)
    _train_steps(model, inp, lambda out: out.loss, steps=1)
    petal.unpatch(model)
    assert not any(isinstance(m, AdapterWrapper) for m in model.modules())
    assert dict(model.named_modules()).keys() == modules.keys()
    assert all(model.get_submodule(n) is m for n, m in modules.items() if n)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert not model._forward_hooks and not model._forward_pre_hooks
    with torch.no_grad():
        assert torch.equal(model(**inp).logits, ref)
    assert not petal.is_patched(model)
    petal.patch(model)  # patchable again


def test_patching_twice_and_unsupported_models_are_clear_errors():
    q = tiny_qformer()
    petal.patch(q)
    with pytest.raises(ValueError, match="already patched.*unpatch"):
        petal.patch(q)
    with pytest.raises(ValueError, match="does not support Linear; supported models are "
                                         "InstructBlipForConditionalGeneration.*T5ForConditionalGeneration"):
        petal.patch(nn.Linear(2, 2))
    with pytest.raises(TypeError, match="must be a torch.nn.Module"):
        petal.patch("model")
    with pytest.raises(TypeError, match="petal.PetalConfig"):
        petal.patch(tiny_qformer(), {"method": "petal"})
    with pytest.raises(ValueError, match="not patched"):
        petal.unpatch(tiny_qformer())
    with pytest.raises(ValueError, match="language_projection trains the language projection"):
        petal.patch(tiny_qformer(), PetalConfig(method="head", head=HeadSettings(language_projection=True)))
    with pytest.raises(ValueError, match="VL-PET needs a T5 language model.*'llama'"):
        petal.patch(tiny_instructblip("llama"), PetalConfig.from_preset("vl-pet-large"))


def test_failed_patch_leaves_the_model_untouched():
    model = tiny_blip2()
    modules = dict(model.named_modules())
    with pytest.raises(ValueError):
        petal.patch(model, PetalConfig.from_preset("vl-pet-small"))  # OPT language model
    assert dict(model.named_modules()) == modules and not petal.is_patched(model)


def test_blip2_bare_qformer_and_blip2_model():
    model = tiny_blip2()
    petal.patch(model.qformer)
    assert isinstance(model.qformer.encoder.layer[0].attention.attention, AdapterWrapper)
    assert isinstance(model.qformer.layernorm, AdapterWrapper)  # AIM on the query embeddings
    with torch.no_grad():
        model(**composite_inputs(model))


def test_baselines_lora_head_full():
    model = tiny_instructblip("t5")
    petal.patch(model, PetalConfig.from_preset("lora"))
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n and ".qformer." not in n and n.startswith("qformer.") for n in names)
    assert any("crossattention.attention.key.lora_A" in n for n in names)
    petal.unpatch(model)
    assert not any("lora" in n for n, _ in model.named_parameters())
    assert not hasattr(model, "peft_config"), "peft's bookkeeping must go with the LoRA layers"

    petal.patch(model, PetalConfig.from_preset("head"))  # copies of the last Q-Former layer's modules
    assert {n.split(".trained.")[0] for n, p in model.named_parameters() if p.requires_grad} == {
        f"qformer.encoder.layer.1.{part}" for part in ("attention", "intermediate", "output",
                                                       "intermediate_query", "output_query")}
    petal.unpatch(model)
    petal.patch(model, PetalConfig.from_preset("full"))
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"qformer", "query_tokens", "language_projection"}


def test_lora_merge_goes_through_peft():
    q, inp = tiny_qformer(), qformer_inputs()
    petal.patch(q, PetalConfig.from_preset("lora"))
    with torch.no_grad():
        for n, p in q.named_parameters():
            if "lora_B" in n:
                p.normal_()
        ref = q(**inp).last_hidden_state
        petal.merge(q)
        torch.testing.assert_close(q(**inp).last_hidden_state, ref, rtol=1e-4, atol=1e-4)
        petal.unmerge(q)


def test_vl_pet_presets_on_the_t5_inside_instructblip():
    model = tiny_instructblip("t5")
    inp = composite_inputs(model)
    petal.patch(model, PetalConfig.from_preset("vl-pet-middleY"))  # gate scale 0.3: not equal at init
    model(**inp).loss.backward()
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith("language_model.") for n in trainable)
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad)
    petal.unpatch(model)
    assert not any(isinstance(m, AdapterWrapper) for m in model.modules())


def test_gradient_checkpointing_matches_plain_backward():
    q, inp = tiny_qformer(), qformer_inputs()
    petal.patch(q)
    with torch.no_grad():
        q.petal_dma.text.up.normal_()
        q.petal_dma.image.up.normal_()
    q.train()
    grads = []
    for checkpointing in (False, True):
        if checkpointing:
            q.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        q.zero_grad()
        q(**inp).last_hidden_state.square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in q.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-5, atol=1e-6)


def test_bf16_autocast_forward_backward():
    q, inp = tiny_qformer(), qformer_inputs()
    petal.patch(q)
    q.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = q(**inp).last_hidden_state
    out.float().square().mean().backward()
    assert q.petal_dma.text.up.grad is not None and torch.isfinite(q.petal_dma.text.up.grad).all()


def test_half_precision_base_keeps_float32_adapters():
    q, inp = tiny_qformer(), qformer_inputs()
    q.to(torch.bfloat16)
    petal.patch(q)
    assert q.petal_dma.text.down.dtype == torch.float32
    inp["query_embeds"] = inp["query_embeds"].bfloat16()
    inp["encoder_hidden_states"] = inp["encoder_hidden_states"].bfloat16()
    assert q(**inp).last_hidden_state.dtype == torch.bfloat16


@pytest.mark.slow
def test_torch_compile_of_the_patched_qformer():
    q, inp = tiny_qformer(), qformer_inputs()
    petal.patch(q)
    with torch.no_grad():
        q.petal_dma.text.up.normal_()
        ref = q(**inp).last_hidden_state
    compiled = torch.compile(q)
    with torch.no_grad():
        torch.testing.assert_close(compiled(**inp).last_hidden_state, ref, rtol=1e-5, atol=1e-5)
    q.train()
    compiled(**inp).last_hidden_state.sum().backward()
    assert q.petal_dma.text.down.grad is not None


def test_benchmark_call_shape_query_instruction_image_tokens():
    """The benchmark's call: query embeds + instruction ids + image features, every preset it uses."""
    for preset in ("petal", "petal-official", "lora", "full"):
        q = tiny_qformer()
        petal.patch(q, PetalConfig.from_preset(preset))
        q.train()
        B = 2
        out = q(input_ids=torch.randint(1, 99, (B, 6)), attention_mask=torch.ones(B, 4 + 6, dtype=torch.long),
                query_embeds=torch.randn(B, 4, 32), encoder_hidden_states=torch.randn(B, 9, 48))
        assert out.last_hidden_state.shape == (B, 10, 32)
        out.last_hidden_state.mean().backward()


def test_accelerate_dispatched_model_patches_and_runs():
    from accelerate import dispatch_model

    model = dispatch_model(tiny_instructblip("t5"), device_map={"": "cpu"})
    inp = composite_inputs(model)
    with torch.no_grad():
        ref = model(**inp).logits
        petal.patch(model)
        torch.testing.assert_close(model(**inp).logits, ref, rtol=1e-5, atol=1e-6)  # fp32 rounding, as above
    dense = model.qformer.encoder.layer[0].output.dense
    assert model.qformer.petal_dma.text.down.device == dense.weight.device


@pytest.mark.parametrize("lm", ["t5", "llama"])
def test_generate_after_patch_matches_base(lm):
    model = tiny_instructblip(lm)
    inp = composite_inputs(model)
    args = dict(pixel_values=inp["pixel_values"], qformer_input_ids=inp["qformer_input_ids"],
                input_ids=inp["input_ids"], max_new_tokens=3)
    ref = model.generate(**args)
    petal.patch(model)
    assert torch.equal(model.generate(**args), ref)


def test_merge_needs_a_static_update():
    for preset in ("full", "petal-no-dma"):
        q = petal.patch(tiny_qformer(), PetalConfig.from_preset(preset))
        with pytest.raises(ValueError, match="nothing to merge"):
            petal.merge(q)
    with pytest.raises(ValueError, match="not patched"):
        petal.merge(tiny_qformer())


def test_output_attentions_and_hidden_states_still_recorded():
    q, inp = tiny_qformer(), qformer_inputs()
    q.config._attn_implementation = "eager"
    with torch.no_grad():
        ref = q(**inp, output_attentions=True, output_hidden_states=True)
        petal.patch(q)
        out = q(**inp, output_attentions=True, output_hidden_states=True)
    assert len(out.attentions) == len(ref.attentions) > 0 and len(out.hidden_states) == len(ref.hidden_states)
    for a, b in zip(out.attentions, ref.attentions):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_error_inside_patch_restores_flags_and_modules():
    q = tiny_qformer()
    flags = {n: p.requires_grad for n, p in q.named_parameters()}
    with pytest.raises(ValueError, match="language_projection"):  # raised after the head copies were made
        petal.patch(q, PetalConfig(method="head", head=HeadSettings(language_projection=True)))
    assert {n: p.requires_grad for n, p in q.named_parameters()} == flags
    assert not petal.is_patched(q)
