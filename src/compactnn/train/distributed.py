"""Data-parallel training under ``torchrun`` (CPU, gloo backend).

``torchrun --nproc_per_node N script.py`` sets ``WORLD_SIZE``/``RANK``/``MASTER_ADDR``...; :func:`setup` then joins
the process group, :func:`wrap` puts the model in ``DistributedDataParallel`` (which averages gradients), and
:func:`sampler` gives each rank its shard of every epoch's seeded shuffle. Only rank 0 (:func:`is_main`) shows
progress and writes checkpoints. Everything here is a no-op in a single process.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, DistributedSampler


def requested() -> bool:
    """True when the environment asks for more than one process (``WORLD_SIZE > 1``, as torchrun sets it)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup() -> bool:
    """Join the process group (gloo) if ``WORLD_SIZE > 1`` and it is not joined yet; True if training is parallel.

    The group is left initialized when fit returns, so a script can keep using it; call
    ``torch.distributed.destroy_process_group()`` at its end.
    """
    if not dist.is_available():
        return False
    if requested() and not dist.is_initialized():
        dist.init_process_group(backend="gloo")
    return dist.is_initialized() and dist.get_world_size() > 1


def active() -> bool:
    """True when a process group of more than one rank is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 when not distributed)."""
    return dist.get_rank() if active() else 0


def is_main() -> bool:
    """True on rank 0 (and in a single process): the rank that prints and writes files."""
    return rank() == 0


def barrier() -> None:
    """Wait for all ranks (no-op when not distributed)."""
    if active():
        dist.barrier()


def wrap(model: nn.Module) -> nn.Module:
    """``model`` in ``DistributedDataParallel`` when distributed (rank 0's weights are broadcast), else itself."""
    if not active():
        return model
    return DistributedDataParallel(model)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` wrapper, or ``model`` itself."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def sampler(dataset: Dataset, seed: int, epoch: int) -> list[int]:
    """This rank's example order for ``epoch``: a permutation seeded with ``seed + epoch``.

    In a single process this is ``torch.randperm`` with that seed; under torchrun it is ``DistributedSampler``
    (the same permutation, padded to a multiple of the world size and split across ranks).
    """
    if active():
        s = DistributedSampler(dataset, shuffle=True, seed=seed)
        s.set_epoch(epoch)
        return list(s)
    g = torch.Generator().manual_seed(seed + epoch)
    return torch.randperm(len(dataset), generator=g).tolist()  # type: ignore[arg-type]


def sync_buffers(model: nn.Module) -> None:
    """Copy rank 0's buffers (BN running statistics) to every rank, so all ranks return the same module."""
    if active():
        for buf in model.buffers():
            dist.broadcast(buf.data, src=0)
