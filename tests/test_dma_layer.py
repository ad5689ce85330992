import pytest
import torch

import petal
import petal_kernels
from petal.config import DMAConfig, PetalConfig
from petal.layers.dma import DMAAttention, DMAShared, QueryTransform

from .petal_models import qformer_inputs, tiny_qformer

torch.set_default_dtype(torch.float32)


def _randomise(module, seed=3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3 + (1 if p.dim() == 1 else 0))
    return module


def _dma_only(**kw):
    return PetalConfig(dma=DMAConfig(**kw), aim=petal.AIMConfig(enabled=False),
                       sib=petal.SIBConfig(enabled=False))


def _dense_update(attn: DMAAttention, name: str, factors, lam):
    """ΔW_j = U M_jᵀ diag(λ) D (tucker) or U diag(λ ⊙ p_j) D (cp), built densely."""
    p = attn.p[name].double()
    if factors.core is None:
        return factors.up.double() @ torch.diag(lam.double() * p) @ factors.down.double()
    m = torch.einsum("abc,c->ab", factors.core.double(), p)
    return factors.up.double() @ m.T @ torch.diag(lam.double()) @ factors.down.double()


@pytest.mark.parametrize("core", ["cp", "tucker"])
def test_self_attention_projections_match_dense_formula_per_modality(core):
    q = tiny_qformer()
    petal.patch(q, _dma_only(core=core, dynamic_lambda=False))
    _randomise(q)
    attn = q.encoder.layer[0].attention.attention
    x = torch.randn(2, 7, 32)
    ql = 3
    sh = q.petal_dma
    ys = attn._project(x, sh.text, ["query", "key", "value"], ("query", "instruction"), ql)
    for name, y in zip(["query", "key", "value"], ys):
        lin = getattr(attn.base_layer, name)
        for rows, modality in ((slice(0, ql), "query"), (slice(ql, 7), "instruction")):
            dw = _dense_update(attn, name, sh.text, sh.lam(modality))
            xr = x[:, rows].double()
            ref = attn.gamma[name].double() * (xr @ lin.weight.double().T) + lin.bias.double() + xr @ dw.T
            torch.testing.assert_close(y[:, rows].double(), ref, rtol=1e-5, atol=1e-5)


def test_cross_attention_key_value_read_the_image_side_factors():
    q = tiny_qformer()
    petal.patch(q, _dma_only(dynamic_lambda=False))
    _randomise(q)
    attn = q.encoder.layer[0].crossattention.attention
    assert attn.kind == "cross"
    enc = torch.randn(2, 5, 48)
    sh = q.petal_dma
    k, v = attn._project(enc, sh.image, ["key", "value"], ("image",), None)
    dw = _dense_update(attn, "key", sh.image, sh.lam("image"))
    lin = attn.base_layer.key
    e = enc.double()
    ref = attn.gamma["key"].double() * (e @ lin.weight.double().T) + lin.bias.double() + e @ dw.T
    torch.testing.assert_close(k.double(), ref, rtol=1e-5, atol=1e-5)


def test_dynamic_lambda_follows_the_formula():
    q = tiny_qformer()
    petal.patch(q, _dma_only(dynamic_lambda=True))
    _randomise(q)
    attn = q.encoder.layer[0].attention.attention
    sh = q.petal_dma
    x = torch.randn(2, 6, 32)
    scale = attn._row_scale(x, sh.text, ("query", "instruction"), 4)
    assert scale.shape == (2, 6, sh.rank)
    mean_q = x[:, :4].mean(1)
    ref = sh.lam("query") * (1 + torch.tanh(mean_q @ sh.text.down.T @ sh.text.dynamic.T))
    torch.testing.assert_close(scale[:, 0], ref)
    torch.testing.assert_close(scale[:, 3], ref)
    assert not torch.allclose(scale[:, 4], ref)


def test_qkv_share_one_fused_call_per_input(monkeypatch):
    calls = []
    real = petal_kernels.dma_linear_multi

    def counting(x, weights, *args, **kw):
        calls.append((tuple(x.shape), len(weights)))
        return real(x, weights, *args, **kw)

    monkeypatch.setattr(petal_kernels, "dma_linear_multi", counting)
    q = tiny_qformer()
    petal.patch(q, _dma_only())
    inp = qformer_inputs()
    with torch.no_grad():
        q(**inp)
    # layer 0: self (q,k,v) + cross (q) + cross (k,v); layer 1: self only
    assert sorted(j for _, j in calls) == [1, 2, 3, 3]
    assert ((2, 7, 48), 2) in calls


def test_dropout_only_in_training_and_folded_in_scale():
    q = tiny_qformer()
    petal.patch(q, _dma_only(dropout=0.5, dynamic_lambda=False))
    _randomise(q)
    inp = qformer_inputs()
    with torch.no_grad():
        e1, e2 = q(**inp).last_hidden_state, q(**inp).last_hidden_state
        q.train()
        torch.manual_seed(0)
        t1 = q(**inp).last_hidden_state
        torch.manual_seed(1)
        t2 = q(**inp).last_hidden_state
    assert torch.equal(e1, e2)
    assert not torch.allclose(t1, t2)


def _static_model(core="cp", equal_lambdas=False, gamma=True):
    q = tiny_qformer()
    petal.patch(q, _dma_only(core=core, dynamic_lambda=False, gamma=gamma))
    _randomise(q)
    if equal_lambdas:
        with torch.no_grad():
            q.petal_dma.lambdas[1].copy_(q.petal_dma.lambdas[0])
    return q


@pytest.mark.parametrize("core", ["cp", "tucker"])
@pytest.mark.parametrize("equal_lambdas", [True, False])
def test_merged_outputs_equal_unmerged(core, equal_lambdas):
    q = _static_model(core, equal_lambdas).double()  # float64: equality up to rounding, tightly
    inp = {k: v.double() if v.is_floating_point() else v for k, v in qformer_inputs().items()}
    with torch.no_grad():
        ref = q(**inp).last_hidden_state
        petal.merge(q)
        merged = q(**inp).last_hidden_state
    attn = q.encoder.layer[0].attention.attention
    assert attn.merged and attn._merge_full == equal_lambdas
    assert q.encoder.layer[0].crossattention.attention._merge_full  # one modality per input
    torch.testing.assert_close(merged, ref, rtol=1e-9, atol=1e-9)


def test_fully_merged_layers_skip_the_adapter(monkeypatch):
    q = _static_model(equal_lambdas=True)
    petal.merge(q)
    monkeypatch.setattr(petal_kernels, "dma_linear_multi", lambda *a, **k: pytest.fail("adapter ran"))
    with torch.no_grad():
        q(**qformer_inputs())


def test_merge_then_unmerge_restores_the_frozen_weights_in_place():
    q = _static_model()
    before = {n: (p.detach().clone(), p.data_ptr()) for n, p in q.named_parameters() if not p.requires_grad}
    petal.merge(q)
    lin = q.encoder.layer[0].attention.attention.base_layer.query
    key = "encoder.layer.0.attention.attention.base_layer.query.weight"
    assert not torch.allclose(lin.weight, before[key][0])
    petal.unmerge(q)
    for n, p in q.named_parameters():
        if n in before:
            assert p.data_ptr() == before[n][1], n
            torch.testing.assert_close(p, before[n][0], rtol=0, atol=2e-6)
    with pytest.raises(ValueError, match="not merged"):
        petal.unmerge(q)


def test_merge_refuses_zero_gamma_and_double_merge():
    q = _static_model()
    with torch.no_grad():
        q.encoder.layer[1].attention.attention.gamma["value"][0] = 0
    with pytest.raises(ValueError, match="zero entries"):
        q.encoder.layer[1].attention.attention.merge()
    q2 = _static_model()
    attn = q2.encoder.layer[0].attention.attention
    attn.merge()
    with pytest.raises(ValueError, match="already merged"):
        attn.merge()


def test_dynamic_lambda_merge_keeps_exact_outputs():
    q = tiny_qformer()
    petal.patch(q, _dma_only(dynamic_lambda=True))
    _randomise(q)
    inp = qformer_inputs()
    with torch.no_grad():
        ref = q(**inp).last_hidden_state
        petal.merge(q)
        torch.testing.assert_close(q(**inp).last_hidden_state, ref, rtol=1e-4, atol=1e-4)


def test_query_transform_adds_scaled_self_attention_output():
    q = tiny_qformer()
    petal.patch(q, _dma_only(query_transform=True, query_transform_init_std=0.0))
    layer = q.encoder.layer[0]
    assert isinstance(layer, QueryTransform)
    inp = qformer_inputs()
    with torch.no_grad():
        base = q(**inp).last_hidden_state
        layer.shift.fill_(1.0)
        shifted = q(**inp).last_hidden_state
    assert not torch.allclose(base, shifted)


def test_shared_factor_shapes():
    sh = DMAShared(32, 48, 8, "tucker", True, True)
    assert sh.text.down.shape == (8, 32) and sh.image.down.shape == (8, 48)
    assert sh.image.up.shape == (32, 8) and torch.count_nonzero(sh.image.up) == 0
    assert sh.text.core.shape == (8, 8, 8) and sh.lambdas.shape == (3, 8)
    assert DMAShared(32, None, 8, "cp", False, False).image is None


@pytest.mark.parametrize("attn_impl", ["eager", "sdpa"])
def test_dynamic_lambda_ignores_padded_instruction_tokens(attn_impl):
    q = tiny_qformer()
    q.config._attn_implementation = attn_impl
    petal.patch(q, _dma_only(dynamic_lambda=True))
    _randomise(q)
    inp = qformer_inputs()  # example 0 has its last instruction token padded
    other = dict(inp, input_ids=inp["input_ids"].clone())
    other["input_ids"][0, -1] = (inp["input_ids"][0, -1] + 7) % 99
    with torch.no_grad():
        a = q(**inp).last_hidden_state[0, :-1]
        b = q(**other).last_hidden_state[0, :-1]
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
