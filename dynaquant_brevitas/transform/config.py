"""``DynaQuantConfig``: everything ``dynaquantize`` needs, as one serialisable dataclass.

Training settings (the bit-loss weight ``gamma``, ``target_bits``, the temperature schedule) are
not here: they belong to the training configuration (:class:`~dynaquant_brevitas.training.QuantSection`).

Weights and activations can have widths of their own: ``weight_bits=(4, 6, 8)`` with
``activation_bits=(8,)`` gives the candidates (4, 8), (6, 8), (8, 8) as (weight, activation)
pairs; ``candidate_bits`` alone is the shorthand for equal widths.

Example:
    >>> DynaQuantConfig(weight_bits=(4, 6, 8), activation_bits=(8,)).pairs
    ((4, 8), (6, 8), (8, 8))
    >>> DynaQuantConfig(candidate_bits=(6, 8)).pairs
    ((6, 6), (8, 8))
    >>> cfg = DynaQuantConfig(candidate_bits=(6, 8, 10), rounding="ste")
    >>> DynaQuantConfig.from_yaml(cfg.to_yaml()) == cfg
    True
    >>> DynaQuantConfig(candidate_bits=())
    Traceback (most recent call last):
    ...
    ValueError: candidate_bits: must hold at least one bit width
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple, Union

import yaml

from ..nn import selector as _selector  # noqa: F401  (registers the built-in selector)
from ..quant import rounding as _rounding  # noqa: F401  (registers the built-in estimators)
from ..quant.tensor_quant import IMAGE_RANGES
from ..registry import lookup

__all__ = ["DynaQuantConfig"]

_BITS_RANGE = (2, 16)


@dataclass(frozen=True)
class DynaQuantConfig:
    """How to quantize a CompressAI model with DynaQuant.

    Attributes:
        candidate_bits: bit widths the selector chooses from per image and layer, the same for a
            layer's weights and input; one value gives static quantization at that width.
        weight_bits, activation_bits: widths for weights and for inputs apart; when either is set,
            the candidates are every (weight, activation) pair of the two sets (the one not set
            takes ``candidate_bits``). See :attr:`pairs`.
        fixed_bits: bit width (or (weight, activation) pair) of the fixed-precision layers: the
            first module of the analysis and synthesis transforms (the selectors' feature taps),
            the hyper transforms and the entropy-parameter networks.
        quantize_activations: quantize every quantized layer's input as well as its weights.
        rounding: rounding estimator name (``"dgm"`` or ``"ste"``, or one added by a plugin).
        selector: bit-width selector name (``"mlp"``, the paper's pooled-statistics MLP, or one
            added by a plugin).
        beta: DGM sharpness (``> 0``).
        learn_range: learn the per-channel ranges (the quantizers' scales) (otherwise they stay at their calibration).
        activation_percentile: the percentile (of each channel's values, in (50, 100]) that
            calibration sets an activation range to; 100 is the maximum (nothing clipped).
        activation_headroom: factor (in [1, 16]) calibration widens every activation range by, after
            the percentile. It helps models used straight after calibration (busy images reach
            further than the crops calibration saw) but cost BD-rate after fine-tuning in the
            benchmark (``dynaquant-int8-headroom``; the concepts page), so the default is 1.
        activation_range: ``"static"`` (default: the calibrated, learned range), ``"per-image"``
            (each image's own reach per channel, computed from the tensor at run time, nothing
            clipped), ``"per-image-capped"`` (the smaller of the two) or ``"per-image-adaptive"``
            (capped, widened to the image's 99.9th-percentile distance where more than 0.1 % of a
            channel lies beyond the learned range). The decoder derives the
            same grid from what it decoded, so nothing is transmitted; such grids have no static
            scale, so packing and the exporters refuse them, and so does ``integer_entropy_path``.
        learn_offset: learn per-channel activation offsets (asymmetric grids). Off by default: on
            photographs they make no measurable difference at 8 bits (BD-rate +0.22 % with, +0.17 %
            without, one seed, ``benchmarks/results/summary.md``), but they fit the grids so tightly
            to the training photos that unusual content is clipped (a smooth gradient: -5.0 dB with,
            -0.1 dB without, ``benchmarks/results/content_robustness.json``). Turn them on for
            codecs whose quantized layers read ReLU outputs (unsigned grids); see the concepts page.
        activation_per_channel: one activation step (and offset) per channel, the content-aware
            default; ``False`` gives one per tensor, which FINN maps exactly (with per-channel
            steps the FPGA export has to re-quantize the next layer's weights, see
            :mod:`dynaquant_brevitas.export.integer`).
        weight_offset: learn per-channel weight offsets as well.
        integer_zero_point: round every zero point ``-offset / step`` to an integer (straight-through,
            the offset still learns), so that 0 is exactly on the grid: the latents CompressAI's
            synthesis and hyper-synthesis transforms receive are integers, mostly 0. It also makes
            the exported zero points exact (no correction shifts).
        integer_entropy_path: compute the hyper-synthesis ``h_s`` (decoded hyper-latents to the
            entropy model's scales and means) and the scale-table indexes in integer arithmetic,
            so that decoding is bit-exact across platforms; training sees the same integer
            function (:mod:`dynaquant_brevitas.nn.integer_path`). ScaleHyperprior and
            MeanScaleHyperprior-like models; needs integer (or zero) activation zero points.
        selector_hidden, selector_pool, selector_dropout: selector MLP width, pooled grid size and
            dropout.
        analysis, synthesis: attribute names of the analysis and synthesis transforms.
        float_modules: extra module-name patterns (``fnmatch``) left in floating point.
        unsupported: ``"error"`` (default) or ``"skip"`` (warn and leave in float) for modules
            with parameters that no handler quantizes.
        calibration_batches: batches an activation quantizer averages its initial range over:
            the first training batches, or those :func:`~dynaquant_brevitas.calibrate` gives it
            (training calibrates explicitly on this many batches).
    """

    candidate_bits: Tuple[int, ...] = (4, 6, 8)
    weight_bits: Optional[Tuple[int, ...]] = None
    activation_bits: Optional[Tuple[int, ...]] = None
    fixed_bits: Union[int, Tuple[int, int]] = 8
    quantize_activations: bool = True
    rounding: str = "dgm"
    beta: float = 1.0
    learn_range: bool = True
    activation_percentile: float = 99.99
    activation_headroom: float = 1.0
    activation_range: str = "static"
    learn_offset: bool = False
    activation_per_channel: bool = True
    weight_offset: bool = False
    integer_zero_point: bool = False
    integer_entropy_path: bool = False
    selector: str = "mlp"
    selector_hidden: int = 64
    selector_pool: int = 5
    selector_dropout: float = 0.2
    analysis: str = "g_a"
    synthesis: str = "g_s"
    float_modules: Tuple[str, ...] = field(default_factory=tuple)
    unsupported: str = "error"
    calibration_batches: int = 8

    def __post_init__(self) -> None:
        for name in ("candidate_bits", "weight_bits", "activation_bits"):
            if name == "candidate_bits" or getattr(self, name) is not None:
                object.__setattr__(self, name, _normalise_bits(getattr(self, name), name))
        object.__setattr__(self, "float_modules", tuple(self.float_modules))
        if isinstance(self.fixed_bits, (list, tuple)):
            if len(self.fixed_bits) != 2:
                raise ValueError(f"fixed_bits: one width or a (weight, activation) pair, got {self.fixed_bits!r}")
            for b in self.fixed_bits:
                _check_bits("fixed_bits", b)
            object.__setattr__(self, "fixed_bits", tuple(int(b) for b in self.fixed_bits))
        else:
            _check_bits("fixed_bits", self.fixed_bits)
        for field_name, kind in (("rounding", "estimator"), ("selector", "selector")):
            try:  # registered names, built in or from plugins
                lookup(kind, getattr(self, field_name))
            except ValueError as error:
                raise ValueError(f"{field_name}: {error}") from None
        _check_positive("beta", self.beta)
        if not isinstance(self.activation_percentile, (int, float)) or not 50 < self.activation_percentile <= 100:
            raise ValueError(f"activation_percentile: must be in (50, 100], got {self.activation_percentile!r}")
        if not isinstance(self.activation_headroom, (int, float)) or not 1 <= self.activation_headroom <= 16:
            raise ValueError(f"activation_headroom: must be in [1, 16], got {self.activation_headroom!r}")
        if self.activation_range not in IMAGE_RANGES:
            raise ValueError(f"activation_range: must be one of {', '.join(IMAGE_RANGES)}, got {self.activation_range!r}")
        if self.activation_range != "static" and self.integer_entropy_path:
            raise ValueError("integer_entropy_path needs static activation grids: set activation_range='static'")
        _check_count("selector_hidden", self.selector_hidden, minimum=1)
        _check_count("selector_pool", self.selector_pool, minimum=1)
        _check_count("calibration_batches", self.calibration_batches, minimum=0)
        if not 0.0 <= self.selector_dropout < 1.0:
            raise ValueError(f"selector_dropout: must be in [0, 1), got {self.selector_dropout}")
        if self.unsupported not in ("error", "skip"):
            raise ValueError(f"unsupported: must be 'error' or 'skip', got {self.unsupported!r}")

    @property
    def pairs(self) -> Tuple[Tuple[int, int], ...]:
        """The candidate (weight bits, activation bits) pairs, cheapest (in BitOPs) first."""
        if self.weight_bits is None and self.activation_bits is None:
            return tuple((b, b) for b in self.candidate_bits)
        weights = self.weight_bits or self.candidate_bits
        activations = self.activation_bits or self.candidate_bits
        return tuple(sorted(((w, a) for w in weights for a in activations), key=lambda p: (p[0] * p[1], p)))

    @property
    def dynamic(self) -> bool:
        """True when there is more than one candidate, so a selector is needed."""
        return len(self.pairs) > 1

    def replace(self, **changes: Any) -> "DynaQuantConfig":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> Dict[str, Any]:
        data = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}

    @classmethod
    def from_dict(cls, data: Optional[Dict[str, Any]]) -> "DynaQuantConfig":
        """Build from a dict; renamed keys of earlier versions are accepted with a warning, and
        training settings (``gamma``, ``target_bits``, ``tau_*``) are ignored with one."""
        data = _upgrade(dict(data or {}))
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown DynaQuantConfig field(s): {', '.join(unknown)}")
        for name in ("candidate_bits", "weight_bits", "activation_bits", "float_modules", "fixed_bits"):
            if name in data and isinstance(data[name], (list, tuple)):
                data[name] = tuple(data[name])
        return cls(**data)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str) -> "DynaQuantConfig":
        data = yaml.safe_load(text)
        if data is not None and not isinstance(data, dict):
            raise ValueError("a DynaQuantConfig YAML document must be a mapping")
        return cls.from_dict(data)


#: keys renamed since earlier versions: old -> new
RENAMED = {"estimator": "rounding", "learn_scale": "learn_range", "calibration_steps": "calibration_batches"}
#: training settings that earlier versions kept here (now in the training configuration's ``quant`` section)
TRAINING_KEYS = ("gamma", "target_bits", "tau_start", "tau_end", "tau_decay_steps")


def _upgrade(data: Dict[str, Any]) -> Dict[str, Any]:
    for old, new in RENAMED.items():
        if old in data:
            warnings.warn(f"DynaQuantConfig: {old!r} is now called {new!r}", FutureWarning, stacklevel=3)
            data.setdefault(new, data.pop(old))
            data.pop(old, None)
    moved = [key for key in TRAINING_KEYS if key in data]
    if moved:
        warnings.warn(
            f"DynaQuantConfig: {', '.join(moved)} are training settings now (the training config's quant "
            "section: quant.gamma, quant.target_bits, quant.tau_*); ignored here",
            FutureWarning,
            stacklevel=3,
        )
        for key in moved:
            data.pop(key)
    return data


def _check_bits(name: str, bits: Any) -> None:
    low, high = _BITS_RANGE
    if isinstance(bits, bool) or not isinstance(bits, int) or not low <= bits <= high:
        raise ValueError(f"{name}: bit widths must be integers in {low}..{high}, got {bits!r}")


def _normalise_bits(bits: Any, name: str = "candidate_bits") -> Tuple[int, ...]:
    if isinstance(bits, int):
        bits = (bits,)
    bits = tuple(bits)
    if not bits:
        raise ValueError(f"{name}: must hold at least one bit width")
    for b in bits:
        _check_bits(name, b)
    return tuple(sorted(set(bits)))


def _check_positive(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}: must be a finite number > 0, got {value!r}")


def _check_count(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: must be an integer >= {minimum}, got {value!r}")
