"""Helpers shared by subcommands: YAML configuration with ``--set`` overrides, user errors.

Example:
    >>> apply_overrides({"train": {"lr": 1e-3}}, ["train.lr=3e-4", "model.N=32"])
    {'train': {'lr': 0.0003}, 'model': {'N': 32}}
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml


class UsageError(ValueError):
    """Bad command-line input; the CLI prints it without a traceback."""


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config FILE.yaml`` and repeatable ``--set section.key=value`` (value parsed as YAML)."""
    parser.add_argument("-c", "--config", type=Path, help="YAML configuration file")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a configuration entry, e.g. --set train.lr=3e-4 (repeatable; value is YAML)",
    )


def add_arch_argument(parser: argparse.ArgumentParser) -> None:
    """``--arch NAME`` for checkpoints that are bare CompressAI state dicts."""
    parser.add_argument(
        "--arch",
        metavar="NAME",
        help="CompressAI architecture of a checkpoint that is a bare state dict "
        "(default: inferred from its tensors; dynaquant checkpoints record it)",
    )


def positive_int(text: str) -> int:
    """argparse type: an integer > 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def finite_float(text: str) -> float:
    """argparse type: a finite number (``nan`` and ``inf`` refused)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def device_name(text: str) -> str:
    """argparse type: ``cpu``, ``cuda`` or ``cuda:N`` (``auto`` too)."""
    import re

    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda, cuda:N or auto, got {text!r}")
    return text


def read_yaml(path: Path | None) -> dict[str, Any]:
    """A YAML mapping from ``path`` (``{}`` for ``None``)."""
    if path is None:
        return {}
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as err:
        raise UsageError(f"cannot read config {path}: {err.strerror}") from err
    except yaml.YAMLError as err:
        raise UsageError(f"config {path} is not valid YAML: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"config {path} must be a mapping of sections, not {type(data).__name__}")
    return data


def apply_overrides(config: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of ``config`` with dotted ``key=value`` overrides applied (values parsed as YAML)."""
    out = copy.deepcopy(dict(config))
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set expects KEY=VALUE, got {item!r}")
        value = parse_value(raw, item)
        *parents, leaf = key.strip().split(".")
        node = out
        for part in parents:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise UsageError(f"--set {item!r}: {part!r} is not a section")
            node = child
        node[leaf] = value
    return out


def parse_value(raw: str, context: str = "") -> Any:
    """A YAML scalar or collection; numbers in exponent notation (``3e-4``) become floats.

    >>> parse_value("3e-4"), parse_value("[4, 6]"), parse_value("cuda")
    (0.0003, [4, 6], 'cuda')
    """
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise UsageError(f"--set {context or raw!r}: value is not valid YAML: {err}") from err
    if isinstance(value, str):
        try:
            return float(value)  # YAML 1.1 reads "3e-4" as a string
        except ValueError:
            pass
    return value


def load_config(args: argparse.Namespace) -> dict[str, Any]:
    """The YAML file named by ``--config`` (its paths taken from its folder) with every ``--set``
    applied (paths as given, from the current folder)."""
    from ..training.config import paths_relative_to

    raw = read_yaml(args.config)
    if args.config is not None:
        raw = paths_relative_to(raw, Path(args.config).parent)
    return apply_overrides(raw, args.overrides)


def training_lambda(checkpoint: Path, given: float | None) -> float:
    """``given``, else the lambda ``checkpoint`` was trained with; a clear error when neither exists."""
    from ..io.checkpoint import load_checkpoint

    lmbda = given or (load_checkpoint(checkpoint).get("train_config") or {}).get("train", {}).get("lmbda")
    if lmbda is None:
        raise UsageError(f"{checkpoint} records no training lambda: give --lmbda")
    return float(lmbda)


def seeded_crops(folder: Path, count: int, size: int, seed: int, max_images: int | None = None) -> list:
    """``count`` seeded ``(1, 3, size, size)`` crops of the images in ``folder`` (all of them, or
    ``max_images`` drawn with ``seed``); ``size`` must be a multiple of 64."""
    import torch

    from ..io.images import list_images, read_image
    from ..transform.ptq import calibration_crops

    if size % 64:
        raise UsageError(f"--crop-size must be a multiple of 64, got {size}")
    files = list_images(folder)
    if max_images is not None:
        order = torch.randperm(len(files), generator=torch.Generator().manual_seed(seed)).tolist()
        files = [files[i] for i in order[: min(len(files), max(1, max_images))]]
    images = [read_image(p) for p in files]
    return calibration_crops(images, count, size, torch.Generator().manual_seed(seed))
