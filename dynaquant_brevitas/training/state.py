"""What a training run is made of and what its checkpoint restores: model, optimisers, schedule, controller."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from ..io.checkpoint import (
    CheckpointError,
    build_model,
    load_any,
    make_checkpoint,
    model_from_checkpoint,
    quant_config_of,
    read_state_dict,
    save_atomic,
    unwrap,
)
from .config import ConfigError, TrainConfig
from .data_order import rng_state, set_rng_state
from .distill import Distiller
from .distributed import Dist, gather
from .loss import GammaController

__all__ = [
    "FINAL", "LAST", "TrainState", "build_float_model", "checkpoint_path", "load_matching", "make_state",
    "restore_state", "save_state", "split_parameters"
]

LAST = "last.pt"
FINAL = "final.pt"


def split_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """``(main, aux)`` trainable parameters: names ending in ``.quantiles`` are the aux ones."""
    main, aux = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (aux if name.endswith(".quantiles") else main).append(p)
    return main, aux


def build_float_model(cfg: TrainConfig) -> tuple[nn.Module, str, dict[str, Any]]:
    """The float model to train: fresh from ``model``, or initialised from ``train.init_from``."""
    if not cfg.train.init_from:
        return build_model(cfg.model.arch, cfg.model.kwargs), cfg.model.arch, dict(cfg.model.kwargs)
    if cfg.train.init_partial:
        model = build_model(cfg.model.arch, cfg.model.kwargs)
        load_matching(model, read_state_dict(cfg.train.init_from))
        return model, cfg.model.arch, dict(cfg.model.kwargs)
    ckpt = load_any(cfg.train.init_from)  # ours, or a CompressAI state dict (architecture inferred)
    if ckpt.get("dynaquant") is not None:
        raise ConfigError(
            f"train.init_from {cfg.train.init_from} is already quantized; give a float checkpoint"
        )
    return model_from_checkpoint(ckpt, cfg.train.init_from).train(), ckpt["arch"], dict(ckpt["model_kwargs"])


def load_matching(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """Copy the tensors whose name and shape match into ``model``; returns the names left as initialised.

    >>> from compressai.models import FactorizedPrior, FactorizedPriorReLU
    >>> skipped = load_matching(FactorizedPriorReLU(8, 12), FactorizedPrior(8, 12).state_dict())
    >>> any(name.startswith("g_a.0") for name in skipped)
    False
    """
    own = model.state_dict()
    matching = {k: v for k, v in state_dict.items() if k in own and own[k].shape == v.shape}
    skipped = sorted(set(own) - set(matching))
    model.load_state_dict(matching, strict=False)
    return skipped


@dataclass
class TrainState:
    """Everything that changes while training (what a resume checkpoint restores)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    aux_optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    controller: GammaController | None
    arch: str
    model_kwargs: dict[str, Any]
    step: int = 0
    distiller: Optional[Distiller] = None


def _lr_lambda(cfg: TrainConfig):
    drop_step = int(cfg.train.lr_drop_at * cfg.train.steps)
    return lambda step: cfg.train.lr_drop_factor if step >= drop_step else 1.0


def make_state(model: nn.Module, cfg: TrainConfig, arch: str, kwargs: dict[str, Any]) -> TrainState:
    main, aux = split_parameters(model)
    selectors = {id(p) for name, p in model.named_parameters() if ".selectors." in f".{name}"}
    groups = [{"params": [p for p in main if id(p) not in selectors]}]
    if cfg.quant.selector_lr is not None and selectors:
        groups.append({"params": [p for p in main if id(p) in selectors], "lr": cfg.quant.selector_lr})
    else:
        groups[0]["params"] = main
    optimizer = torch.optim.Adam(groups, lr=cfg.train.lr)
    aux_optimizer = torch.optim.Adam(aux, lr=cfg.train.aux_lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg))
    q = cfg.quant
    controller = None
    if cfg.quantized and q.target_bits is not None:
        controller = GammaController(q.target_bits, q.gamma, q.kp, q.ki, q.bits_ema)
    return TrainState(model, optimizer, aux_optimizer, scheduler, controller, arch, kwargs)


def checkpoint_path(cfg: TrainConfig) -> Path:
    """Where the resumable checkpoint of a run lives (``<train.output>/last.pt``)."""
    return Path(cfg.train.output) / LAST


def save_state(state: TrainState, cfg: TrainConfig, ctx: Dist, path: Path) -> None:
    """Collective: gathers every rank's RNG state, then rank 0 writes the checkpoint atomically."""
    rngs = gather(rng_state(), ctx)
    if not ctx.main:
        return
    extra = {
        "optimizers": {"main": state.optimizer.state_dict(), "aux": state.aux_optimizer.state_dict()},
        "scheduler": state.scheduler.state_dict(),
        "controller": state.controller.state_dict() if state.controller else None,
        "rng": rngs,
        "world_size": ctx.world,
    }
    profile = getattr(unwrap(state.model), "dynaquant_profile", None)
    if profile is not None:
        extra["profile"] = dict(profile)  # a static mixed-precision model: rebuilt frozen
    ckpt = make_checkpoint(
        state.model,
        state.arch,
        state.model_kwargs,
        dynaquant=(quant_config_of(state.model) or cfg.quant.config) if cfg.quant.config is not None else None,
        train_config=cfg.to_dict(),
        step=state.step,
        **extra,
    )
    save_atomic(ckpt, path)


def restore_state(state: TrainState, ckpt: Mapping[str, Any], ctx: Dist) -> None:
    """Load optimisers, scheduler, controller, step and this rank's RNG state.

    The model must hold the checkpoint's weights before :func:`make_state` builds the optimisers:
    loading a state dict makes Brevitas rebuild its quantizers, and an optimiser built before would
    keep updating the replaced range parameters. Refused when that happened.
    """
    if ckpt.get("world_size", 1) != ctx.world:
        raise CheckpointError(
            f"checkpoint was written by {ckpt.get('world_size')} process(es), this run has {ctx.world}"
        )
    current = {id(p) for p in state.model.parameters()}
    if any(id(p) not in current for group in state.optimizer.param_groups for p in group["params"]):
        raise CheckpointError("the optimiser updates parameters the model no longer has: load the model's "
                              "weights before make_state builds the optimisers")
    state.optimizer.load_state_dict(ckpt["optimizers"]["main"])
    state.aux_optimizer.load_state_dict(ckpt["optimizers"]["aux"])
    state.scheduler.load_state_dict(ckpt["scheduler"])
    if state.controller and ckpt.get("controller"):
        state.controller.load_state_dict(ckpt["controller"])
    state.step = int(ckpt["step"])
    set_rng_state(ckpt["rng"][ctx.rank])
