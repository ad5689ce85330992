import itertools

import pytest
import torch
from torch import nn

from petal.layers.gated_adapter import (
    GatedAdapter,
    HeadwiseLinear,
    MultiHeadAdapter,
    ParallelAdapterLinear,
    adapter_dtype,
)
from petal.vl_pet_config import GRANULARITIES, VARIANTS, VLPetConfig
from petal_kernels import philox, reference

D_MODEL = 32
CASES = list(itertools.product(GRANULARITIES, VARIANTS))


def make(granularity, variant, **kw):
    cfg = VLPetConfig(granularity=granularity, variant=variant, reduction_dim=24, num_heads=4, gate_dim=12,
                      **kw)
    return GatedAdapter(D_MODEL, cfg).double()


def randomize(module: nn.Module, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)
    return module


def inputs(seed=1, B=3, T=5):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, D_MODEL, generator=g, dtype=torch.float64)
    h = torch.randn(B, T, D_MODEL, generator=g, dtype=torch.float64)
    return x, h


@pytest.mark.parametrize("granularity, variant", CASES)
def test_output_is_reference_of_own_intermediates(granularity, variant):
    layer = randomize(make(granularity, variant, adapter_scale=0.7)).eval()
    x, h = inputs()
    out = layer(x, h, dropout_p=0.5)  # eval: no dropout
    args = layer.intermediates(x, h)
    ref = reference.gated_residual(**args)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    # and the intermediates are what DESIGN §1 says they are
    a = reference.gelu_new(h @ layer.adapter.down.weight.T + layer.adapter.down.bias)
    torch.testing.assert_close(args["u"], layer.adapter.up(a))
    assert args["adapter_scale"] == 0.7 and args["gate_scale"] == 0.3


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_training_dropout_mask_is_inverted_dropout(granularity):
    layer = randomize(make(granularity, "down")).train()
    x, h = inputs()
    torch.manual_seed(7)
    out = layer(x, h, dropout_p=0.25)
    torch.manual_seed(7)  # the kernel's dropout stream is seeded from torch's generator
    mask = philox.dropout_mask(int(philox.draw_seed()), 0.25, x.shape, x.dtype)
    assert set(mask.unique().tolist()) == {0.0, 1 / 0.75}
    ref = reference.gated_residual(**layer.intermediates(x, h), dropout_mask=mask)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    assert not torch.allclose(out, reference.gated_residual(**layer.intermediates(x, h)))


@pytest.mark.parametrize("granularity, variant", CASES)
def test_gradients_reach_every_parameter(granularity, variant):
    layer = randomize(make(granularity, variant)).train()
    x, h = inputs()
    x.requires_grad_(True)
    h.requires_grad_(True)
    (layer(x, h, dropout_p=0.1) * torch.randn_like(x)).sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert x.grad.abs().sum() > 0 and h.grad.abs().sum() > 0


@pytest.mark.parametrize("granularity, variant", CASES)
def test_parameter_count(granularity, variant):
    d, D, heads, dg = D_MODEL, 24, 4, 12
    layer = make(granularity, variant)
    up = D * d // heads + d if variant == "down_up_pair" else D * d + d
    gates = {"large": d * dg + dg + dg * d + d, "middleX": d + 1, "middleY": d, "small": 2 * d + 1}
    gate = gates[granularity]
    assert sum(p.numel() for p in layer.parameters()) == d * D + D + up + gate


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_init_scales_the_sublayer_output(granularity):
    """At init h' = h and G = 0.5 (large, middleX, small) or 1 (middleY): out = x + s_g * G * h."""
    layer = make(granularity, "down").eval()
    x, h = inputs()
    args = layer.intermediates(x, h)
    assert torch.count_nonzero(args["u"]) == 0
    g0 = 1.0 if granularity == "middleY" else 0.5
    torch.testing.assert_close(layer(x, h), x + 0.3 * g0 * h, rtol=1e-10, atol=1e-10)
    assert not torch.allclose(layer(x, h), x + h)


def test_middle_y_with_unit_gate_scale_starts_at_the_base_residual():
    layer = make("middleY", "down", gate_scale=1.0).eval()
    x, h = inputs()
    torch.testing.assert_close(layer(x, h), x + h, rtol=0, atol=1e-15)


def test_small_gate_is_one_scalar_per_example():
    layer = randomize(make("small", "down")).eval()
    x, h = inputs(B=2, T=4)
    args = layer.intermediates(x, h)
    g = reference.gate("small", x, h + args["u"], gate_weight=args["gate_weight"],
                       gate_bias=args["gate_bias"])
    assert g.shape == (2, 1, 1)
    # changing example 1 leaves example 0 untouched
    x2 = x.clone()
    x2[1] += 1
    assert torch.equal(layer(x2, h)[0], layer(x, h)[0])


def test_headwise_linear_is_block_diagonal():
    lin = HeadwiseLinear(12, 8, heads=4).double()
    dense = torch.block_diag(*lin.weight)  # (8, 12)
    v = torch.randn(5, 12, dtype=torch.float64)
    torch.testing.assert_close(lin(v), v @ dense.T + lin.bias)
    with pytest.raises(ValueError, match="out_features=9 is not divisible by heads=4"):
        HeadwiseLinear(12, 9, heads=4)


def test_down_up_pair_heads_are_independent_adapters():
    adapter = randomize(MultiHeadAdapter(D_MODEL, 24, 4, "down_up_pair").double())
    h = torch.randn(2, 3, D_MODEL, dtype=torch.float64)
    out = adapter(h)
    for i in range(4):
        rows, cols = slice(6 * i, 6 * i + 6), slice(8 * i, 8 * i + 8)
        a_i = reference.gelu_new(h @ adapter.down.weight[rows].T + adapter.down.bias[rows])
        torch.testing.assert_close(out[..., cols], a_i @ adapter.up.weight[i].T + adapter.up.bias[cols])


def test_up_variants_need_divisible_width():
    with pytest.raises(ValueError, match="d=30 into num_heads=4"):
        MultiHeadAdapter(30, 24, 4, "up")
    MultiHeadAdapter(30, 24, 4, "down")  # only D is split


def test_parallel_adapter_linear():
    base = nn.Linear(D_MODEL, 20, bias=False).double()
    wrapped = ParallelAdapterLinear(base, width=6).double()
    assert wrapped.base_layer is base and wrapped.weight is base.weight and wrapped.bias is None
    e = torch.randn(2, 7, D_MODEL, dtype=torch.float64)
    torch.testing.assert_close(wrapped(e), base(e), rtol=0, atol=0)  # zero-init up
    randomize(wrapped.adapter)
    ad = wrapped.adapter
    expected = base(e) + ad.up(reference.gelu_new(e @ ad.down.weight.T + ad.down.bias))
    torch.testing.assert_close(wrapped(e), expected)
    assert sum(p.numel() for p in ad.parameters()) == D_MODEL * 6 + 6 + 6 * 20 + 20
    with pytest.raises(TypeError, match="wraps an nn.Linear, got Conv1d"):
        ParallelAdapterLinear(nn.Conv1d(2, 2, 1), width=4)


def test_half_precision_base_keeps_float32_adapters():
    assert adapter_dtype(torch.bfloat16) == torch.float32
    assert adapter_dtype(torch.float64) == torch.float64
    layer = randomize(GatedAdapter(D_MODEL, VLPetConfig(granularity="middleX")))
    x, h = (t.to(torch.bfloat16) for t in inputs())
    out = layer(x, h)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
