"""The fast frozen-module paths ``petal.patch`` installs on a Q-Former keep the model's math: eval
outputs and gradients equal the ``transformers`` path, and training applies dropout at the same
places with the same rates."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from transformers.models.instructblip import modeling_instructblip as hf

import petal
from petal.layers import attention_core, fast_dropout
from petal.layers.aim import AIMEmbeddings
from petal.layers.dma import DMAAttention
from petal.models import qformer_fast
from petal.models.qformer_fast import MethodOverride, disable_fast_paths

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
    out = qformer_fast.residual_norm_forward(module, h, inp)
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
    out = qformer_fast.residual_norm_forward(module, h, inp)
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
    slow = copy.deepcopy(fast)
    disable_fast_paths(slow)
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
    model = petal.patch(tiny_qformer(), petal.PetalConfig.from_preset("petal"))
    layer = model.encoder.layer[0]
    assert "forward" in layer.attention.output.__dict__ and "feed_forward_chunk" in layer.__dict__
    assert all(m.fast_attention for m in model.modules() if isinstance(m, DMAAttention))
    assert sum(isinstance(h, MethodOverride) for h in model._petal_state.handles) == 2 * 4 + 2 * 2 - 1
    clone = pickle.loads(pickle.dumps(model))  # the overrides pickle
    inputs = qformer_inputs()
    torch.testing.assert_close(clone(**inputs).last_hidden_state, model(**inputs).last_hidden_state)
    petal.unpatch(model)
    assert not any(k in m.__dict__ for m in model.modules() for k in ("forward", "feed_forward_chunk"))


def test_disable_fast_paths_needs_a_patched_model():
    with pytest.raises(ValueError, match="not patched"):
        disable_fast_paths(tiny_qformer())


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
