"""The baselines of the PETAL and VL-PET tables as presets: MaPLe, LLaMA-Adapter and Head in the Q-Former,
VL-Adapter, LoRA and VL-PET's multi-head designs on a T5. Each: exact unpatch after training, a save/load
round trip, training changes the output, and the zero start where the method defines one."""

import pytest
import torch
import torch.nn.functional as F

import petal
from petal.baseline_config import HeadSettings, MapleSettings
from petal.config import PetalConfig
from petal.layers.base import AdapterWrapper
from petal.layers.llama_adapter import AdaptionPromptAttention

from .petal_models import composite_inputs, qformer_inputs, tiny_blip2, tiny_instructblip, tiny_qformer
from .test_patch_t5 import batch, tiny_t5

QFORMER_BASELINES = ["maple", "llama-adapter", "head"]
T5_BASELINES = ["vl-adapter", "lora-t5", "vl-pet-large-up", "vl-pet-large-down-up",
                "vl-pet-large-down-up-pair"]


def _model(preset, seed=0):
    """A tiny model the preset applies to, its inputs, and how to read its output."""
    if preset in T5_BASELINES:
        return tiny_t5(seed).eval(), batch(), lambda out: out.logits
    model = tiny_instructblip("t5", seed=seed)
    return model, composite_inputs(model), lambda out: out.logits


def _train(model, inputs, steps=2, lr=1e-2):
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        model(**inputs).loss.backward()
        opt.step()
    model.eval()


@pytest.mark.parametrize("preset", QFORMER_BASELINES + T5_BASELINES)
def test_training_changes_the_output_and_unpatch_is_exact(preset):
    model, inputs, read = _model(preset)
    with torch.no_grad():
        ref = read(model(**inputs))
    modules = dict(model.named_modules())
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    petal.patch(model, PetalConfig.from_preset(preset))
    with torch.no_grad():
        start = read(model(**inputs))
    _train(model, inputs)
    with torch.no_grad():
        trained = read(model(**inputs))
    assert (trained - start).abs().max() > 1e-4
    petal.unpatch(model)
    assert dict(model.named_modules()).keys() == modules.keys()
    assert all(model.get_submodule(n) is m for n, m in modules.items() if n)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert not model._forward_hooks and not model._forward_pre_hooks
    with torch.no_grad():
        assert torch.equal(read(model(**inputs)), ref)


@pytest.mark.parametrize("preset", QFORMER_BASELINES + T5_BASELINES)
def test_save_load_round_trip(preset, tmp_path):
    model, inputs, read = _model(preset)
    petal.patch(model, PetalConfig.from_preset(preset))
    _train(model, inputs, steps=1)
    petal.save_adapter(model, tmp_path / "a")
    with torch.no_grad():
        ref = read(model(**inputs))
    fresh, _, _ = _model(preset)
    torch.manual_seed(123)  # another adapter init: everything must come from the file
    petal.patch(fresh, PetalConfig.from_preset(preset))
    petal.load_adapter(fresh, tmp_path / "a")
    with torch.no_grad():
        assert torch.equal(read(fresh(**inputs)), ref)


def test_llama_adapter_starts_exactly_at_the_base_model():
    for model, inputs, read in ((tiny_qformer(), qformer_inputs(), lambda o: o.last_hidden_state),
                                _model("llama-adapter")):
        model.requires_grad_(False)  # the base run with patch's flags: same GEMM paths, bit for bit
        with torch.no_grad():
            ref = read(model(**inputs))
            petal.patch(model, PetalConfig.from_preset("llama-adapter"))
            assert torch.equal(read(model(**inputs)), ref)


def test_lora_t5_starts_exactly_at_the_base_model_and_adapts_q_v_of_every_attention():
    model, inputs, read = _model("lora-t5")
    model.requires_grad_(False)
    with torch.no_grad():
        ref = read(model(**inputs))
        petal.patch(model, PetalConfig.from_preset("lora-t5"))
        assert torch.equal(read(model(**inputs)), ref)
    adapted = {n.split(".lora_A")[0] for n, p in model.named_parameters() if "lora_A" in n}
    assert len(adapted) == 2 * (2 + 2 + 2)  # 2 layers x (encoder self, decoder self, decoder cross)
    assert all(n.endswith((".q", ".v")) for n in adapted)
    assert any("EncDecAttention" in n for n in adapted) and any(n.startswith("decoder") for n in adapted)


def test_llama_adapter_adds_gated_prompt_attention():
    q = tiny_qformer()
    petal.patch(q, PetalConfig.from_preset("llama-adapter"))
    attn = q.encoder.layer[1].attention.attention
    assert isinstance(attn, AdaptionPromptAttention) and attn.gate.shape == (4,)
    with torch.no_grad():
        attn.gate.copy_(torch.tensor([0.5, -1.0, 2.0, 0.0]))
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        out, _ = attn(x)
        base_out, _ = attn.base_layer(x)
        b = attn.base_layer
        q_ = b.query(x).view(2, 5, 4, 8).transpose(1, 2)
        k = b.key(attn.prompt).view(-1, 4, 8).transpose(0, 1)
        v = b.value(attn.prompt).view(-1, 4, 8).transpose(0, 1)
        extra = torch.stack([attn.gate[h] * torch.softmax(q_[:, h] @ k[h].T / 8 ** 0.5, -1) @ v[h]
                             for h in range(4)], dim=2).reshape(2, 5, 32)
    torch.testing.assert_close(out, base_out + extra)


def test_maple_prompts_enter_the_instruction_side_and_the_image_side():
    q, inp = tiny_qformer(), qformer_inputs()
    with torch.no_grad():
        ref = q(**inp).last_hidden_state
    cfg = PetalConfig(method="maple", maple=MapleSettings(prompt_length=3, depth=2))
    petal.patch(q, cfg)
    maple = q.petal_maple
    assert maple.prompts.shape == (2, 3, 32) and sorted(maple.couplings) == ["0"]  # layer 0 has cross
    seen = {}
    q.encoder.layer[1].register_forward_pre_hook(lambda m, a, kw: seen.update(h=kw["hidden_states"]),
                                                 with_kwargs=True)
    q.encoder.layer[0].crossattention.register_forward_pre_hook(
        lambda m, a, kw: seen.update(image=kw["encoder_hidden_states"]), with_kwargs=True)
    out = q(**inp).last_hidden_state
    assert out.shape == ref.shape  # the prompt positions are removed from the output
    torch.testing.assert_close(seen["h"][:, -3:], maple.prompts[1].expand(2, 3, 32))
    vision = maple.couplings["0"](maple.prompts[0])
    torch.testing.assert_close(seen["image"][:, -3:], vision.expand(2, 3, 48))
    out.square().mean().backward()
    assert maple.prompts.grad[0].abs().sum() > 0 and maple.prompts.grad[1].abs().sum() > 0
    assert maple.couplings["0"].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="maple.*BLIP-2"):
        petal.patch(tiny_blip2(), PetalConfig.from_preset("maple"))


def test_head_trains_copies_of_the_last_layer():
    model = tiny_instructblip("t5")
    petal.patch(model, PetalConfig.from_preset("head"))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("qformer.encoder.layer.1.") and ".trained." in n for n in trainable)
    petal.unpatch(model)
    released = PetalConfig(method="head", head=HeadSettings(parts=("intermediate", "intermediate_query"),
                                                            language_projection=True))
    petal.patch(model, released)
    names = {n.split(".trained.")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert names == {"qformer.encoder.layer.1.intermediate", "qformer.encoder.layer.1.intermediate_query",
                     "language_projection"}
    assert isinstance(model.language_projection, AdapterWrapper)


def test_method_and_model_mismatches_are_clear_errors():
    with pytest.raises(ValueError, match="'maple' adapts a Q-Former and T5ForConditionalGeneration has none"):
        petal.patch(tiny_t5(), PetalConfig.from_preset("maple"))
    with pytest.raises(ValueError, match="'vl-adapter' adapts a T5 language model and InstructBlipQFormer"):
        petal.patch(tiny_qformer(), PetalConfig.from_preset("vl-adapter"))
    with pytest.raises(ValueError, match="VL-PET needs a T5 language model.*'llama'"):
        petal.patch(tiny_instructblip("llama"), PetalConfig.from_preset("lora-t5"))
    with pytest.raises(ValueError, match="lora-t5"):
        petal.patch(tiny_t5(), PetalConfig.from_preset("lora"))
    q = tiny_qformer()
    flags = {n: p.requires_grad for n, p in q.named_parameters()}
    with pytest.raises(ValueError, match="language_projection"):  # raised after the copies were made
        petal.patch(q, PetalConfig(method="head", head=HeadSettings(language_projection=True)))
    assert {n: p.requires_grad for n, p in q.named_parameters()} == flags and not petal.is_patched(q)
    assert not any(isinstance(m, AdapterWrapper) for m in q.modules())


def test_vl_adapter_is_a_bottleneck_on_every_sublayer_output():
    model, inputs, read = _model("vl-adapter")
    petal.patch(model, PetalConfig.from_preset("vl-adapter"))
    wrapped = [n for n, m in model.named_modules() if isinstance(m, AdapterWrapper)]
    assert len(wrapped) == 2 * 2 + 2 * 3  # 2 encoder blocks x (self, ff), 2 decoder x (self, cross, ff)
    ff = model.encoder.block[0].layer[1]
    x = torch.randn(2, 6, 32)
    with torch.no_grad():
        h = ff.DenseReluDense.base_layer(ff.layer_norm(x))
        a = ff.DenseReluDense.adapter
        ref = x + h + a.up(F.gelu(a.down(h), approximate="tanh"))
        torch.testing.assert_close(ff(x), ref)


def test_petal_presets_lists_every_baseline_with_its_counts(capsys):
    from petal.cli import main

    assert main(["presets"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[3:]}
    expected = {"maple": "3,255,936 (InstructBLIP Q-Former)", "llama-adapter": "1,179,792 (InstructBLIP",
                "head": "11,811,840 (InstructBLIP Q-Former)", "random-instruction": "890,314 (InstructBLIP",
                "vl-adapter": "8,899,200 (T5-base)", "lora-t5": "14,155,776 (T5-base)",
                "vl-pet-large-up": "15,981,696 (T5-base)", "vl-pet-large-down-up": "15,981,696 (T5-base)",
                "vl-pet-large-down-up-pair": "13,327,488 (T5-base)"}
    for name, real in expected.items():
        assert real in rows[name], rows.get(name)
        assert int(rows[name].split()[2].replace(",", "")) > 0  # and a count on the embedded model
