"""``petal-official`` reproduces the released PETAL code: no λ, one dropout mask per projection, and the
cross-attention line that adds 0.1 × the batch mean of query row 0 to row 0 of the output."""

import pytest
import torch

import petal
import petal_kernels
from petal.config import AIMConfig, DMAConfig, PetalConfig, SIBConfig
from petal.layers.batch_context import CrossBatchContext, first_row_batch_mean

from .petal_models import qformer_inputs, tiny_qformer


def _dma_only(**kw):
    return PetalConfig(dma=DMAConfig(rank=8, **kw), aim=AIMConfig(enabled=False),
                       sib=SIBConfig(enabled=False))


def _randomise_ups(q, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for f in (q.petal_dma.text, q.petal_dma.image):
            f.up.copy_(torch.randn(f.up.shape, generator=g) * 0.3)


def test_official_preset_has_the_released_switches():
    def switches(dma):
        return dma.trainable_lambda, dma.dropout_per_projection, dma.cross_batch_context

    assert switches(PetalConfig.from_preset("petal-official").dma) == (False, True, 0.1)
    assert switches(PetalConfig().dma) == (True, False, 0.0)


def test_without_trainable_lambda_there_is_no_lambda_and_lambda_is_one():
    q = tiny_qformer()
    petal.patch(q, _dma_only(trainable_lambda=False))
    assert q.petal_dma.lambdas is None
    assert not any("lambdas" in n for n, p in q.named_parameters() if p.requires_grad)
    assert torch.equal(q.petal_dma.lam("image"), torch.ones(8))
    with_lambda = tiny_qformer()
    petal.patch(with_lambda, _dma_only())
    diff = petal.trainable_parameters(with_lambda).count - petal.trainable_parameters(q).count
    assert diff == 3 * 8  # one R-vector per modality


def _scales_seen(q, inp, monkeypatch):
    seen = []
    real = petal_kernels.dma_linear_multi

    def spy(x, weights, biases, down, ups, scales, gammas=None):
        seen.append([s.detach().clone() for s in scales])
        return real(x, weights, biases, down, ups, scales, gammas)

    monkeypatch.setattr(petal_kernels, "dma_linear_multi", spy)
    q(**inp)
    return seen


@pytest.mark.parametrize("per_projection", [True, False])
def test_dropout_masks_per_projection_or_shared(per_projection, monkeypatch):
    p = 0.5
    q, inp = tiny_qformer(), qformer_inputs()
    petal.patch(q, _dma_only(core="tucker", trainable_lambda=False, dynamic_lambda=False, dropout=p,
                             dropout_per_projection=per_projection))
    q.train()
    torch.manual_seed(0)
    calls = _scales_seen(q, inp, monkeypatch)
    self_qkv = calls[0]  # layer 0 self-attention: q, k, v read the same t = D x
    assert len(self_qkv) == 3
    for s in self_qkv:  # tucker core without λ: the scale is the mask itself, 0 or 1/(1-p)
        assert set(s.unique().tolist()) == {0.0, 1 / (1 - p)}
    same = [torch.equal(self_qkv[0], s) for s in self_qkv[1:]]
    assert same == ([False, False] if per_projection else [True, True])


def test_cross_batch_context_adds_the_batch_mean_of_query_row_zero():
    class Block(torch.nn.Module):
        def forward(self, h, **kw):
            return h * 2

    wrapped = CrossBatchContext(Block(), 0.1, lambda: None)
    h = torch.randn(3, 4, 5)
    out = wrapped(h)
    torch.testing.assert_close(out[:, 1:], h[:, 1:] * 2)
    torch.testing.assert_close(out[:, 0], h[:, 0] * 2 + 0.1 * h[:, 0].mean(0))
    # several instructions per image (rows b·n + i): the mean is taken per instruction i
    grouped = first_row_batch_mean(h.repeat(2, 1, 1)[[0, 3, 1, 4, 2, 5]], groups=2)
    torch.testing.assert_close(grouped[0::2, 0], h[:, 0].mean(0).expand(3, 5))
    torch.testing.assert_close(grouped[1::2, 0], h[:, 0].mean(0).expand(3, 5))


@pytest.mark.parametrize("factor", [0.1, 0.0])
def test_cross_batch_context_mixes_the_samples_of_a_batch_only_when_on(factor):
    q, inp = tiny_qformer(), qformer_inputs(batch=3)
    petal.patch(q, _dma_only(cross_batch_context=factor))
    _randomise_ups(q)
    assert isinstance(q.encoder.layer[0].crossattention, CrossBatchContext) == (factor > 0)
    other = dict(inp, query_embeds=inp["query_embeds"].clone())
    other["query_embeds"][2] += 1.0  # change the third sample only
    with torch.no_grad():
        a, b = q(**inp).last_hidden_state, q(**other).last_hidden_state
    assert torch.equal(a[0], b[0]) == (factor == 0)
    petal.unpatch(q)
    assert not isinstance(q.encoder.layer[0].crossattention, CrossBatchContext)


def test_official_preset_runs_a_bfloat16_qformer():
    q, inp = tiny_qformer().to(torch.bfloat16), qformer_inputs()
    inp = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in inp.items()}
    petal.patch(q, PetalConfig.from_preset("petal-official"))
    q.train()
    out = q(**inp).last_hidden_state
    assert out.dtype == torch.bfloat16  # the query transform's float32 masters are cast at use
    out.float().square().mean().backward()
    assert q.encoder.layer[0].scale.grad.dtype == torch.float32
