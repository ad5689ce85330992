"""Several processes, one training: the process group (through ``accelerate``), how a global batch is
split across processes, and the collectives the training loop and the SIB loss need.

``torchrun`` and ``accelerate launch`` start N processes and set ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``;
:func:`process_state` turns that into accelerate's process state: NCCL on GPUs, gloo on CPUs. Every
function here is a no-op (or the identity) in a single process.
"""

from __future__ import annotations

import os
from typing import Iterator, Optional

import torch
from torch import Tensor
from torch.utils.data import Sampler


def launched_processes() -> int:
    """How many processes ``torchrun`` / ``accelerate launch`` started (1 without them)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def launched_with_several_processes() -> bool:
    return launched_processes() > 1


def single_process_of_accelerate_cpu() -> bool:
    """``accelerate launch --cpu --num_processes N`` (N > 1) without MPI: accelerate's simple launcher
    started this one process (it sets the rendezvous address for N, but not the world size)."""
    env = os.environ
    return (env.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes") and "MASTER_ADDR" in env
            and "WORLD_SIZE" not in env
            and not any(k in env for k in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")))


def is_main_process() -> bool:
    """Rank 0 (known from the launcher's environment before the process group exists)."""
    return world()[0] == 0 if world()[1] > 1 else int(os.environ.get("RANK", "0")) == 0


def _has_distributed_accelerator() -> bool:
    try:
        from accelerate.utils import get_distributed_backend, get_torch_accelerator_backend
    except ImportError:  # accelerate < 1.13
        return torch.cuda.is_available()
    device_type, _ = get_torch_accelerator_backend()
    return get_distributed_backend(device_type) is not None


def use_cpu_backend() -> bool:
    """Several processes on a machine whose accelerator (if any) has no distributed backend: they must
    join a CPU (gloo) group. accelerate only does so when asked (``cpu=True``); otherwise it sees no
    distributed backend and leaves every process training alone."""
    return launched_with_several_processes() and not _has_distributed_accelerator()


def process_state():
    """accelerate's ``PartialState`` (created once per process; with several processes, creating it
    joins the process group, so every process must call this at the same point)."""
    from accelerate import PartialState

    return PartialState(cpu=use_cpu_backend())


def world() -> tuple[int, int]:
    """``(rank, number of processes)`` of the current process group, ``(0, 1)`` without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def gather_with_grad(t: Tensor) -> Tensor:
    """All processes' ``t`` concatenated along dim 0 (rank order), gradients flowing back to each
    process's own part (summed over the processes that used it). The identity in one process."""
    rank, size = world()
    if size == 1:
        return t
    from torch.distributed._functional_collectives import all_gather_single  # autograd-aware

    return all_gather_single(t.contiguous(), 0, torch.distributed.group.WORLD)


def sum_across(t: Tensor) -> Tensor:
    """``t`` summed over all processes (no gradient). The identity in one process."""
    if world()[1] == 1:
        return t
    t = t.detach().clone()
    torch.distributed.all_reduce(t)
    return t


def gather_objects(obj) -> list:
    """Every process's ``obj`` (picklable), in rank order, on every process."""
    size = world()[1]
    if size == 1:
        return [obj]
    out = [None] * size
    torch.distributed.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if world()[1] > 1:
        torch.distributed.barrier()


class GlobalBatchSampler(Sampler):
    """A shuffled order that depends only on ``(seed, epoch)``, cut into global batches of
    ``batch_size × num_replicas`` records; process ``rank`` takes the ``rank``-th ``batch_size`` slice of
    each. So N processes see, step for step, the records one process sees with the global batch, and a
    resumed run replays the same batches (``set_epoch(epoch, skip=batches already done)``).

    An incomplete last global batch is dropped, except that a data set smaller than one batch is one
    batch when there is a single process.
    """

    def __init__(self, size: int, seed: int, batch_size: int, num_replicas: int = 1, rank: int = 0):
        if num_replicas > 1 and size < batch_size * num_replicas:
            raise ValueError(f"the training data has {size} records, fewer than one global batch "
                             f"({num_replicas} processes × batch size {batch_size})")
        self.size, self.seed, self.batch_size = size, seed, batch_size
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch, self.skip = 0, 0

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.num_replicas

    @property
    def num_batches(self) -> int:
        """Global batches (= optimizer micro-steps) per epoch."""
        return max(1, self.size // self.global_batch)

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def order(self) -> list:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return torch.randperm(self.size, generator=g).tolist()

    def __iter__(self) -> Iterator[int]:
        order, G, b = self.order(), self.global_batch, self.batch_size
        for k in range(self.skip, self.num_batches):
            yield from order[k * G + self.rank * b:k * G + (self.rank + 1) * b]

    def __len__(self) -> int:
        return min(self.size, self.batch_size) * (self.num_batches - self.skip)


def label_tokens(model: torch.nn.Module, labels: Optional[Tensor]) -> int:
    """How many target tokens the LM loss of this batch averages over (a causal LM predicts token t+1
    from token t, so its first label position never counts)."""
    if labels is None:
        return 0
    decoder_only = bool(getattr(getattr(model, "config", None), "use_decoder_only_language_model", False))
    return int((labels[..., 1:] if decoder_only else labels).ne(-100).sum())


__all__ = ["GlobalBatchSampler", "barrier", "gather_objects", "gather_with_grad", "is_main_process",
           "label_tokens", "launched_processes", "launched_with_several_processes", "process_state",
           "single_process_of_accelerate_cpu", "sum_across", "use_cpu_backend", "world"]
