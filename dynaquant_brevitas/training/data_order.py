"""Reproducible data order and random state: a run resumes bit-exactly from its checkpoint.

Example:
    >>> epoch_batches(10, 2, 0, 0, Dist()) == epoch_batches(10, 2, 0, 0, Dist())
    True
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..io.images import ImageFolderCrops
from .config import ConfigError, TrainConfig
from .distributed import Dist

__all__ = ["batches_from", "epoch_batches", "rng_state", "seed_everything", "set_rng_state"]


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU and CUDA) generator states of this process.

    Only tensors and plain Python data, so checkpoints load with ``torch.load(weights_only=True)``.
    """
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    numpy_state = {
        "name": name,
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(gauss),
    }
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state(
        (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_batches(n_images: int, batch_size: int, epoch: int, seed: int, ctx: Dist) -> list[list[int]]:
    """This rank's index batches for one epoch: a seeded permutation, sharded by rank, no partial batch."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    shard = torch.randperm(n_images, generator=g)[ctx.rank :: ctx.world].tolist()
    return [shard[i : i + batch_size] for i in range(0, len(shard) - batch_size + 1, batch_size)]


def batches_from(dataset: ImageFolderCrops, cfg: TrainConfig, step: int, ctx: Dist) -> Iterator[torch.Tensor]:
    """Endless training batches starting at global ``step``; the order depends on the step only."""
    per_epoch = len(epoch_batches(len(dataset), cfg.data.batch_size, 0, cfg.train.seed, ctx))
    if per_epoch == 0:
        raise ConfigError(
            f"{len(dataset)} images over {ctx.world} process(es) give no full batch of {cfg.data.batch_size}"
        )
    epoch, skip = divmod(step, per_epoch)
    while True:
        batches = epoch_batches(len(dataset), cfg.data.batch_size, epoch, cfg.train.seed, ctx)[skip:]
        # Workers' seeds come from this generator, not the global one, so that starting a loader
        # mid-epoch (on resume) does not shift the crop randomness.
        loader_rng = torch.Generator().manual_seed(cfg.train.seed * 7919 + epoch * 31 + ctx.rank)
        yield from DataLoader(
            dataset, batch_sampler=batches, num_workers=cfg.data.workers, generator=loader_rng
        )
        epoch, skip = epoch + 1, 0
