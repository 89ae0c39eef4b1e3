"""``DynaQuantConfig``: everything ``dynaquantize`` needs, as one serialisable dataclass.

Example:
    >>> cfg = DynaQuantConfig(candidate_bits=(6, 8, 10), gamma=0.01)
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
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

import yaml

from . import plugins

__all__ = ["DynaQuantConfig"]

_BITS_RANGE = (2, 16)


@dataclass(frozen=True)
class DynaQuantConfig:
    """How to quantize a CompressAI model with DynaQuant.

    Attributes:
        candidate_bits: bit widths the selector chooses from per image and layer; one value gives
            static quantization at that width.
        fixed_bits: bit width of the fixed-precision layers: the first module of the analysis and
            synthesis transforms (the selectors' feature taps), the hyper transforms and the
            entropy-parameter networks.
        quantize_activations: quantize every quantized layer's input as well as its weights.
        estimator: rounding estimator name (``"dgm"`` or ``"ste"``, or one added by a plugin).
        selector: bit-width selector name (``"mlp"``, the paper's pooled-statistics MLP, or one
            added by a plugin).
        beta: DGM sharpness (``> 0``).
        learn_scale: learn the per-channel ranges (otherwise they stay at their calibration).
        learn_offset: learn per-channel activation offsets. On the reference ScaleHyperprior they
            cost rate-distortion at 8 bits (BD-rate +1.96 % with, +0.06 % without, in
            ``benchmarks/results/summary.md``): prefer ``False`` for GDN codecs.
        activation_per_channel: one activation step (and offset) per channel, the content-aware
            default; ``False`` gives one per tensor, which FINN maps exactly (with per-channel
            steps the FPGA export has to re-quantize the next layer's weights, see
            :mod:`dynaquant_brevitas.export.integer`).
        weight_offset: learn per-channel weight offsets as well.
        integer_zero_point: round every zero point ``-offset / step`` to an integer (straight-through,
            the offset still learns), so that 0 is exactly on the grid: the latents CompressAI's
            synthesis and hyper-synthesis transforms receive are integers, mostly 0. It also makes
            the exported zero points exact (no correction shifts).
        gamma: weight of the bit loss (expected average bit width) in the training loss.
        target_bits: average bit width to reach; training then adjusts ``gamma`` itself.
        tau_start, tau_end, tau_decay_steps: Gumbel-softmax temperature, decayed exponentially
            from ``tau_start`` to ``tau_end`` over ``tau_decay_steps`` training steps.
        selector_hidden, selector_pool, selector_dropout: selector MLP width, pooled grid size and
            dropout.
        analysis, synthesis: attribute names of the analysis and synthesis transforms.
        float_modules: extra module-name patterns (``fnmatch``) left in floating point.
        unsupported: ``"error"`` (default) or ``"skip"`` (warn and leave in float) for modules
            with parameters that no handler quantizes.
        calibration_steps: training batches an activation quantizer averages its initial range
            over when it was not calibrated explicitly.
    """

    candidate_bits: Tuple[int, ...] = (4, 6, 8)
    fixed_bits: int = 8
    quantize_activations: bool = True
    estimator: str = "dgm"
    beta: float = 1.0
    learn_scale: bool = True
    learn_offset: bool = True
    activation_per_channel: bool = True
    weight_offset: bool = False
    integer_zero_point: bool = False
    gamma: float = 0.0
    target_bits: Optional[float] = None
    tau_start: float = 2.0
    tau_end: float = 0.5
    tau_decay_steps: int = 5000
    selector: str = "mlp"
    selector_hidden: int = 64
    selector_pool: int = 5
    selector_dropout: float = 0.2
    analysis: str = "g_a"
    synthesis: str = "g_s"
    float_modules: Tuple[str, ...] = field(default_factory=tuple)
    unsupported: str = "error"
    calibration_steps: int = 8

    def __post_init__(self) -> None:
        object.__setattr__(self, "candidate_bits", _normalise_bits(self.candidate_bits))
        object.__setattr__(self, "float_modules", tuple(self.float_modules))
        _check_bits("fixed_bits", self.fixed_bits)
        for kind in ("estimator", "selector"):  # registered names, built in or from plugins
            try:
                plugins.lookup(kind, getattr(self, kind))
            except ValueError as error:
                raise ValueError(f"{kind}: {error}") from None
        _check_positive("beta", self.beta)
        _check_non_negative("gamma", self.gamma)
        _check_positive("tau_start", self.tau_start)
        _check_positive("tau_end", self.tau_end)
        _check_count("tau_decay_steps", self.tau_decay_steps, minimum=1)
        _check_count("selector_hidden", self.selector_hidden, minimum=1)
        _check_count("selector_pool", self.selector_pool, minimum=1)
        _check_count("calibration_steps", self.calibration_steps, minimum=0)
        if not 0.0 <= self.selector_dropout < 1.0:
            raise ValueError(f"selector_dropout: must be in [0, 1), got {self.selector_dropout}")
        if self.target_bits is not None:
            low, high = min(self.candidate_bits), max(self.candidate_bits)
            if not low <= float(self.target_bits) <= high:
                raise ValueError(
                    f"target_bits: {self.target_bits} is outside the candidates' range [{low}, {high}]"
                )
        if self.unsupported not in ("error", "skip"):
            raise ValueError(f"unsupported: must be 'error' or 'skip', got {self.unsupported!r}")

    @property
    def dynamic(self) -> bool:
        """True when there is more than one candidate, so a selector is needed."""
        return len(self.candidate_bits) > 1

    def temperature(self, step: int) -> float:
        """Gumbel-softmax temperature at training ``step`` (exponential decay, then constant).

        Example:
            >>> DynaQuantConfig(tau_start=2.0, tau_end=0.5, tau_decay_steps=100).temperature(50)
            1.0
        """
        progress = min(max(step, 0) / self.tau_decay_steps, 1.0)
        return self.tau_start * (self.tau_end / self.tau_start) ** progress

    def replace(self, **changes: Any) -> "DynaQuantConfig":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> Dict[str, Any]:
        data = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}

    @classmethod
    def from_dict(cls, data: Optional[Dict[str, Any]]) -> "DynaQuantConfig":
        data = dict(data or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown DynaQuantConfig field(s): {', '.join(unknown)}")
        for name in ("candidate_bits", "float_modules"):
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


def _check_bits(name: str, bits: Any) -> None:
    low, high = _BITS_RANGE
    if isinstance(bits, bool) or not isinstance(bits, int) or not low <= bits <= high:
        raise ValueError(f"{name}: bit widths must be integers in {low}..{high}, got {bits!r}")


def _normalise_bits(bits: Any) -> Tuple[int, ...]:
    if isinstance(bits, int):
        bits = (bits,)
    bits = tuple(bits)
    if not bits:
        raise ValueError("candidate_bits: must hold at least one bit width")
    for b in bits:
        _check_bits("candidate_bits", b)
    return tuple(sorted(set(bits)))


def _check_positive(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}: must be a finite number > 0, got {value!r}")


def _check_non_negative(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name}: must be a finite number >= 0, got {value!r}")


def _check_count(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: must be an integer >= {minimum}, got {value!r}")
