"""``dma_linear_multi`` (q, k, v of one input sharing the down-projection) against the frozen floor
(three ``F.linear``), peft LoRA, PETAL's official unfused form, the eager reference and
``torch.compile`` of it: forward, backward and both."""

import torch


def test_dma_linear_multi(benchmark, measure, dma_linear_multi_param):
    info = measure(dma_linear_multi_param)
    shape = dma_linear_multi_param.shape
    if dma_linear_multi_param.impl == "petal":
        # t = x @ down.T is computed and saved once for all J projections
        itemsize = torch.empty(0, dtype=getattr(torch, dma_linear_multi_param.dtype)).element_size()
        assert info["saved_bytes"] <= shape["M"] * shape["R"] * itemsize
    if dma_linear_multi_param.impl == "floor":
        assert info["saved_bytes"] == 0
