"""The training configuration: ``model``, ``data``, ``train`` and ``quant`` sections, checked strictly.

Every field has a type; values of another type (``steps: 2.5``, ``lr: [1, 2]``, ``steps: true``),
non-finite numbers and values out of range are refused with :class:`ConfigError` naming the key.
Paths in a configuration file are relative to that file (:func:`paths_relative_to`).

Example:
    >>> cfg = TrainConfig.from_dict({"model": {"arch": "bmshj2018-factorized", "N": 8, "M": 12},
    ...                              "train": {"steps": 2, "lr": "3e-4", "output": "runs/tiny"}})
    >>> cfg.model.kwargs, cfg.train.lr
    ({'N': 8, 'M': 12}, 0.0003)
    >>> TrainConfig.from_dict({"train": {"steps": 2.5}})
    Traceback (most recent call last):
    ...
    dynaquant_brevitas.training.config.ConfigError: train.steps must be an integer, got 2.5
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import typing
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..transform import BIT_COSTS, DynaQuantConfig

__all__ = ["ConfigError", "DataSection", "ModelSection", "QuantSection", "TrainConfig", "TrainSection", "paths_relative_to"]


class ConfigError(ValueError):
    """A training configuration is invalid."""


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
    threads: Optional[int] = None
    progress: bool = True
    init_from: Optional[str] = None
    init_partial: bool = False


@dataclass
class QuantSection:
    """Quantization-aware training: ``config`` is a ``DynaQuantConfig`` dict (``None``: float training).

    ``profile`` (a ``{layer: bits or [weight, activation]}`` mapping, or a JSON file of one, e.g.
    from ``dynaquant sensitivity --budget``) trains a static mixed-precision model: the model is
    frozen to it before training, no selector. Otherwise the loss adds ``gamma * bit_loss`` with
    the cost ``bit_cost``: ``"layers"`` (the paper's
    average over dynamic layers), ``"bitops"`` (weighted by MACs: the model's average bits in
    BitOPs) or ``"size"`` (weighted by parameters: the model's average weight bits). With
    ``target_bits`` set, ``gamma`` is steered by a proportional-integral controller (gains ``kp``,
    ``ki``) on the moving average (factor ``bits_ema``) of the chosen bits under the same cost.
    ``diversity`` rewards choices that depend on the image (the mutual information between image
    and choice, :func:`~dynaquant_brevitas.training.loss.choice_information`); ``selector_lr``
    gives the selectors their own learning rate (default: ``train.lr``). The selectors' Gumbel-softmax temperature decays
    exponentially from ``tau_start`` to ``tau_end`` over ``tau_decay_steps`` steps.
    ``distill`` weighs distillation from the float model ``train.init_from`` (0: off): the student's
    latent and reconstruction against the teacher's transforms on the same inputs
    (:class:`~dynaquant_brevitas.training.distill.Distiller`), added to the loss.
    ``init`` sets the quantizers before training: ``"calibrate"`` (percentile ranges of the
    ``calibration_batches`` first batches) or ``"ptq"`` (:func:`~dynaquant_brevitas.transform.ptq`
    on those batches: ranges by output error, rounded weights, bias correction; static models only).
    """

    config: Optional[dict[str, Any]] = None
    profile: Optional[Any] = None
    init: str = "calibrate"
    gamma: float = 0.0
    bit_cost: str = "layers"
    diversity: float = 0.0
    distill: float = 0.0
    selector_lr: Optional[float] = None
    target_bits: Optional[float] = None
    tau_start: float = 2.0
    tau_end: float = 0.5
    tau_decay_steps: int = 5000
    kp: float = 0.05
    ki: float = 0.002
    bits_ema: float = 0.9

    def temperature(self, step: int) -> float:
        """Gumbel-softmax temperature at training ``step`` (exponential decay, then constant).

        Example:
            >>> QuantSection(tau_start=2.0, tau_end=0.5, tau_decay_steps=100).temperature(50)
            1.0
        """
        progress = min(max(step, 0) / self.tau_decay_steps, 1.0)
        return self.tau_start * (self.tau_end / self.tau_start) ** progress


#: how ``quant.init`` may set the quantizers before training
INITS = ("calibrate", "ptq")

#: keys of earlier versions: section.key -> where they live now
MOVED = {
    **{f"quant.config.{key}": f"quant.{key}" for key in ("gamma", "target_bits", "tau_start", "tau_end", "tau_decay_steps")},
    "quant.calibration_batches": "quant.config.calibration_batches",
}
#: path fields resolved against the configuration file's folder
PATH_KEYS = (("data", "root"), ("train", "init_from"), ("train", "output"), ("quant", "profile"))
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")


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
        if not isinstance(raw, Mapping):
            raise ConfigError(f"a training config is a mapping of sections, not {type(raw).__name__}")
        raw = _upgrade(raw)
        sections = {f.name for f in dataclasses.fields(cls)}
        unknown = set(raw) - sections
        if unknown:
            raise ConfigError(f"unknown config section(s) {sorted(unknown)}; known: {sorted(sections)}")
        for name in sections:
            if raw.get(name) is not None and not isinstance(raw[name], Mapping):
                raise ConfigError(f"config section {name!r} must be a mapping, not {type(raw[name]).__name__}")
        model = dict(raw.get("model") or {})
        arch = model.pop("arch", ModelSection.arch)
        kwargs = {**model.pop("kwargs", {}), **model} if raw.get("model") else ModelSection().kwargs
        return cls(
            model=ModelSection(arch=_typed(arch, str, "model.arch"), kwargs=kwargs),
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
        t, d, q = self.train, self.data, self.quant
        checks = [
            (t.steps > 0, "train.steps must be positive"),
            (t.lr > 0 and t.aux_lr > 0, "train.lr and train.aux_lr must be positive"),
            (0 <= t.lr_drop_at <= 1, "train.lr_drop_at is a fraction of steps in [0, 1]"),
            (t.lr_drop_factor > 0, "train.lr_drop_factor must be positive"),
            (t.lmbda > 0, "train.lmbda must be positive"),
            (t.clip_max_norm >= 0, "train.clip_max_norm must be >= 0 (0: no clipping)"),
            (t.metric in ("mse", "ms-ssim"), f"train.metric must be 'mse' or 'ms-ssim', not {t.metric!r}"),
            (t.checkpoint_every > 0, "train.checkpoint_every must be positive"),
            (t.log_every > 0, "train.log_every must be positive"),
            (t.threads is None or t.threads > 0, "train.threads must be positive (or null: torch's default)"),
            (bool(_DEVICE.match(t.device)), f"train.device must be auto, cpu, cuda, cuda:N or mps, not {t.device!r}"),
            (t.seed >= 0, "train.seed must be >= 0"),
            (d.batch_size > 0, "data.batch_size must be positive"),
            (d.workers >= 0, "data.workers must be >= 0"),
            (
                d.patch_size >= 64 and d.patch_size % 64 == 0,
                "data.patch_size must be a multiple of 64 (6 stride-2 stages)",
            ),
            (
                t.metric != "ms-ssim" or d.patch_size > 160,
                "MS-SSIM needs data.patch_size > 160 (5 scales, 11-px window)",
            ),
            (q.gamma >= 0, "quant.gamma must be >= 0"),
            (q.diversity >= 0, "quant.diversity must be >= 0"),
            (q.distill >= 0, "quant.distill must be >= 0"),
            (q.distill == 0 or (bool(t.init_from) and not t.init_partial and q.config is not None),
             "quant.distill needs quant.config and a float teacher: train.init_from (without init_partial)"),
            (q.selector_lr is None or q.selector_lr > 0, "quant.selector_lr must be positive"),
            (q.bit_cost in BIT_COSTS, f"quant.bit_cost must be one of {', '.join(BIT_COSTS)}, not {q.bit_cost!r}"),
            (q.init in INITS, f"quant.init must be one of {', '.join(INITS)}, not {q.init!r}"),
            (q.tau_start > 0 and q.tau_end > 0, "quant.tau_start and quant.tau_end must be positive"),
            (q.tau_decay_steps > 0, "quant.tau_decay_steps must be positive"),
            (q.kp >= 0 and q.ki >= 0, "quant.kp and quant.ki must be >= 0"),
            (0 <= q.bits_ema < 1, "quant.bits_ema must be in [0, 1)"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        for key, value in self.model.kwargs.items():
            if isinstance(value, bool) or (isinstance(value, (int, float)) and not value > 0):
                raise ConfigError(f"model.{key} must be positive, got {value!r}")
        dq = self.dynaquant_config()
        if q.profile is not None and (dq is None or not isinstance(q.profile, (str, dict))):
            raise ConfigError("quant.profile is a {layer: bits} mapping or a JSON file of one, with quant.config set")
        if q.init == "ptq" and (dq is None or (dq.dynamic and q.profile is None)):
            raise ConfigError("quant.init: ptq needs a static model: quant.config with one candidate, or a quant.profile")
        if q.target_bits is not None:
            if dq is None:
                raise ConfigError("quant.target_bits needs quant.config (quantization-aware training)")
            # "bitops" and "size" are model averages (fixed and float layers included): any positive target
            widths = [(w * a) ** 0.5 for w, a in dq.pairs]
            if q.bit_cost == "layers" and not min(widths) <= q.target_bits <= max(widths):
                raise ConfigError(f"quant.target_bits {q.target_bits} is outside the candidates' range "
                                  f"[{min(widths):g}, {max(widths):g}]")
            if q.target_bits <= 0:
                raise ConfigError("quant.target_bits must be positive")
        return self

    def static_profile(self) -> Optional[dict[str, Any]]:
        """``quant.profile`` as a mapping (read from its JSON file when it is a path)."""
        profile = self.quant.profile
        if not isinstance(profile, str):
            return profile
        try:
            data = json.loads(Path(profile).read_text())
        except (OSError, ValueError) as err:
            raise ConfigError(f"quant.profile: cannot read {profile}: {err}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"quant.profile: {profile} holds no {{layer: bits}} mapping")
        return data

    def dynaquant_config(self) -> Optional[DynaQuantConfig]:
        """The ``DynaQuantConfig`` of ``quant.config`` (``None`` for float training)."""
        if self.quant.config is None:
            return None
        try:
            return DynaQuantConfig.from_dict(self.quant.config)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"quant.config: {err}") from err

    @property
    def quantized(self) -> bool:
        return self.quant.config is not None


def paths_relative_to(raw: Mapping[str, Any], folder: str | os.PathLike) -> dict[str, Any]:
    """A copy of a raw configuration whose relative paths (``data.root``, ``train.init_from``,
    ``train.output``) are taken from ``folder``: what a configuration file's paths mean.

    Example:
        >>> paths_relative_to({"train": {"output": "../runs/a"}}, "/repo/configs")["train"]["output"]
        '/repo/runs/a'
    """
    out = {k: dict(v) if isinstance(v, Mapping) else v for k, v in raw.items()}
    for section, key in PATH_KEYS:
        value = out[section].get(key) if isinstance(out.get(section), dict) else None
        if isinstance(value, str) and value and not Path(value).is_absolute():
            out[section][key] = os.path.normpath(Path(folder) / value)
    return out


def _upgrade(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Move the keys of earlier versions to where they live now, with a warning each."""
    out = {k: dict(v) if isinstance(v, Mapping) else v for k, v in raw.items()}
    quant = out.get("quant")
    if not isinstance(quant, dict):
        return out
    if isinstance(quant.get("config"), Mapping):
        quant["config"] = dict(quant["config"])
    for old, new in MOVED.items():
        old_parent, old_key = _locate(out, old)
        if old_parent is None or old_key not in old_parent:
            continue
        warnings.warn(f"training config: {old} is now {new}", FutureWarning, stacklevel=4)
        value = old_parent.pop(old_key)
        new_parent, new_key = _locate(out, new)
        if new_parent is not None:  # e.g. calibration_batches of a float run (no quant.config) is dropped
            new_parent.setdefault(new_key, value)
    return out


def _locate(root: dict[str, Any], dotted: str) -> tuple[Optional[dict[str, Any]], str]:
    """The dict that holds ``dotted``'s last key, and that key (``None`` if a parent is missing)."""
    *parents, leaf = dotted.split(".")
    node: Any = root
    for part in parents:
        if not isinstance(node.get(part), dict):
            return None, leaf
        node = node[part]
    return node, leaf


def _section(cls: type, raw: Optional[Mapping[str, Any]], name: str) -> Any:
    hints = typing.get_type_hints(cls)
    unknown = set(raw or {}) - set(hints)
    if unknown:
        raise ConfigError(f"unknown key(s) in {name}: {sorted(unknown)}; known: {sorted(hints)}")
    return cls(**{key: _typed(value, hints[key], f"{name}.{key}") for key, value in (raw or {}).items()})


def _typed(value: Any, annotation: Any, key: str) -> Any:
    """``value`` checked (and converted where lossless) against a field's type."""
    args = typing.get_args(annotation)
    if type(None) in args:  # Optional[X]
        if value is None:
            return None
        annotation = next(a for a in args if a is not type(None))
    kind = typing.get_origin(annotation) or annotation
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if kind is int:
        number = _number(value, key, "an integer")
        if not float(number).is_integer():
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return int(number)
    if kind is float:
        return float(_number(value, key, "a number"))
    if kind is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    if kind is dict and not isinstance(value, Mapping):
        raise ConfigError(f"{key} must be a mapping, got {value!r}")
    return value


def _number(value: Any, key: str, what: str) -> float | int:
    """A finite int or float from ``value`` (numbers given as strings, as YAML reads ``3e-4``)."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ConfigError(f"{key} must be {what}, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key} must be {what}, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"{key} must be a finite number, got {value!r}")
    return value
