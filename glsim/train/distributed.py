"""Several processes training one run: ``torchrun --nproc_per_node N`` and DistributedDataParallel.

torchrun sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` for every process it starts;
:func:`setup` reads them, joins the process group (NCCL when the run trains on CUDA, gloo
on CPU) and pins the process to ``cuda:<LOCAL_RANK>``. Without torchrun it returns the
single-process :class:`Dist` and touches nothing, so every caller has one code path.

What the other modules do with it: the loader gives rank ``r`` the shards
``shards[r::N]`` of the epoch's (seed, epoch)-ordered list and ``train.batch_size / N``
images per step (the global batch is the recipe's); the loop wraps the model in DDP,
reads its metrics all-reduced, and only rank 0 logs, prints and writes checkpoints, with a
barrier after every write so no rank runs ahead of the checkpoint it could resume from.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as tdist


@dataclass(frozen=True)
class Dist:
    """This process's place among the processes of one run (``world_size == 1``: alone)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every rank (nothing when alone)."""
        if self.enabled:
            tdist.barrier()

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over the ranks, in place (itself when alone)."""
        if self.enabled:
            tdist.all_reduce(tensor, op=tdist.ReduceOp.SUM)
        return tensor


SINGLE = Dist()


def from_env() -> Dist:
    """The ranks torchrun announced in the environment (a single process without them)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    return Dist(
        rank=int(os.environ["RANK"]),
        world_size=world,
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )


def setup(device: torch.device) -> tuple[Dist, torch.device]:
    """Join torchrun's process group when there is one; returns it and this rank's device.

    ``device`` is the run's resolved device (``base.device``): on CUDA each rank takes
    ``cuda:<LOCAL_RANK>`` and the NCCL backend, on CPU gloo. Called twice in one process
    (a train stage then an evaluation), the group is joined once.
    """
    dist = from_env()
    if not dist.enabled:
        return dist, device
    if device.type == "cuda":
        torch.cuda.set_device(dist.local_rank)
        device = torch.device("cuda", dist.local_rank)
    if not tdist.is_initialized():
        if device.type == "cuda":  # the rank's GPU named: NCCL need not guess it from the rank
            tdist.init_process_group(backend="nccl", device_id=device)
        else:
            tdist.init_process_group(backend="gloo")
    return dist, device


def per_rank_batch(batch_size: int, dist: Dist) -> int:
    """Images per rank and step so that the global batch stays ``train.batch_size``."""
    if batch_size % dist.world_size:
        from glsim.config import ParamsError

        raise ParamsError(
            f"train.batch_size {batch_size} does not split over {dist.world_size} processes; "
            f"use a multiple of {dist.world_size} (the global batch is split evenly over the ranks)"
        )
    return batch_size // dist.world_size


def teardown() -> None:
    """Leave the process group (at the end of a torchrun process)."""
    if tdist.is_initialized():
        tdist.destroy_process_group()
