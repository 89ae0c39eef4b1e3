"""Rate-distortion training: float from scratch, or DynaQuant quantization-aware fine-tuning.

The loss is ``bpp + lambda * 255^2 * MSE`` (or ``lambda * (1 - MS-SSIM)``) ``+ gamma * bit_loss``;
the entropy bottleneck's quantiles are trained by their own optimizer on ``model.aux_loss()``.
Checkpoints are written atomically; :func:`train` resumes bit-exactly from the last one.
Runs on CPU or GPU, single process or under ``torchrun`` (DistributedDataParallel).

Example:
    >>> cfg = TrainConfig.from_dict({"model": {"arch": "bmshj2018-factorized", "N": 8, "M": 12},
    ...                              "train": {"steps": 2, "lr": "3e-4", "output": "runs/tiny"}})
    >>> cfg.model.kwargs, cfg.train.lr
    ({'N': 8, 'M': 12}, 0.0003)

    ``train(cfg)`` then writes ``runs/tiny/last.pt`` and ``final.pt``; ``train(cfg, resume=True)``
    continues an interrupted run from ``last.pt``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from pytorch_msssim import ms_ssim
from torch import nn
from torch.utils.data import DataLoader

from .checkpoint import (
    CheckpointError,
    build_model,
    load_any,
    load_checkpoint,
    make_checkpoint,
    model_from_checkpoint,
    read_state_dict,
    save_atomic,
    unwrap,
    weights_only,
)
from .data import ImageFolderCrops

LAST = "last.pt"
FINAL = "final.pt"


class ConfigError(ValueError):
    """A training configuration is invalid."""


# --------------------------------------------------------------------------- configuration


@dataclass
class ModelSection:
    """Which CompressAI architecture to build; every key but ``arch`` goes to its constructor."""

    arch: str = "bmshj2018-hyperprior"
    kwargs: dict[str, Any] = field(default_factory=lambda: {"N": 64, "M": 96})


@dataclass
class DataSection:
    """Training images: ``batch_size`` is per process."""

    root: str = "../shared/data/train"
    patch_size: int = 256
    batch_size: int = 8
    workers: int = 0


@dataclass
class TrainSection:
    """Optimisation, schedule and bookkeeping.

    The learning rate is multiplied by ``lr_drop_factor`` from ``lr_drop_at * steps`` on.
    ``init_from`` starts from a float checkpoint's weights (fine-tuning, or QAT): the
    architecture is then the checkpoint's, unless ``init_partial`` is set, which builds
    ``model`` and copies only the tensors whose names and shapes match (an initialisation
    for a related architecture).
    """

    steps: int = 1000
    lr: float = 1e-4
    aux_lr: float = 1e-3
    lr_drop_at: float = 0.8
    lr_drop_factor: float = 0.1
    lmbda: float = 0.013
    metric: str = "mse"
    clip_max_norm: float = 1.0
    seed: int = 0
    checkpoint_every: int = 500
    log_every: int = 50
    output: str = "runs/train"
    device: str = "auto"
    threads: int | None = None
    progress: bool = True
    init_from: str | None = None
    init_partial: bool = False


@dataclass
class QuantSection:
    """DynaQuant fine-tuning; ``config`` is a ``DynaQuantConfig`` dict (``None``: float training).

    Start from a float checkpoint with ``train.init_from``. The bit-loss weight ``gamma``, the
    ``target_bits`` and the temperature schedule come from ``config``; with ``target_bits`` set,
    ``gamma`` is steered by a proportional-integral controller (gains ``kp``, ``ki``) on the
    moving average (factor ``bits_ema``) of the chosen bit width.
    """

    config: dict[str, Any] | None = None
    kp: float = 0.05
    ki: float = 0.002
    bits_ema: float = 0.9
    calibration_batches: int = 4


@dataclass
class TrainConfig:
    """The whole training configuration as read from YAML (``model``, ``data``, ``train``, ``quant``)."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    quant: QuantSection = field(default_factory=QuantSection)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> TrainConfig:
        """Build from a nested dict; unknown sections or keys raise :class:`ConfigError`."""
        sections = {f.name: f.type for f in dataclasses.fields(cls)}
        unknown = set(raw) - set(sections)
        if unknown:
            raise ConfigError(f"unknown config section(s) {sorted(unknown)}; known: {sorted(sections)}")
        model = dict(raw.get("model") or {})
        arch = model.pop("arch", ModelSection.arch)
        kwargs = {**model.pop("kwargs", {}), **model} if raw.get("model") else ModelSection().kwargs
        model_section = ModelSection(arch=arch, kwargs=kwargs)
        return cls(
            model=model_section,
            data=_section(DataSection, raw.get("data"), "data"),
            train=_section(TrainSection, raw.get("train"), "train"),
            quant=_section(QuantSection, raw.get("quant"), "quant"),
        ).validated()

    def to_dict(self) -> dict[str, Any]:
        """Nested plain dict (YAML/JSON serialisable); model kwargs are flattened next to ``arch``."""
        out = dataclasses.asdict(self)
        out["model"] = {"arch": self.model.arch, **self.model.kwargs}
        return out

    def validated(self) -> TrainConfig:
        t, d = self.train, self.data
        checks = [
            (t.steps > 0, "train.steps must be positive"),
            (t.lr > 0 and t.aux_lr > 0, "train.lr and train.aux_lr must be positive"),
            (0 <= t.lr_drop_at <= 1, "train.lr_drop_at is a fraction of steps in [0, 1]"),
            (t.metric in ("mse", "ms-ssim"), f"train.metric must be 'mse' or 'ms-ssim', not {t.metric!r}"),
            (t.checkpoint_every > 0, "train.checkpoint_every must be positive"),
            (d.batch_size > 0, "data.batch_size must be positive"),
            (
                d.patch_size >= 64 and d.patch_size % 64 == 0,
                "data.patch_size must be a multiple of 64 (6 stride-2 stages)",
            ),
            (
                t.metric != "ms-ssim" or d.patch_size > 160,
                "MS-SSIM needs data.patch_size > 160 (5 scales, 11-px window)",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        if self.quantized:
            self.dynaquant_config()  # validates the DynaQuantConfig fields
        return self

    def dynaquant_config(self) -> Any:
        """The ``DynaQuantConfig`` of ``quant.config`` (``None`` for float training)."""
        if self.quant.config is None:
            return None
        from .config import DynaQuantConfig

        try:
            return DynaQuantConfig.from_dict(self.quant.config)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"quant.config: {err}") from err

    @property
    def quantized(self) -> bool:
        return self.quant.config is not None


def _section(cls: type, raw: Mapping[str, Any] | None, name: str) -> Any:
    fields = {f.name: str(f.type) for f in dataclasses.fields(cls)}
    unknown = set(raw or {}) - set(fields)
    if unknown:
        raise ConfigError(f"unknown key(s) in {name}: {sorted(unknown)}; known: {sorted(fields)}")
    return cls(**{key: _coerce(value, fields[key], f"{name}.{key}") for key, value in (raw or {}).items()})


def _coerce(value: Any, annotation: str, key: str) -> Any:
    """Numbers given as strings (YAML reads ``3e-4`` as one) or ints where floats are expected."""
    kind = {"float": float, "int": int}.get(annotation.split(" ")[0])
    if kind is None or value is None or isinstance(value, bool):
        return value
    try:
        if kind is int and isinstance(value, float) and value.is_integer():
            return int(value)  # e.g. steps: 4.0e4
        return kind(value) if kind is float or isinstance(value, str) else value
    except ValueError:
        raise ConfigError(f"{key} must be a number, got {value!r}") from None


# --------------------------------------------------------------------------- loss


def bpp_of(out: Mapping[str, Any], num_pixels: int) -> torch.Tensor:
    """Estimated bits per pixel from CompressAI's ``out["likelihoods"]``."""
    return sum(torch.log2(lik).sum() for lik in out["likelihoods"].values()) / -num_pixels


def rd_loss(
    out: Mapping[str, Any], x: torch.Tensor, lmbda: float, metric: str = "mse", gamma: float = 0.0
) -> dict[str, torch.Tensor]:
    """Rate-distortion(-bits) loss terms; ``loss`` is the one to minimise.

    >>> x = torch.rand(1, 3, 8, 8)
    >>> out = {"x_hat": x, "likelihoods": {"y": torch.full((1, 4, 2, 2), 0.5)}}
    >>> float(rd_loss(out, x, lmbda=0.01)["bpp"])   # 16 symbols of 1 bit over 64 pixels
    0.25
    """
    n, _, h, w = x.shape
    terms = {"bpp": bpp_of(out, n * h * w), "mse": torch.mean((out["x_hat"] - x) ** 2)}
    if metric == "ms-ssim":
        terms["ms_ssim"] = ms_ssim(out["x_hat"], x, data_range=1.0)
        distortion = 1 - terms["ms_ssim"]
    else:
        distortion = 255**2 * terms["mse"]
    terms["loss"] = terms["bpp"] + lmbda * distortion
    if "bits" in out and _num_dynamic_layers(out) > 0:
        from .cost import bit_loss

        terms["bits"] = bit_loss(out)
        terms["loss"] = terms["loss"] + gamma * terms["bits"]
    return terms


def _num_dynamic_layers(out: Mapping[str, Any]) -> int:
    bits = out.get("bits") or {}
    return len(bits.get("layers", ())) if isinstance(bits, Mapping) else 0


class GammaController:
    """Proportional-integral control of ``gamma`` so the average bit width settles at ``target``.

    ``gamma = max(0, gamma0 + kp * e + ki * sum(e))`` with ``e`` the moving average of chosen bits
    minus the target: too many bits raise the bit penalty.

    >>> c = GammaController(target=6.0, gamma0=0.0, kp=0.1, ki=0.01)
    >>> c.update(8.0) > 0
    True
    """

    def __init__(self, target: float, gamma0: float, kp: float, ki: float, ema: float = 0.9) -> None:
        self.target, self.gamma0, self.kp, self.ki, self.ema = target, gamma0, kp, ki, ema
        self.integral = 0.0
        self.avg_bits: float | None = None
        self.gamma = gamma0

    def update(self, bits: float) -> float:
        """Feed the latest batch's average chosen bits; returns the new ``gamma``."""
        self.avg_bits = bits if self.avg_bits is None else self.ema * self.avg_bits + (1 - self.ema) * bits
        error = self.avg_bits - self.target
        integral = self.integral + error
        # Anti-windup: stop integrating downwards while gamma is pinned at 0.
        if self.gamma0 + self.kp * error + self.ki * integral >= 0 or error > 0:
            self.integral = integral
        self.gamma = max(0.0, self.gamma0 + self.kp * error + self.ki * self.integral)
        return self.gamma

    def state_dict(self) -> dict[str, Any]:
        return {"integral": self.integral, "avg_bits": self.avg_bits, "gamma": self.gamma}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.integral, self.avg_bits, self.gamma = state["integral"], state["avg_bits"], state["gamma"]


# --------------------------------------------------------------------------- distributed


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


def _gather(obj: Any, ctx: Dist) -> list[Any]:
    if ctx.world == 1:
        return [obj]
    objs: list[Any] = [None] * ctx.world
    dist.all_gather_object(objs, obj)
    return objs


def _mean_across(values: dict[str, float], ctx: Dist, device: torch.device) -> dict[str, float]:
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
        raise ConfigError("train.device is cuda but no CUDA device is available")
    return device


# --------------------------------------------------------------------------- RNG and data order


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
    """This rank's index batches for one epoch: a seeded permutation, sharded by rank, no partial batch.

    >>> epoch_batches(10, 2, 0, 0, Dist()) == epoch_batches(10, 2, 0, 0, Dist())
    True
    """
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


# --------------------------------------------------------------------------- model and optimisers


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


def quantize_for_training(
    model: nn.Module, cfg: TrainConfig, batches: Iterator[torch.Tensor], calibrate_: bool
) -> nn.Module:
    """Apply ``dynaquantize`` and (on a fresh start) calibrate on a few training batches."""
    from .quant.calibration import calibrate
    from .transform import dynaquantize

    qmodel = dynaquantize(model, cfg.dynaquant_config())
    if calibrate_:
        device = next(qmodel.parameters()).device
        samples = [next(batches).to(device) for _ in range(cfg.quant.calibration_batches)]
        calibrate(qmodel, samples)
    return qmodel


# --------------------------------------------------------------------------- the loop


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


def _lr_lambda(cfg: TrainConfig):
    drop_step = int(cfg.train.lr_drop_at * cfg.train.steps)
    return lambda step: cfg.train.lr_drop_factor if step >= drop_step else 1.0


def _make_state(model: nn.Module, cfg: TrainConfig, arch: str, kwargs: dict[str, Any]) -> TrainState:
    main, aux = split_parameters(model)
    optimizer = torch.optim.Adam(main, lr=cfg.train.lr)
    aux_optimizer = torch.optim.Adam(aux, lr=cfg.train.aux_lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg))
    controller = None
    dq = cfg.dynaquant_config()
    if dq is not None and dq.target_bits is not None:
        q = cfg.quant
        controller = GammaController(dq.target_bits, dq.gamma, q.kp, q.ki, q.bits_ema)
    return TrainState(model, optimizer, aux_optimizer, scheduler, controller, arch, kwargs)


def checkpoint_path(cfg: TrainConfig) -> Path:
    """Where the resumable checkpoint of a run lives (``<train.output>/last.pt``)."""
    return Path(cfg.train.output) / LAST


def save_state(state: TrainState, cfg: TrainConfig, ctx: Dist, path: Path) -> None:
    """Collective: gathers every rank's RNG state, then rank 0 writes the checkpoint atomically."""
    rngs = _gather(rng_state(), ctx)
    if not ctx.main:
        return
    extra = {
        "optimizers": {"main": state.optimizer.state_dict(), "aux": state.aux_optimizer.state_dict()},
        "scheduler": state.scheduler.state_dict(),
        "controller": state.controller.state_dict() if state.controller else None,
        "rng": rngs,
        "world_size": ctx.world,
    }
    ckpt = make_checkpoint(
        state.model,
        state.arch,
        state.model_kwargs,
        dynaquant=cfg.quant.config,
        train_config=cfg.to_dict(),
        step=state.step,
        **extra,
    )
    save_atomic(ckpt, path)


def restore_state(state: TrainState, ckpt: Mapping[str, Any], ctx: Dist) -> None:
    """Load model, optimisers, scheduler, controller, step and this rank's RNG state."""
    if ckpt.get("world_size", 1) != ctx.world:
        raise CheckpointError(
            f"checkpoint was written by {ckpt.get('world_size')} process(es), this run has {ctx.world}"
        )
    unwrap(state.model).load_state_dict(ckpt["state_dict"])
    state.optimizer.load_state_dict(ckpt["optimizers"]["main"])
    state.aux_optimizer.load_state_dict(ckpt["optimizers"]["aux"])
    state.scheduler.load_state_dict(ckpt["scheduler"])
    if state.controller and ckpt.get("controller"):
        state.controller.load_state_dict(ckpt["controller"])
    state.step = int(ckpt["step"])
    set_rng_state(ckpt["rng"][ctx.rank])


def train_step(state: TrainState, x: torch.Tensor, cfg: TrainConfig) -> dict[str, float]:
    """One optimisation step of the main and aux losses; returns scalar logs."""
    model = state.model
    model.train()
    dq = cfg.dynaquant_config()
    if dq is not None:
        unwrap(model).dynaquant.set_temperature(dq.temperature(state.step))
    gamma = state.controller.gamma if state.controller else (dq.gamma if dq is not None else 0.0)
    state.optimizer.zero_grad(set_to_none=True)
    state.aux_optimizer.zero_grad(set_to_none=True)
    out = model(x)
    terms = rd_loss(out, x, cfg.train.lmbda, cfg.train.metric, gamma)
    terms["loss"].backward()
    if cfg.train.clip_max_norm > 0:
        torch.nn.utils.clip_grad_norm_(state.optimizer.param_groups[0]["params"], cfg.train.clip_max_norm)
    state.optimizer.step()
    aux = unwrap(model).aux_loss()
    aux.backward()
    state.aux_optimizer.step()
    state.scheduler.step()
    logs = {k: float(v.detach()) for k, v in terms.items()}
    logs["aux"] = float(aux.detach())
    logs["psnr"] = -10 * math.log10(max(logs["mse"], 1e-12))
    if "bits" in out and _num_dynamic_layers(out) > 0:
        logs["avg_bits"] = float(out["bits"]["bits"].float().mean())
    return logs


def train(
    cfg: TrainConfig,
    resume: bool | str | os.PathLike = False,
    stop_at: int | None = None,
    time_limit_s: float | None = None,
) -> dict[str, Any]:
    """Run (or with ``resume``, continue) training; returns the last logged metrics and paths.

    ``resume=True`` continues from ``<train.output>/last.pt``; a path continues from that
    checkpoint instead (e.g. one committed by an earlier session), writing to ``train.output``.

    ``stop_at`` (a global step) or ``time_limit_s`` (seconds of this invocation) end it early
    with a checkpoint, as SIGTERM does; the schedule still follows ``train.steps``.

    Writes ``<train.output>/last.pt`` every ``checkpoint_every`` steps and at the end, plus
    ``final.pt`` (weights only), ``config.yaml`` and ``log.jsonl``.
    """
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = resolve_device(cfg.train.device, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    ctx = init_distributed(device)
    try:
        return _train(cfg, resume, ctx, device, stop_at, time_limit_s)
    finally:
        if ctx.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _train(
    cfg: TrainConfig,
    resume: bool | str | os.PathLike,
    ctx: Dist,
    device: torch.device,
    stop_at: int | None,
    time_limit_s: float | None,
) -> dict[str, Any]:
    out_dir = Path(cfg.train.output)
    ckpt = None
    if resume:
        ckpt = load_checkpoint(checkpoint_path(cfg) if resume is True else resume)
    if ckpt is not None:
        _check_resumable(ckpt, cfg)
    seed_everything(cfg.train.seed)  # identical model initialisation on every rank
    if ckpt is None:
        model, arch, kwargs = build_float_model(cfg)
    else:  # weights come from the checkpoint; no need for train.init_from any more
        model, arch, kwargs = (
            build_model(ckpt["arch"], ckpt["model_kwargs"]),
            ckpt["arch"],
            dict(ckpt["model_kwargs"]),
        )
    model.to(device)
    seed_everything(cfg.train.seed + 1000 * ctx.rank)
    dataset = ImageFolderCrops(cfg.data.root, cfg.data.patch_size)
    step0 = int(ckpt["step"]) if ckpt else 0
    batches = batches_from(dataset, cfg, step0, ctx)
    if cfg.quantized:
        model = quantize_for_training(model, cfg, batches, calibrate_=ckpt is None).to(device)
        if ckpt is None:  # calibration consumed batches; restart the deterministic order
            batches = batches_from(dataset, cfg, step0, ctx)
    state = _make_state(model, cfg, arch, kwargs)
    if ckpt is not None:
        restore_state(state, ckpt, ctx)
    if ctx.world > 1:
        state.model = _wrap_ddp(model, device)
    if ctx.main:
        _write_run_files(out_dir, cfg)
    return _loop(state, cfg, ctx, batches, device, stop_at or cfg.train.steps, time_limit_s)


def _check_resumable(ckpt: Mapping[str, Any], cfg: TrainConfig) -> None:
    if "optimizers" not in ckpt:
        raise ConfigError(
            "checkpoint holds weights only (no optimizer state); use train.init_from to start from it"
        )
    if ckpt.get("step", 0) >= cfg.train.steps:
        raise ConfigError(
            f"checkpoint is at step {ckpt['step']}, train.steps is {cfg.train.steps}: nothing to do"
        )
    if (ckpt.get("dynaquant") is not None) != cfg.quantized:
        kind = "quantized" if ckpt.get("dynaquant") is not None else "float"
        raise ConfigError(
            f"checkpoint is {kind} but the config {'has' if cfg.quantized else 'has no'} quant.config"
        )


def _wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    # The aux loss does not depend on the data, so the quantiles stay identical on every rank
    # without synchronisation; keeping them out of DDP lets the aux backward run outside forward.
    ignored = [name for name, _ in model.named_parameters() if name.endswith(".quantiles")]
    nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, ignored)
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def _write_run_files(out_dir: Path, cfg: TrainConfig) -> None:
    import yaml

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def _loop(
    state: TrainState,
    cfg: TrainConfig,
    ctx: Dist,
    batches: Iterator[torch.Tensor],
    device: torch.device,
    stop_at: int,
    time_limit_s: float | None,
) -> dict[str, Any]:
    from tqdm import tqdm

    out_dir = Path(cfg.train.output)
    bar = tqdm(
        total=cfg.train.steps,
        initial=state.step,
        disable=not (ctx.main and cfg.train.progress),
        dynamic_ncols=True,
        mininterval=1.0 if os.isatty(2) else 30.0,
        desc="train",
    )
    logs: dict[str, float] = {}
    start = time.time()
    end = min(stop_at, cfg.train.steps)
    stop = _StopRequest(time_limit_s)
    while state.step < end:
        x = next(batches).to(device, non_blocking=True)
        # Every rank stops at the same step: the stop flag is reduced with the logs.
        logs = _mean_across({**train_step(state, x, cfg), "stop": float(stop.due())}, ctx, device)
        stopping = logs.pop("stop") > 0
        if state.controller and "avg_bits" in logs:
            state.controller.update(logs["avg_bits"])
        state.step += 1
        bar.update(1)
        bar.set_postfix(_postfix(logs, state), refresh=False)
        if ctx.main and (state.step % cfg.train.log_every == 0 or state.step == cfg.train.steps):
            _append_log(out_dir, state, logs, time.time() - start)
        if state.step % cfg.train.checkpoint_every == 0 or state.step == end or stopping:
            save_state(state, cfg, ctx, checkpoint_path(cfg))
        if stopping:
            print(
                f"stopped early ({stop.reason or 'another rank'}): checkpoint at step {state.step}",
                file=sys.stderr,
            )
            break
    stop.restore()
    bar.close()
    if ctx.main and state.step == cfg.train.steps:
        final = weights_only(load_checkpoint(checkpoint_path(cfg)))
        save_atomic(final, out_dir / FINAL)
    summary = {"step": state.step, "main": ctx.main, "logs": logs, "checkpoint": str(checkpoint_path(cfg))}
    if state.step == cfg.train.steps:
        summary["final"] = str(out_dir / FINAL)
    return summary


class _StopRequest:
    """A request to checkpoint and stop after the current step: SIGTERM, or a time limit passed."""

    def __init__(self, time_limit_s: float | None) -> None:
        self.deadline = time.time() + time_limit_s if time_limit_s else None
        self.reason = ""
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.reason = "SIGTERM"

    def due(self) -> bool:
        if not self.reason and self.deadline is not None and time.time() > self.deadline:
            self.reason = "time limit"
        return bool(self.reason)

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _postfix(logs: Mapping[str, float], state: TrainState) -> dict[str, str]:
    post = {"loss": f"{logs['loss']:.4f}", "bpp": f"{logs['bpp']:.3f}", "psnr": f"{logs['psnr']:.2f}"}
    if "avg_bits" in logs:
        post["bits"] = f"{logs['avg_bits']:.2f}"
    if state.controller:
        post["gamma"] = f"{state.controller.gamma:.4f}"
    return post


def _append_log(out_dir: Path, state: TrainState, logs: Mapping[str, float], elapsed: float) -> None:
    record = {
        "step": state.step,
        "lr": state.optimizer.param_groups[0]["lr"],
        "elapsed_s": round(elapsed, 1),
        **logs,
    }
    if state.controller:
        record["gamma"] = state.controller.gamma
    with open(out_dir / "log.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
