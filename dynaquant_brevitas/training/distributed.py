"""Single process or ``torchrun``: this process's rank, collectives that do nothing alone, devices."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .config import ConfigError

__all__ = ["Dist", "gather", "init_distributed", "mean_across", "resolve_device", "wrap_ddp"]


@dataclass(frozen=True)
class Dist:
    """This process's place in a ``torchrun`` job (rank 0 of 1 when run alone)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> Dist:
    """Join the process group set up by ``torchrun`` (gloo on CPU, nccl on GPU), if any."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def gather(obj: Any, ctx: Dist) -> list[Any]:
    if ctx.world == 1:
        return [obj]
    objs: list[Any] = [None] * ctx.world
    dist.all_gather_object(objs, obj)
    return objs


def mean_across(values: dict[str, float], ctx: Dist, device: torch.device) -> dict[str, float]:
    if ctx.world == 1:
        return values
    t = torch.tensor(list(values.values()), dtype=torch.float64, device=device)  # nccl needs CUDA
    dist.all_reduce(t)
    return dict(zip(values, (t / ctx.world).tolist(), strict=True))


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` picks CUDA when available; a bare ``cuda`` becomes this process's local GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        name = f"cuda:{local_rank}"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device is {name} but no CUDA device is available")
    return device


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in DistributedDataParallel, with the entropy models' quantiles left out.

    The aux loss does not depend on the data, so the quantiles stay identical on every rank
    without synchronisation; keeping them out of DDP lets the aux backward run outside forward.
    """
    ignored = [name for name, _ in model.named_parameters() if name.endswith(".quantiles")]
    nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, ignored)
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)
