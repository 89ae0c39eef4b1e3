"""Checkpoints: atomic writes, model rebuilding, weight fingerprints.

A checkpoint is a plain dict saved with :func:`torch.save`::

    {"format": "dynaquant-checkpoint", "version": 1,
     "arch": "bmshj2018-hyperprior", "model_kwargs": {"N": 64, "M": 96},
     "state_dict": ..., "dynaquant": None or DynaQuantConfig.to_dict(),
     "train_config": {...}, "step": 1000,
     "optimizers": {...}, "scheduler": {...}, "rng": {...}}   # resume only

Example:
    >>> import tempfile, os
    >>> model = build_model("bmshj2018-factorized", {"N": 8, "M": 12})
    >>> path = os.path.join(tempfile.mkdtemp(), "ckpt.pt")
    >>> _ = save_atomic(make_checkpoint(model, "bmshj2018-factorized", {"N": 8, "M": 12}), path)
    >>> type(load_model(path)).__name__
    'FactorizedPrior'
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

FORMAT = "dynaquant-checkpoint"
VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or cannot be rebuilt into a model."""


def architectures() -> dict[str, type[nn.Module]]:
    """CompressAI image architectures by registry/zoo name (both spellings of names accepted).

    >>> architectures()["bmshj2018-hyperprior"].__name__
    'ScaleHyperprior'
    """
    from compressai.registry import MODELS
    from compressai.zoo.image import model_architectures

    archs = dict(MODELS)
    archs.update(model_architectures)
    # The zoo spells this one with underscores; the registry with dashes.
    archs["bmshj2018-factorized-relu"] = archs.get(
        "bmshj2018-factorized-relu", archs.get("bmshj2018_factorized_relu")
    )
    return {name: cls for name, cls in archs.items() if cls is not None}


def build_model(arch: str, model_kwargs: Mapping[str, Any] | None = None) -> nn.Module:
    """Instantiate a CompressAI architecture by name and constructor arguments.

    >>> type(build_model("bmshj2018-hyperprior", {"N": 64, "M": 96})).__name__
    'ScaleHyperprior'
    """
    archs = architectures()
    if arch not in archs:
        known = ", ".join(sorted(archs))
        raise CheckpointError(f"unknown architecture {arch!r}; known: {known}")
    try:
        return archs[arch](**dict(model_kwargs or {}))
    except TypeError as err:
        raise CheckpointError(f"cannot build {arch!r} with {dict(model_kwargs or {})}: {err}") from err


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (or the model itself)."""
    return (
        model.module
        if hasattr(model, "module") and isinstance(model, nn.parallel.DistributedDataParallel)
        else model
    )


def make_checkpoint(
    model: nn.Module,
    arch: str,
    model_kwargs: Mapping[str, Any],
    *,
    dynaquant: Mapping[str, Any] | None = None,
    train_config: Mapping[str, Any] | None = None,
    step: int = 0,
    **resume_state: Any,
) -> dict[str, Any]:
    """Bundle a model and its provenance; extra keyword arguments (optimizers, rng, ...) are stored as is."""
    state = {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}
    return {
        "format": FORMAT,
        "version": VERSION,
        "arch": arch,
        "model_kwargs": dict(model_kwargs),
        "state_dict": state,
        "dynaquant": dict(dynaquant) if dynaquant is not None else None,
        "train_config": dict(train_config or {}),
        "step": int(step),
        **resume_state,
    }


def weights_only(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """The checkpoint without optimizer, scheduler and RNG state (small, for distribution)."""
    keep = ("format", "version", "arch", "model_kwargs", "state_dict", "dynaquant", "train_config", "step")
    return {k: checkpoint[k] for k in keep if k in checkpoint}


def save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """Save with :func:`torch.save` so that ``path`` always holds a complete file.

    Writes to a temporary file in the same directory, fsyncs it, then :func:`os.replace`s it
    over ``path`` (and fsyncs the directory), so a crash leaves either the old or the new file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600 files; use what open() would
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_atomic`; raises :class:`CheckpointError` if unusable.

    Loads with ``weights_only=True``: tensors and plain data only, never arbitrary pickled code.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path} holds Python objects other than tensors and plain data; not unpickling it "
            f"(torch.load weights_only): {str(err).splitlines()[0]}"
        ) from err
    except Exception as err:  # torch raises several types for truncated/corrupt files
        raise CheckpointError(f"cannot read checkpoint {path}: {err}") from err
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a dynaquant checkpoint (missing format tag)")
    return ckpt


def model_from_checkpoint(ckpt: Mapping[str, Any]) -> nn.Module:
    """Rebuild the (possibly dynaquantized) model stored in a loaded checkpoint, in eval mode."""
    model = build_model(ckpt["arch"], ckpt["model_kwargs"])
    if ckpt.get("dynaquant") is not None:
        from .config import DynaQuantConfig
        from .transform import dynaquantize

        model = dynaquantize(model, DynaQuantConfig.from_dict(ckpt["dynaquant"]))
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as err:
        raise CheckpointError(f"state_dict does not fit {ckpt['arch']}{ckpt['model_kwargs']}: {err}") from err
    return model.eval()


def load_model(path: str | os.PathLike) -> nn.Module:
    """``model_from_checkpoint(load_checkpoint(path))``."""
    return model_from_checkpoint(load_checkpoint(path))


def state_dict_fingerprint(model: nn.Module, length: int = 16) -> bytes:
    """A SHA-256 prefix over parameter/buffer names, shapes, dtypes and values.

    Two models give the same fingerprint exactly when their state_dicts are equal, so it
    identifies both the architecture and the weights.

    >>> m = build_model("bmshj2018-factorized", {"N": 8, "M": 12})
    >>> state_dict_fingerprint(m) == state_dict_fingerprint(m)
    True
    """
    h = hashlib.sha256()
    for name, tensor in sorted(unwrap(model).state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.digest()[:length]
