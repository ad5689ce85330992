"""Bad input: a clear ValueError/TypeError naming the argument; nothing computed, nothing modified."""

from __future__ import annotations

import pytest
import torch

import petal_kernels as pk


def dma_args(**over):
    g = torch.Generator().manual_seed(0)
    a = {"x": torch.randn(4, 6, generator=g), "weight": torch.randn(5, 6, generator=g),
         "bias": torch.randn(5, generator=g), "down": torch.randn(3, 6, generator=g),
         "up": torch.randn(5, 3, generator=g), "scale": torch.randn(3, generator=g),
         "gamma": torch.randn(5, generator=g)}
    a.update(over)
    return a


DMA_BAD = [
    ("K mismatch in weight", {"weight": torch.randn(5, 7)}, ValueError,
     r"weight must have shape \(N, 6\)"),
    ("K mismatch in down", {"down": torch.randn(3, 7)}, ValueError, r"down must have shape \(R, 6\)"),
    ("R mismatch in up", {"up": torch.randn(5, 4)}, ValueError, r"up must have shape \(5, 3\)"),
    ("N mismatch in up", {"up": torch.randn(6, 3)}, ValueError, r"up must have shape \(5, 3\)"),
    ("N mismatch in bias", {"bias": torch.randn(4)}, ValueError, r"bias must have shape \(5,\)"),
    ("N mismatch in gamma", {"gamma": torch.randn(6)}, ValueError, r"gamma must have shape \(5,\)"),
    ("R mismatch in scale", {"scale": torch.randn(4)}, ValueError, r"scale must broadcast to \(4, 3\)"),
    ("rows mismatch in scale", {"scale": torch.randn(5, 3)}, ValueError, r"scale must broadcast"),
    ("mixed dtypes", {"up": torch.randn(5, 3, dtype=torch.float64)}, TypeError,
     r"up has dtype torch.float64"),
    ("integer x", {"x": torch.ones(4, 6, dtype=torch.int64)}, TypeError, r"x must be a floating tensor"),
    ("integer weight", {"weight": torch.ones(5, 6, dtype=torch.int32)}, TypeError,
     r"weight must be a floating"),
    ("not a tensor", {"down": [[1.0] * 6] * 3}, TypeError, r"down must be a torch.Tensor, got list"),
    ("meta device", {"gamma": torch.randn(5, device="meta")}, ValueError, r"gamma is on device meta"),
]


@pytest.mark.parametrize("label,over,exc,match", DMA_BAD, ids=[c[0] for c in DMA_BAD])
def test_dma_linear_bad_input(label, over, exc, match):
    args = dma_args(**over)
    before = {k: v.clone() for k, v in args.items()
              if isinstance(v, torch.Tensor) and v.device.type != "meta"}
    with pytest.raises(exc, match=match):
        pk.dma_linear(**args)
    for k, v in before.items():
        assert torch.equal(args[k], v), f"{k} was modified by a failed call"


def test_dma_linear_multi_bad_input():
    a = dma_args()
    with pytest.raises(ValueError, match=r"ups must have 2 entries"):
        pk.dma_linear_multi(a["x"], [a["weight"]] * 2, [None] * 2, a["down"], [a["up"]], [a["scale"]] * 2)
    with pytest.raises(ValueError, match=r"ups\[1\] must have shape \(5, 3\)"):
        pk.dma_linear_multi(a["x"], [a["weight"]] * 2, [None] * 2, a["down"], [a["up"], a["up"].T],
                            [a["scale"]] * 2)
    with pytest.raises(ValueError, match=r"weights must hold at least one"):
        pk.dma_linear_multi(a["x"], [], [], a["down"], [], [])
    with pytest.raises(TypeError, match=r"weights must be a list or tuple"):
        pk.dma_linear_multi(a["x"], a["weight"], [None], a["down"], [a["up"]], [a["scale"]])


def gate_args(granularity="middleX", **over):
    x = torch.randn(2, 3, 4)
    a = {"x": x, "h": torch.randn_like(x), "u": torch.randn_like(x), "granularity": granularity}
    a.update({"large": {"gate_logits": torch.randn_like(x)},
              "middleX": {"gate_weight": torch.randn(4), "gate_bias": torch.randn(1)},
              "middleY": {"gate_vector": torch.randn(4)},
              "small": {"gate_weight": torch.randn(8), "gate_bias": torch.randn(())}}.get(granularity, {}))
    a.update(over)
    return a


GATE_BAD = [
    ("unknown granularity", gate_args(granularity="huge"), ValueError, r"granularity must be one of"),
    ("h shape", gate_args(h=torch.randn(2, 3, 5)), ValueError, r"h must have shape \(2, 3, 4\)"),
    ("missing weight", gate_args(gate_weight=None), TypeError, r"gate_weight must be a tensor, got None"),
    ("wrong gate", gate_args(gate_vector=torch.randn(4)), ValueError, r"gate_vector is only used by"),
    ("weight width", gate_args(gate_weight=torch.randn(5)), ValueError,
     r"gate_weight must have shape \(4,\)"),
    ("small width", gate_args("small", gate_weight=torch.randn(4)), ValueError,
     r"gate_weight must have shape \(8,\)"),
    ("small needs 3-d", {**gate_args("small"), "x": torch.randn(6, 4), "h": torch.randn(6, 4),
                         "u": torch.randn(6, 4)}, ValueError, r"needs x of shape \(B, T, d\)"),
    ("bias shape", gate_args(gate_bias=torch.randn(2)), ValueError, r"gate_bias must be a scalar"),
    ("logits shape", gate_args("large", gate_logits=torch.randn(2, 3)), ValueError, r"gate_logits must have"),
    ("mask shape", gate_args(dropout_mask=torch.ones(3, 4)), ValueError, r"dropout_mask must have shape"),
    ("mixed dtype", gate_args(u=torch.randn(2, 3, 4, dtype=torch.float64)), TypeError, r"u has dtype"),
    ("int x", gate_args(x=torch.ones(2, 3, 4, dtype=torch.int64)), TypeError, r"x must be a floating"),
    ("scale type", gate_args(gate_scale="0.3"), TypeError, r"gate_scale must be a real number"),
    ("bool scale", gate_args(adapter_scale=True), TypeError, r"adapter_scale must be a real number"),
]


@pytest.mark.parametrize("label,args,exc,match", GATE_BAD, ids=[c[0] for c in GATE_BAD])
def test_gated_residual_bad_input(label, args, exc, match):
    with pytest.raises(exc, match=match):
        pk.gated_residual(**args)


def test_autocast_casts_mixed_inputs():
    """Under torch.autocast the ops accept fp32 parameters with bf16 activations."""
    a = dma_args()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = pk.dma_linear(a["x"].bfloat16(), a["weight"], a["bias"], a["down"], a["up"], a["scale"])
    assert y.dtype == torch.bfloat16
