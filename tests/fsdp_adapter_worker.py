"""Run by tests/test_distributed.py under ``torchrun --nproc_per_node 2``: a patched embedded model sharded
with FSDP2 (``fully_shard``) on CPU/gloo takes a training step, then its adapter is saved and loaded."""

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

import petal
from petal.adapter_io import adapter_state_dict
from petal.data.collate import WordCollator, model_inputs
from petal.data.synthetic import SyntheticShapes
from petal.embedded import EmbeddedSpec, build_embedded_model

SPEC = EmbeddedSpec(vision_hidden=32, qformer_hidden=32, lm_hidden=32, num_query_tokens=4, vision_layers=1,
                    qformer_layers=2, lm_layers=1)
CONFIG = petal.PetalConfig(dma=petal.DMAConfig(rank=8), aim=petal.AIMConfig(num_experts=2, expert_rank=8),
                           sib=petal.SIBConfig(proj_dim=8))


def sharded_model(adapter_seed: int):
    model, tok = build_embedded_model(seed=0, spec=SPEC)
    petal.patch(model, CONFIG)
    g = torch.Generator().manual_seed(adapter_seed)
    with torch.no_grad():  # the same non-zero adapter on every process
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    expected = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    for layer in model.qformer.encoder.layer:
        fully_shard(layer)
    fully_shard(model)
    assert any(isinstance(p, DTensor) for p in model.parameters())
    return model, tok, expected


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    model, tok, expected = sharded_model(adapter_seed=1)
    collator = WordCollator(tok, SPEC.num_query_tokens, SPEC.image_size)
    batch = collator(list(SyntheticShapes("train", num_scenes=2)))
    model.train()
    loss = model(**model_inputs(batch)).loss  # the SIB hook gathers its negatives across the 2 processes
    loss.backward()
    assert torch.isfinite(loss)

    petal.save_adapter(model, out / "adapter")  # every process gathers, rank 0 writes
    dist.barrier()
    if rank == 0:
        from safetensors.torch import load_file

        saved = load_file(str(out / "adapter" / "adapter_model.safetensors"))
        assert saved.keys() == expected.keys()
        for name, value in expected.items():
            assert torch.equal(saved[name], value), name

    other, _, before = sharded_model(adapter_seed=2)
    assert not all(torch.equal(before[n], expected[n]) for n in expected)
    petal.load_adapter(other, out / "adapter")
    got = adapter_state_dict(other)  # gathered on rank 0
    if rank == 0:
        assert got.keys() == expected.keys()
        for name, value in expected.items():
            assert torch.equal(got[name], value), name
    dist.barrier()
    print(f"rank {rank} ok", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
