"""The fast frozen-module paths ``petal.patch`` installs on a Q-Former keep the model's math: eval
outputs and gradients equal the ``transformers`` path, and training applies dropout at the same
places with the same rates. They run where ``PetalConfig.fast_paths`` says: with ``"auto"`` on CPU
tensors only, so a CUDA model runs ``transformers``' attention function and ``nn.Dropout``."""

from __future__ import annotations

import pickle
from types import SimpleNamespace

import pytest
import torch
from transformers.models.instructblip import modeling_instructblip as hf

import petal
from petal.layers import attention_core, dma, fast_dropout, fast_paths
from petal.layers.aim import AIMEmbeddings
from petal.layers.dma import DMAAttention
from petal.models import qformer_fast
from petal.models.qformer_fast import MethodOverride

from .petal_models import qformer_inputs, tiny_qformer

# --------------------------------------------------------------------------- keep_mask


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_keep_mask_rate_dtype_and_values(p):
    like = torch.empty(200_000, dtype=torch.float64)
    m = fast_dropout.keep_mask(like, p)
    assert m.dtype == torch.float64 and m.shape == like.shape
    assert set(m.unique().tolist()) <= {0.0, 1.0}
    assert abs((m == 0).double().mean().item() - p) < 5e-3


def test_keep_mask_with_a_value_scales_the_same_draw():
    like = torch.empty(1000, dtype=torch.bfloat16)
    torch.manual_seed(4)
    ones = fast_dropout.keep_mask(like, 0.2)
    torch.manual_seed(4)
    scaled = fast_dropout.keep_mask(like, 0.2, 1 / 0.8)
    assert scaled.dtype == torch.bfloat16
    torch.testing.assert_close(scaled, ones * (1 / 0.8))
    assert set(scaled.float().unique().tolist()) == {0.0, float(torch.tensor(1 / 0.8, dtype=torch.bfloat16))}


def test_keep_mask_keeps_all_at_zero_and_follows_the_seed():
    like = torch.empty(3, 5, 7)
    assert bool((fast_dropout.keep_mask(like, 0.0) == 1).all())
    torch.manual_seed(3)
    a = fast_dropout.keep_mask(like, 0.3)
    torch.manual_seed(3)
    torch.testing.assert_close(fast_dropout.keep_mask(like, 0.3), a)
    assert fast_dropout.keep_mask(torch.empty(3, 5, 7), 0.3).shape == (3, 5, 7)  # odd numel


@pytest.mark.parametrize("p", [1.0, -0.1])
def test_keep_mask_rejects_a_bad_rate(p):
    with pytest.raises(ValueError, match="p must be in"):
        fast_dropout.keep_mask(torch.empty(4), p)


# --------------------------------------------------------------------------- attention core


class _Owner(torch.nn.Module):
    is_causal = False


def _qkv(B=2, H=3, Lq=4, Lk=6, D=5):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(B, H, L, D, generator=g, dtype=torch.float64, requires_grad=True)
            for L in (Lq, Lk, Lk)]


def _eager(q, k, v, mask, p=0.0):
    owner = _Owner().train(p > 0)
    out, _ = hf.eager_attention_forward(owner, q, k, v, mask, scaling=0.3, dropout=p)
    return out.reshape(*out.shape[:2], -1)


@pytest.mark.parametrize("mask_kind", [None, "float", "bool"])
def test_attention_equals_eager_with_gradients(mask_kind):
    q, k, v = _qkv()
    keep = torch.ones(2, 1, 4, 6, dtype=torch.bool)
    keep[0, :, :, -2:] = False
    zeros = torch.zeros(keep.shape, dtype=torch.float64)
    lowest = torch.finfo(torch.float64).min
    mask = {None: None, "bool": keep, "float": zeros.masked_fill(~keep, lowest)}[mask_kind]
    ok, additive = attention_core.additive_mask(mask, torch.float64)
    assert ok
    out = attention_core.attention(q, k, v, additive, 0.3, 0.0)
    eager_mask = None if mask is None else (mask if mask_kind == "float" else zeros.masked_fill(~keep, -1e30))
    ref = _eager(q, k, v, eager_mask)
    torch.testing.assert_close(out, ref)
    cot = torch.randn_like(out)
    grads = [torch.autograd.grad(o, (q, k, v), cot) for o in (out, ref)]
    torch.testing.assert_close(grads[0], grads[1])


def test_attention_dropout_is_on_the_probabilities(monkeypatch):
    q, k, v = _qkv()
    fixed = (torch.rand(2, 3, 4, 6, generator=torch.Generator().manual_seed(5)) > 0.25).double()
    calls = []
    monkeypatch.setattr(attention_core, "keep_mask",
                        lambda like, p, value=1.0: (calls.append((p, value)),
                                                    fixed.reshape(like.shape) * value)[1])
    out = attention_core.attention(q, k, v, None, 0.3, 0.25)
    probs = torch.softmax(q @ k.transpose(-1, -2) * 0.3, dim=-1)
    ref = ((probs * fixed / 0.75) @ v).transpose(1, 2).reshape(2, 4, -1)
    torch.testing.assert_close(out, ref)
    assert calls == [(0.25, 1 / 0.75)]


def test_additive_mask_refuses_fully_masked_rows_and_integer_masks():
    keep = torch.ones(1, 1, 2, 3, dtype=torch.bool)
    keep[0, 0, 1] = False
    assert attention_core.additive_mask(keep, torch.float32) == (False, None)
    integer = torch.ones(1, 1, 2, 3, dtype=torch.long)
    assert attention_core.additive_mask(integer, torch.float32) == (False, None)
    assert attention_core.additive_mask(None, torch.float32) == (True, None)


# --------------------------------------------------------------------------- residual + LayerNorm


def _self_output(p=0.2):
    torch.manual_seed(0)
    cfg = hf.InstructBlipQFormerConfig(hidden_size=8, hidden_dropout_prob=p)
    return hf.InstructBlipQFormerSelfOutput(cfg).double()


def test_residual_norm_equals_the_module_in_eval_with_gradients():
    module = _self_output().eval()
    h = torch.randn(2, 3, 8, dtype=torch.float64, requires_grad=True)
    inp = torch.randn(2, 3, 8, dtype=torch.float64, requires_grad=True)
    ref = module(h, inp)
    out = qformer_fast.residual_norm_forward(module, "auto", h, inp)
    torch.testing.assert_close(out, ref)
    cot = torch.randn_like(out)
    grads = [torch.autograd.grad(o, (h, inp), cot) for o in (out, ref)]
    torch.testing.assert_close(grads[0], grads[1])


def test_residual_norm_drops_the_dense_output_before_the_add(monkeypatch):
    module = _self_output(p=0.2).train()
    h, inp = torch.randn(2, 3, 8, dtype=torch.float64), torch.randn(2, 3, 8, dtype=torch.float64)
    fixed = (torch.rand(2, 3, 8, generator=torch.Generator().manual_seed(5)) > 0.2).double()
    calls = []
    monkeypatch.setattr(qformer_fast, "keep_mask", lambda like, p: (calls.append(p), fixed)[1])
    out = qformer_fast.residual_norm_forward(module, "auto", h, inp)
    ref = module.LayerNorm(module.dense(h) * fixed / 0.8 + inp)
    torch.testing.assert_close(out, ref)
    assert calls == [0.2]


# --------------------------------------------------------------------------- AIM experts


def test_aim_batched_experts_equal_the_per_expert_sum_with_gradients():
    torch.manual_seed(0)
    layer = AIMEmbeddings(torch.nn.Identity(), 8, 3, 4, "softmax", 0.6, 0.4, False).double()
    e = torch.randn(2, 5, 8, dtype=torch.float64, requires_grad=True)
    g = torch.softmax(torch.randn(2, 3, dtype=torch.float64), -1)

    def per_expert():
        ys = [(e @ layer.down[k].T + layer.down_bias[k]) @ layer.up[k].T + layer.up_bias[k] for k in range(3)]
        return sum(g[:, k, None, None] * y for k, y in enumerate(ys))

    out, ref = layer.mix_experts(e, g), per_expert()
    torch.testing.assert_close(out, ref)
    leaves = (e, layer.down, layer.down_bias, layer.up, layer.up_bias)
    cot = torch.randn_like(out)
    torch.testing.assert_close(torch.autograd.grad(out, leaves, cot), torch.autograd.grad(ref, leaves, cot))


# --------------------------------------------------------------------------- the patched Q-Former


def _patched_pair(**config):
    fast = petal.patch(tiny_qformer(**config), petal.PetalConfig.from_preset("petal"))
    slow = petal.patch(tiny_qformer(**config), petal.PetalConfig.from_preset("petal"), fast_paths=False)
    torch.manual_seed(4)
    with torch.no_grad():  # non-trivial adapters, the same in both
        for (_, a), (_, b) in zip(fast.named_parameters(), slow.named_parameters()):
            if a.requires_grad:
                a.normal_(0, 0.05)
                b.copy_(a)
    return fast, slow


@pytest.mark.parametrize("mode", ["eval", "train_p0"])
def test_patched_qformer_matches_the_transformers_path(mode):
    fast, slow = _patched_pair()
    for m in (fast, slow):
        m.train(mode != "eval")
    inputs = qformer_inputs()
    outs = []
    for m in (fast, slow):
        out = m(**inputs).last_hidden_state
        out.square().sum().backward()
        outs.append((out, {n: p.grad for n, p in m.named_parameters() if p.requires_grad}))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=1e-5, atol=1e-5)
    assert outs[0][1].keys() == outs[1][1].keys()
    for name, grad in outs[0][1].items():
        torch.testing.assert_close(grad, outs[1][1][name], rtol=1e-4, atol=1e-6, msg=name)


def test_patched_qformer_drops_out_at_the_transformers_places(monkeypatch):
    fast, slow = _patched_pair(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.2)
    fast.train()
    slow.train()
    slow.config._attn_implementation = "eager"  # SDPA drops inside its kernel, eager through F.dropout
    inputs = qformer_inputs()
    hf_rates, ours = [], []
    real_dropout = torch.nn.functional.dropout
    monkeypatch.setattr(torch.nn.functional, "dropout", lambda x, p=0.5, training=True, inplace=False: (
        hf_rates.append(p) if training and p > 0 else None, real_dropout(x, p, training, inplace))[1])
    slow(**inputs)
    expected = sorted(hf_rates)
    hf_rates.clear()
    real_mask = fast_dropout.keep_mask
    for module in (attention_core, qformer_fast):
        monkeypatch.setattr(module, "keep_mask",
                            lambda like, p, value=1.0: (ours.append(p), real_mask(like, p, value))[1])
    fast(**inputs)
    assert sorted(ours + hf_rates) == expected  # embeddings dropout stays transformers'
    assert len(expected) == 11 and ours.count(0.2) == 3


def test_fast_paths_are_on_by_default_and_unpatch_removes_them():
    model = tiny_qformer()
    before = [dict(m.__dict__) for m in model.modules()]
    petal.patch(model, petal.PetalConfig.from_preset("petal"))
    layer = model.encoder.layer[0]
    assert model._petal_state.config.fast_paths == "auto"
    assert "forward" in layer.attention.output.__dict__ and "feed_forward_chunk" in layer.__dict__
    assert all(m.fast_paths == "auto" for m in model.modules() if isinstance(m, DMAAttention))
    assert sum(isinstance(h, MethodOverride) for h in model._petal_state.handles) == 2 * 4 + 2 * 2 - 1
    clone = pickle.loads(pickle.dumps(model))  # the overrides pickle
    inputs = qformer_inputs()
    torch.testing.assert_close(clone(**inputs).last_hidden_state, model(**inputs).last_hidden_state)
    petal.unpatch(model)
    assert not any(k in m.__dict__ for m in model.modules() for k in ("forward", "feed_forward_chunk"))
    after = [dict(m.__dict__) for m in model.modules()]
    assert [d.keys() for d in after] == [d.keys() for d in before]


@pytest.mark.parametrize("how", ["config", "argument"])
def test_fast_paths_false_installs_nothing(how):
    config = petal.PetalConfig.from_preset("petal")
    if how == "config":
        config.fast_paths = False
        model = petal.patch(tiny_qformer(), config)
    else:
        model = petal.patch(tiny_qformer(), config, fast_paths=False)
        assert config.fast_paths == "auto"  # the caller's config is left as it was
    assert model._petal_state.config.fast_paths is False
    assert not any(isinstance(h, MethodOverride) for h in model._petal_state.handles)
    assert all(m.fast_paths is False for m in model.modules() if isinstance(m, DMAAttention))


@pytest.mark.parametrize("bad", ["on", 1, None, "AUTO"])
def test_fast_paths_rejects_other_values(bad):
    with pytest.raises(ValueError, match="fast_paths must be 'auto', True or False"):
        petal.PetalConfig(fast_paths=bad)
    if bad is not None:  # None means "the config's" for patch
        with pytest.raises(ValueError, match="^fast_paths must be"):
            petal.patch(tiny_qformer(), fast_paths=bad)


@pytest.mark.parametrize("value", ["auto", True, False])
def test_fast_paths_json_round_trip_and_adapter_loading_ignore_it(value, tmp_path):
    config = petal.PetalConfig(fast_paths=value)
    again = petal.PetalConfig.from_json(config.to_json())
    assert again.fast_paths is value if isinstance(value, bool) else again.fast_paths == value
    assert "fast_paths" not in petal.PetalConfig.from_dict({"method": "petal"}).differences(again)
    model = petal.patch(tiny_qformer(), petal.PetalConfig.from_preset("petal"), fast_paths=value)
    petal.save_adapter(model, tmp_path)
    other = petal.patch(tiny_qformer(), petal.PetalConfig.from_preset("petal"), fast_paths=not value)
    petal.load_adapter(other, tmp_path)  # an adapter trained with fast paths loads without them


def test_fast_paths_decide_per_device():
    cpu, cuda, meta = (SimpleNamespace(device=torch.device(d)) for d in ("cpu", "cuda:0", "meta"))
    assert fast_paths.enabled("auto", cpu) and not fast_paths.enabled("auto", cuda)
    assert not fast_paths.enabled("auto", meta)
    assert all(fast_paths.enabled(True, x) for x in (cpu, cuda, meta))
    assert not any(fast_paths.enabled(False, x) for x in (cpu, cuda, meta))


def _record_frozen_paths(monkeypatch) -> list:
    """Record, in order, each call of transformers' dropout / SDPA and of the fast paths' functions."""
    calls = []
    functional = torch.nn.functional

    def spy(name, real):
        return lambda *a, **k: (calls.append(name), real(*a, **k))[1]

    monkeypatch.setattr(functional, "dropout", spy("F.dropout", functional.dropout))
    monkeypatch.setattr(functional, "scaled_dot_product_attention",
                        spy("sdpa", functional.scaled_dot_product_attention))
    monkeypatch.setattr(dma, "attention", spy("fast attention", attention_core.attention))
    monkeypatch.setattr(qformer_fast.torch, "addcmul", spy("fast residual", torch.addcmul))
    for module in (attention_core, qformer_fast):
        monkeypatch.setattr(module, "keep_mask", spy("keep_mask", fast_dropout.keep_mask))
    return calls


def _as_if_on(monkeypatch, device: str) -> None:
    """The fast paths' one device read (``fast_paths.enabled``) sees ``device``; the tensors stay here."""
    real, stand_in = fast_paths.enabled, SimpleNamespace(device=torch.device(device))
    monkeypatch.setattr(fast_paths, "enabled", lambda mode, x: real(mode, stand_in))


@pytest.mark.parametrize("mode", ["auto", False])
def test_on_cuda_the_patched_qformer_runs_transformers_attention_and_dropout(monkeypatch, mode):
    dropouts = dict(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.2)
    base = tiny_qformer(**dropouts).train()
    model = petal.patch(tiny_qformer(**dropouts), petal.PetalConfig.from_preset("petal"), fast_paths=mode)
    model.train()
    assert model.config._attn_implementation == "sdpa"
    calls = _record_frozen_paths(monkeypatch)
    _as_if_on(monkeypatch, "cuda:0")  # patched on the CPU, then run as a CUDA model
    inputs = qformer_inputs()
    outs = []
    for m in (base, model):
        torch.manual_seed(7)
        outs.append(m(**inputs).last_hidden_state)
        outs[-1].square().sum().backward()
    expected = calls[:len(calls) // 2]
    assert calls == expected * 2  # the same transformers calls in the same order as the unpatched model
    assert expected.count("sdpa") == 3 and expected.count("F.dropout") == 8
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-5)  # same dropout masks: same seed


@pytest.mark.parametrize(("mode", "device"), [("auto", "cpu"), (True, "cuda:0")])
def test_where_the_fast_paths_run_they_replace_attention_and_dropout(monkeypatch, mode, device):
    model = petal.patch(tiny_qformer(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.2),
                        petal.PetalConfig.from_preset("petal"), fast_paths=mode)
    model.train()
    calls = _record_frozen_paths(monkeypatch)
    _as_if_on(monkeypatch, device)
    model(**qformer_inputs()).last_hidden_state.sum().backward()
    assert "sdpa" not in calls and calls.count("fast attention") == 3
    assert calls.count("fast residual") == 7 and calls.count("F.dropout") == 1  # the embeddings' own


def test_fast_paths_follow_the_input_device_after_patch(monkeypatch):
    model = petal.patch(tiny_qformer(), petal.PetalConfig.from_preset("petal"))
    calls = _record_frozen_paths(monkeypatch)
    model(**qformer_inputs())
    assert calls.count("fast attention") == 3 and "sdpa" not in calls
    calls.clear()
    _as_if_on(monkeypatch, "cuda:0")
    model(**qformer_inputs())
    assert calls.count("sdpa") == 3 and "fast attention" not in calls


def test_last_layer_instruction_feed_forward_backward_is_skipped_only_for_a_zero_gradient(monkeypatch):
    fast, slow = _patched_pair()
    handed_on = []
    real = qformer_fast._SkipZeroGrad.backward

    def spy(ctx, grad):
        out = real(ctx, grad)
        handed_on.append(out is not None)
        return out

    monkeypatch.setattr(qformer_fast._SkipZeroGrad, "backward", staticmethod(spy))
    inputs = qformer_inputs()
    for rows, expect in ((slice(0, 4), [False]), (slice(None), [True])):  # query rows only, all rows
        handed_on.clear()
        for m in (fast, slow):
            m(**inputs).last_hidden_state[:, rows].square().sum().backward()
        assert handed_on == expect
        for (name, a), (_, b) in zip(fast.named_parameters(), slow.named_parameters()):
            if a.requires_grad:
                torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6, msg=name)
                a.grad = b.grad = None


def test_last_layer_gate_stays_off_when_its_feed_forward_trains():
    model = petal.patch(tiny_qformer(), petal.PetalConfig.from_preset("petal"))
    last = model.encoder.layer[-1]
    last.output.dense.weight.requires_grad_(True)
    out = model(**qformer_inputs()).last_hidden_state[:, :4].sum()
    out.backward()
    assert last.output.dense.weight.grad is not None and not bool(last.output.dense.weight.grad.any())
