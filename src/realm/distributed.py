"""Who am I among the processes: one small record for 1..N processes, from `torch.distributed` or torchrun's env.

One code path serves a single process and `torchrun --nproc_per_node N`: with one process, rank 0 of 1.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def current(cls) -> DistributedContext:
        """The running process group if there is one, else torchrun's environment, else a single process."""
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size(), local_rank)
        return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), local_rank)

    def barrier(self) -> None:
        if self.is_distributed and dist.is_initialized():
            dist.barrier()


def init_distributed(device: torch.device | str | None = None, timeout_minutes: float = 120.0) -> DistributedContext:
    """Join the process group torchrun describes (no-op for a single process).

    The backend follows the device: nccl for CUDA, gloo otherwise. The timeout is long because ranks may
    wait for each other at the end of hours of embedding work.
    """
    context = DistributedContext.current()
    if context.is_distributed and not dist.is_initialized():
        device = torch.device(device) if device is not None else torch.device("cpu")
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(context.local_rank)
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=timeout_minutes))
    return context


def rank_device(device: torch.device | str | None, context: DistributedContext) -> torch.device:
    """The device this rank computes on: `cuda` becomes `cuda:<local_rank>`; default CPU."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", context.local_rank)
    return device


def freeze_unused(module: torch.nn.Module, prefixes: tuple[str, ...]) -> None:
    """Freeze the parameters whose names start with one of `prefixes`: parameters a training forward never
    uses (heads a checkpoint carries, a pooler), so that DistributedDataParallel sees every trainable
    parameter receive a gradient. They are saved unchanged."""
    for name, parameter in module.named_parameters():
        if name.startswith(prefixes):
            parameter.requires_grad_(False)


def wrap_ddp(model: torch.nn.Module, context: DistributedContext, device: torch.device) -> torch.nn.Module:
    """`model` in DistributedDataParallel when there are several processes, else `model` itself."""
    if not context.is_distributed:
        return model
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False
    )
