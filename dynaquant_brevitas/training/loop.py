"""The training loop: float training from scratch, or DynaQuant quantization-aware fine-tuning.

The loss is ``bpp + lambda * 255^2 * MSE`` (or ``lambda * (1 - MS-SSIM)``) ``+ gamma * bit_loss``;
the entropy bottleneck's quantiles are trained by their own optimizer on ``model.aux_loss()``.
Checkpoints are written atomically; :func:`train` resumes bit-exactly from the last one. The run
folder is locked while a run uses it. Runs on CPU or GPU, single process or under ``torchrun``.

``prepare`` decides what is trained: by default the float model itself, or with ``quant.config``
the model ``dynaquantize``d and calibrated (:func:`dynaquant_prepare`); a benchmark's baseline
passes its own (see ``benchmarks/bench_methods.py``).

Example:
    >>> import numpy as np, tempfile
    >>> from PIL import Image
    >>> root = tempfile.mkdtemp()
    >>> Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(f"{root}/gray.png")
    >>> cfg = TrainConfig.from_dict({"model": {"arch": "bmshj2018-factorized", "N": 8, "M": 12},
    ...     "data": {"root": root, "patch_size": 64, "batch_size": 1},
    ...     "train": {"steps": 2, "output": f"{root}/run", "progress": False, "device": "cpu"}})
    >>> train(cfg)["step"]
    2

    ``train(cfg, resume=True)`` continues an interrupted run from ``<train.output>/last.pt``.
"""

from __future__ import annotations

import json
import math
import os
import sys
import threading
import signal
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Optional

import torch
import torch.distributed as dist
from torch import nn

from ..io.checkpoint import build_model, load_checkpoint, save_atomic, unwrap, weights_only
from ..io.files import folder_lock, write_atomic
from ..io.images import ImageFolderCrops
from ..quant import calibrate
from ..transform import dynaquantize, freeze, ptq
from .config import ConfigError, TrainConfig
from .data_order import batches_from, seed_everything
from .distill import Distiller
from .distributed import Dist, init_distributed, mean_across, resolve_device, wrap_ddp
from .loss import rd_loss
from .state import FINAL, TrainState, build_float_model, checkpoint_path, make_state, restore_state, save_state

__all__ = ["Prepare", "TrainingDiverged", "dynaquant_prepare", "train", "train_step"]

#: ``prepare(model, cfg, batches)``: the model to train from the float one. ``batches`` yields
#: training batches for calibration on a fresh start (the data order restarts afterwards), and is
#: ``None`` when resuming (the checkpoint holds the calibrated state).
Prepare = Callable[[nn.Module, TrainConfig, Optional[Iterator[torch.Tensor]]], nn.Module]


class TrainingDiverged(ValueError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def dynaquant_prepare(model: nn.Module, cfg: TrainConfig, batches: Optional[Iterator[torch.Tensor]]) -> nn.Module:
    """The default ``prepare``: float training as is; with ``quant.config``, ``dynaquantize`` (frozen
    to ``quant.profile`` when one is given) and, on a fresh start, calibrate on
    ``calibration_batches`` training batches (``quant.init: ptq``: post-training quantization on them)."""
    config = cfg.dynaquant_config()
    if config is None:
        return model
    profile = cfg.static_profile()
    first = None if batches is None else [next(batches) for _ in range(config.calibration_batches)]
    if first and cfg.quant.init == "ptq":
        side = max(64, min(first[0].shape[-2:]) // 64 * 64)  # ptq pads smaller crops
        return ptq(model, first, config, crops=sum(len(b) for b in first), crop_size=side,
                   batch_size=len(first[0]), seed=cfg.train.seed, progress=False, profile=profile)
    qmodel = dynaquantize(model, config)
    if profile is not None:
        qmodel = freeze(qmodel, profile)  # static mixed precision: no selectors
    if first is not None:
        device = next(qmodel.parameters()).device
        calibrate(qmodel, [batch.to(device) for batch in first])
    return qmodel


def train_step(state: TrainState, x: torch.Tensor, cfg: TrainConfig) -> dict[str, float]:
    """One optimisation step of the main and aux losses; returns scalar logs."""
    model = state.model
    model.train()
    selectors = getattr(unwrap(model), "dynaquant", None)
    if selectors is not None:
        selectors.set_temperature(cfg.quant.temperature(state.step))
    gamma = state.controller.gamma if state.controller else cfg.quant.gamma
    state.optimizer.zero_grad(set_to_none=True)
    state.aux_optimizer.zero_grad(set_to_none=True)
    with state.distiller.watch(model) if state.distiller else nullcontext({}) as seen:
        out = model(x)
    terms = rd_loss(out, x, cfg.train.lmbda, cfg.train.metric, gamma, cfg.quant.bit_cost, cfg.quant.diversity)
    if state.distiller is not None:
        terms.update(state.distiller.terms(x, seen, cfg.train.lmbda, cfg.train.metric))
        terms["loss"] = terms["loss"] + cfg.quant.distill * (terms["distill_analysis"] + terms["distill_synthesis"])
    _check_finite(state, cfg, {k: v for k, v in terms.items() if k in ("loss", "bpp", "mse")})
    terms["loss"].backward()
    if cfg.train.clip_max_norm > 0:
        torch.nn.utils.clip_grad_norm_([p for g in state.optimizer.param_groups for p in g["params"]], cfg.train.clip_max_norm)
    state.optimizer.step()
    aux = unwrap(model).aux_loss()
    _check_finite(state, cfg, {"aux": aux})
    aux.backward()
    state.aux_optimizer.step()
    state.scheduler.step()
    _check_finite(state, cfg, {name: p for name, p in model.named_parameters()})
    logs = {k: float(v.detach()) for k, v in terms.items()}
    logs["aux"] = float(aux.detach())
    logs["psnr"] = -10 * math.log10(max(logs["mse"], 1e-12))
    if "bits" in terms:
        logs["avg_bits"] = logs.pop("chosen_bits")  # under quant.bit_cost: what the target is met in
        logs["avg_weight_bits"] = float(out["bits"]["weight_bits"].float().mean())
        logs["avg_activation_bits"] = float(out["bits"]["activation_bits"].float().mean())
    return logs


def _check_finite(state: TrainState, cfg: TrainConfig, tensors: Mapping[str, torch.Tensor]) -> None:
    """Raise :class:`TrainingDiverged` naming the first non-finite value (nothing is saved after it)."""
    for name, value in tensors.items():
        if not bool(torch.isfinite(value.detach()).all()):
            raise TrainingDiverged(
                f"training diverged at step {state.step + 1}: {name} is not finite; {checkpoint_path(cfg)} "
                "keeps the last good state (it is not overwritten); lower train.lr or check the data"
            )


def train(
    cfg: TrainConfig,
    resume: bool | str | os.PathLike = False,
    stop_at: int | None = None,
    time_limit_s: float | None = None,
    prepare: Prepare = dynaquant_prepare,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Run (or with ``resume``, continue) training; returns the last logged metrics and paths.

    ``resume=True`` continues from ``<train.output>/last.pt``; a path continues from that
    checkpoint instead (e.g. one committed by an earlier session), writing to ``train.output``.
    A folder that already holds a run is refused unless ``resume`` or ``overwrite`` is given,
    and a folder another process trains in is refused (it is locked).

    ``stop_at`` (a global step) or ``time_limit_s`` (seconds of this invocation) end it early
    with a checkpoint, as SIGTERM does; the schedule still follows ``train.steps``.

    ``prepare`` turns the float model into the one to train (see :data:`Prepare`).

    Writes ``<train.output>/last.pt`` every ``checkpoint_every`` steps and at the end, plus
    ``final.pt`` (weights only), ``config.yaml`` (what ran) and ``log.jsonl``.

    Raises:
        TrainingDiverged: if the loss stops being finite (the last good checkpoint is kept).
    """
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = resolve_device(cfg.train.device, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    ctx = init_distributed(device)
    try:
        if not ctx.main:
            return _train(cfg, resume, ctx, device, stop_at, time_limit_s, prepare)
        with folder_lock(cfg.train.output):
            _check_fresh(cfg, resume, overwrite)
            return _train(cfg, resume, ctx, device, stop_at, time_limit_s, prepare)
    finally:
        if ctx.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _check_fresh(cfg: TrainConfig, resume: bool | str | os.PathLike, overwrite: bool) -> None:
    out = Path(cfg.train.output)
    existing = [name for name in ("last.pt", FINAL, "log.jsonl") if (out / name).exists()]
    if existing and not resume:
        if not overwrite:
            raise ConfigError(
                f"{out} already holds a run ({', '.join(existing)}): continue it with --resume, "
                "start again with --overwrite, or choose another train.output"
            )
        (out / "log.jsonl").unlink(missing_ok=True)


def _train(
    cfg: TrainConfig,
    resume: bool | str | os.PathLike,
    ctx: Dist,
    device: torch.device,
    stop_at: int | None,
    time_limit_s: float | None,
    prepare: Prepare,
) -> dict[str, Any]:
    out_dir = Path(cfg.train.output)
    ckpt = None
    if resume:
        ckpt = load_checkpoint(checkpoint_path(cfg) if resume is True else resume)
        _check_resumable(ckpt, cfg)
    seed_everything(cfg.train.seed)  # identical model initialisation on every rank
    if ckpt is None:
        model, arch, kwargs = build_float_model(cfg)
    else:  # weights come from the checkpoint; no need for train.init_from any more
        arch, kwargs = ckpt["arch"], dict(ckpt["model_kwargs"])
        model = build_model(arch, kwargs)
    model.to(device)
    seed_everything(cfg.train.seed + 1000 * ctx.rank)
    dataset = ImageFolderCrops(cfg.data.root, cfg.data.patch_size)
    step0 = int(ckpt["step"]) if ckpt else 0
    model = prepare(model, cfg, batches_from(dataset, cfg, step0, ctx) if ckpt is None else None).to(device)
    batches = batches_from(dataset, cfg, step0, ctx)  # the order does not depend on what calibration read
    if ckpt is not None:  # before the optimisers: loading rebuilds Brevitas's quantizers, their parameters new
        unwrap(model).load_state_dict(ckpt["state_dict"])
    state = make_state(model, cfg, arch, kwargs)
    if cfg.quant.distill > 0:
        quant = cfg.dynaquant_config()
        with torch.random.fork_rng(devices=[]):  # building the teacher leaves the run's random stream as it was
            state.distiller = Distiller(build_float_model(cfg)[0].to(device), quant.analysis, quant.synthesis)
    if ckpt is not None:
        restore_state(state, ckpt, ctx)
    if ctx.world > 1:
        state.model = wrap_ddp(model, device)
    if ctx.main:
        _write_run_files(out_dir, cfg, arch, kwargs)
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


def _write_run_files(out_dir: Path, cfg: TrainConfig, arch: str, kwargs: Mapping[str, Any]) -> None:
    """``config.yaml``: the configuration as it ran (the architecture of ``init_from`` included)."""
    import yaml

    ran = cfg.to_dict()
    ran["model"] = {"arch": arch, **kwargs}
    write_atomic(out_dir / "config.yaml", yaml.safe_dump(ran, sort_keys=False))


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
        logs = mean_across({**train_step(state, x, cfg), "stop": float(stop.due())}, ctx, device)
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
        f.write(json.dumps(record, allow_nan=False) + "\n")
