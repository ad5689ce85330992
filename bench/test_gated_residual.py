"""``gated_residual`` (VL-PET's gate and residual epilogue) against VL-PET's unfused PyTorch form and
``torch.compile`` of it, per granularity; and the whole VL-PET-large sublayer adapter with the fused
and the unfused epilogue. The floor is the frozen d->d sublayer projection over the same rows."""

import torch


def _itemsize(param) -> int:
    return torch.empty(0, dtype=getattr(torch, param.dtype)).element_size()


def test_gated_residual(benchmark, measure, gated_residual_param):
    info = measure(gated_residual_param)
    s = gated_residual_param.shape
    rows = s["B"] * s["T"]
    if gated_residual_param.impl == "petal":
        # DESIGN §2.2: no (*, d) tensor beyond the inputs (dropout is regenerated in the backward, not
        # saved), only the (rows,) gate scores of middleX / small
        assert info["saved_bytes"] <= rows * _itemsize(gated_residual_param)


def test_vlpet_block(benchmark, measure, vlpet_block_param):
    info = measure(vlpet_block_param)
    if vlpet_block_param.impl == "floor":
        assert info["saved_bytes"] == 0
    else:
        assert info["saved_bytes"] > 0  # the adapter's activations are saved for its own weights
