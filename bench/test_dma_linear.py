"""``dma_linear`` (one adapted projection) against the frozen floor, peft LoRA, PETAL's official
unfused form, the eager reference and ``torch.compile`` of it: forward, backward and both."""

import torch


def test_dma_linear(benchmark, measure, dma_linear_param):
    info = measure(dma_linear_param)
    shape = dma_linear_param.shape
    if dma_linear_param.impl == "petal":
        # DESIGN §2.1: beyond x and the parameters, only the (M, R) bottleneck t is saved
        itemsize = torch.empty(0, dtype=getattr(torch, dma_linear_param.dtype)).element_size()
        assert info["saved_bytes"] <= shape["M"] * shape["R"] * itemsize
    if dma_linear_param.impl == "floor":
        assert info["saved_bytes"] == 0  # the frozen linear keeps only its input
