"""Post-training quantization in one call: ``ptq(model, images)``.

``dynaquantize`` plus percentile calibration sets every range from statistics of its own tensor;
``ptq`` then visits the quantized layers in the order the model runs them and, for each one,
chooses what minimises the error of the layer's *output* on calibration crops:

1. **activation ranges** (per channel): a grid of clipping ranges (and, with offsets, of lower
   and upper ends) scored by each channel's quantization error, then one common factor scored by
   the layer's output error. Zero points are integers, so 0 is always on the grid; inputs that
   are integers (the latents CompressAI's synthesis and hyper-synthesis transforms receive) get
   a step of 1 whenever it fits;
2. **weight ranges** (per output channel): a grid of clipping factors of ``max |w|``, scored by
   each output channel's output error;
3. **rounding** of the weights: ``"gptq"`` (default) rounds one input weight after the other and
   moves each rounding error onto the weights not yet rounded, through the inverse of the
   layer's input correlation (the OBQ/GPTQ scheme); ``"adaround"`` learns whether each weight
   rounds up or down; ``"nearest"`` rounds to nearest. The result is written back as weights on
   the quantizer's grid, so the model stays an ordinary DynaQuant model;
4. **bias correction**: each output channel's mean error over the crops is removed from its bias.

A layer's input is taken from the model with every earlier layer already quantized, and its
target is the float model's output, so a layer also makes up for what the layers before it got
wrong. The output error of a convolution, transposed convolution or linear layer is a quadratic
form of its weight error (:class:`_Normal`), built once per layer from sampled output positions,
which makes the weight searches and the rounding cheap.

Example:
    >>> import torch
    >>> from compressai.models import ScaleHyperprior
    >>> images = [torch.rand(3, 96, 96) for _ in range(2)]
    >>> model = ptq(ScaleHyperprior(8, 12), images, crops=4, crop_size=64, progress=False)
    >>> model.dynaquant.config.candidate_bits, model(torch.rand(1, 3, 64, 64))["x_hat"].shape
    ((8,), torch.Size([1, 3, 64, 64]))
"""

from __future__ import annotations

import contextlib
import copy
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..memory import PROBE_SIDE, activation_peak, available_memory
from ..quant import ContentAwareIntQuant, calibrate
from .config import DynaQuantConfig
from .dynaquantize import DynaQuantState, dynaquantize
from .profiles import freeze

__all__ = ["PTQ_CONFIG", "ROUNDINGS", "calibration_crops", "ptq"]

#: The default configuration: static 8 bits, symmetric activation grids. Per-channel offsets lose
#: a little less on photographs (``benchmarks/ptq_study.py``; ``ptq-w8a8-offsets`` in the
#: benchmark) but fit the grids so tightly to them that a smooth gradient loses 5.7 dB instead of
#: 1.8 (``benchmarks/results/content_robustness.json``); see :func:`ptq`.
PTQ_CONFIG = DynaQuantConfig(candidate_bits=(8,), learn_offset=False, integer_zero_point=True)

#: weight rounding methods of :func:`ptq`
ROUNDINGS = ("gptq", "adaround", "nearest")
#: GPTQ's damping of the input correlation (a fraction of its mean diagonal)
_DAMPING = 0.01
#: clipping factors of the activation range tried per channel (the full range first)
_ACT_FACTORS = tuple(0.95 ** k for k in range(60))
#: clipping factors of each end of the activation range when offsets are on
_END_FACTORS = tuple(0.85 ** k for k in range(16))
#: common factors of the chosen activation ranges, scored by the layer's output error
_ACT_COMMON = (0.9, 1.0, 1.12, 1.25, 1.4, 1.6)
#: clipping factors of max |w| tried per output channel
_WEIGHT_FACTORS = tuple(1.0 - 0.025 * k for k in range(21))
#: samples per channel the per-channel activation search reads
_CHANNEL_SAMPLES = 1 << 19
#: values per channel a lattice is looked for on (and exact grids are scored on)
_LATTICE_SAMPLES = 1 << 16
#: lattices recognised in activations: integers (latents) and 8-bit pixel levels
_LATTICES = (1.0, 1.0 / 255)
#: bins per channel of the histograms the activation ranges are scored on
_BINS = 2048
#: output positions per channel the output-error searches read
_SEARCH_POSITIONS = 1 << 14
#: output positions the quadratic form of a layer's output error is built from
_NORMAL_ROWS = 1 << 14
#: AdaRound's stretch of the sigmoid and the weight of its regulariser (relative to the error)
_ZETA, _GAMMA = 1.1, -0.1
_ROUNDING_WEIGHT = 0.1


class _Captured(Exception):
    """Raised by a capture hook to end a forward pass once a layer's last call has been seen."""


@dataclass
class _Unit:
    """One quantized layer: its name, module, quantizers, and how many times a forward runs it."""

    name: str
    module: nn.Module
    weight: ContentAwareIntQuant
    act: Optional[ContentAwareIntQuant]
    calls: int = 0
    macs: float = 0.0
    report: Dict[str, Any] = field(default_factory=dict)


def ptq(
    model: nn.Module,
    images: Iterable[Tensor],
    config: Optional[DynaQuantConfig] = None,
    *,
    crops: int = 32,
    crop_size: int = 256,
    search: bool = True,
    bias_correction: bool = True,
    rounding: str = "gptq",
    rounding_iters: int = 300,
    batch_size: int = 8,
    seed: int = 0,
    progress: bool = True,
    profile: Optional[Mapping[str, Any]] = None,
) -> nn.Module:
    """Quantize a float CompressAI model after training, from a few images (see the module docs).

    Args:
        model: a float CompressAI model; it is quantized in place (as by ``dynaquantize``) and
            returned in eval mode.
        images: RGB images, each ``(3, H, W)`` or ``(N, 3, H, W)``, floats in [0, 1] or uint8
            levels (any iterable: a list, a generator reading files). Calibrate on training photos,
            not on the images the model is evaluated on.
        config: a static configuration (one candidate width); :data:`PTQ_CONFIG` by default.
        crops: random crops drawn from ``images`` (seeded) to calibrate on.
        crop_size: their side in pixels, a multiple of 64; smaller images are padded by reflection.
        search: choose activation and weight ranges by the layers' output error (``False``: the
            percentile and ``max |w|`` ranges of calibration).
        bias_correction: remove each output channel's mean error from its bias.
        rounding: how weights are rounded, one of :data:`ROUNDINGS` (see the module docs).
        rounding_iters: optimisation steps per layer of ``rounding="adaround"``.
        batch_size: crops per forward pass.
        seed: seed of the crops and of every random choice.
        progress: print a time estimate and show a progress bar over the layers.
        profile: a static mixed-precision profile (``{layer: bits or [weight, activation]}``, as
            :func:`~dynaquant_brevitas.transform.freeze` takes) for a configuration with several
            candidates: the model is frozen to it, then quantized.

    Returns:
        ``model``, dynaquantized and calibrated, ready for ``update()``, ``compress`` and
        :func:`~dynaquant_brevitas.io.save_model`; with ``profile``, the frozen copy. What was
        chosen per layer is in ``model.dynaquant.ptq_report`` (frozen: ``model.ptq_report``).

    Raises:
        ValueError: for an already quantized model, a dynamic configuration without a profile,
            no images, or images of the wrong shape.
    """
    config = PTQ_CONFIG if config is None else config
    _check_float(model)
    if config.dynamic and profile is None:
        raise ValueError(
            f"ptq needs a static configuration (one candidate width), got the candidates "
            f"{list(getattr(config, 'pairs', config.candidate_bits))}: a dynamic model needs a trained "
            "bit-width selector (dynaquant train)"
        )
    if crop_size % 64 or crop_size <= 0:
        raise ValueError(f"crop_size must be a positive multiple of 64, got {crop_size}")
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding must be one of {', '.join(ROUNDINGS)}, got {rounding!r}")
    if crops < 1 or batch_size < 1 or rounding_iters < 0:
        raise ValueError("crops and batch_size must be >= 1 and rounding_iters >= 0")
    _check_memory(model, crops, crop_size)
    generator = torch.Generator().manual_seed(seed)
    samples = calibration_crops(images, crops, crop_size, generator)
    device = next(model.parameters()).device
    batches = [torch.cat(samples[i : i + batch_size]).to(device) for i in range(0, len(samples), batch_size)]
    reference = copy.deepcopy(model).eval()
    was_training = model.training
    dynaquantize(model, config)
    if profile is not None:
        model = freeze(model, profile)
    start = time.perf_counter()
    calibrate(model, batches)
    forward_seconds = time.perf_counter() - start
    model.eval()
    units = _units(model, batches[0][:1])
    if search or bias_correction or rounding != "nearest":
        run = _Run(model, reference, units, batches, search, bias_correction, rounding, rounding_iters, generator)
        run.all(forward_seconds, progress)
    getattr(model, "dynaquant", model).ptq_report = [unit.report for unit in units]
    return model.train(was_training) if was_training else model


#: what ptq holds per crop, in units of the largest activation of one layer: the layer's inputs,
#: the float targets and the float model's inputs, with room for the search's temporaries
_MEMORY_FACTOR = 4


def _check_memory(model: nn.Module, crops: int, crop_size: int) -> None:
    """Refuse, before allocating, a calibration set that the available memory cannot hold."""
    available = available_memory()
    if available is None:
        return
    was_training = model.training
    need = _MEMORY_FACTOR * crops * activation_peak(model.eval()) * (crop_size / PROBE_SIDE) ** 2
    model.train(was_training)
    if need > available:
        raise ValueError(
            f"ptq on {crops} crops of {crop_size} px needs about {need / 2**30:.1f} GiB, "
            f"{available / 2**30:.1f} GiB are available: use fewer crops or smaller ones"
        )


def calibration_crops(
    images: Iterable[Tensor], count: int, size: int, generator: Optional[torch.Generator] = None
) -> List[Tensor]:
    """``count`` random ``(1, 3, size, size)`` float crops of ``images`` (each ``(3, H, W)`` or
    ``(N, 3, H, W)``, floats in [0, 1] or uint8 levels), the image and the position drawn with
    ``generator``.

    Images smaller than ``size`` are padded by reflection (by repetition when too small for it).

    Example:
        >>> crops = calibration_crops([torch.rand(3, 80, 120)], 3, 64, torch.Generator().manual_seed(0))
        >>> len(crops), crops[0].shape
        (3, torch.Size([1, 3, 64, 64]))
    """
    generator = generator or torch.Generator().manual_seed(0)
    pool: List[Tensor] = []
    for index, image in enumerate(images):
        if not isinstance(image, Tensor):
            raise ValueError(f"image {index}: expected a tensor, got {type(image).__name__}")
        batch = image.unsqueeze(0) if image.dim() == 3 else image
        if batch.dim() != 4 or batch.shape[1] != 3 or batch.shape[-1] < 1 or batch.shape[-2] < 1:
            raise ValueError(f"image {index}: expected (3, H, W) or (N, 3, H, W), got {tuple(image.shape)}")
        if batch.dtype != torch.uint8 and (not batch.is_floating_point() or not bool(torch.isfinite(batch).all())):
            raise ValueError(f"image {index}: expected finite values in [0, 1] (or uint8 levels)")
        pool.extend(batch.detach().split(1))
    if not pool:
        raise ValueError("ptq got no images to calibrate on")
    out = []
    for _ in range(count):
        image = _padded(pool[int(torch.randint(len(pool), (1,), generator=generator))], size)
        height, width = image.shape[-2:]
        top = int(torch.randint(height - size + 1, (1,), generator=generator))
        left = int(torch.randint(width - size + 1, (1,), generator=generator))
        crop = image[..., top : top + size, left : left + size]
        out.append(crop.float().div(255.0) if crop.dtype == torch.uint8 else crop.float().contiguous())
    return out


def _padded(image: Tensor, size: int) -> Tensor:
    if image.shape[-2] >= size and image.shape[-1] >= size:
        return image
    image = image.float().div(255.0) if image.dtype == torch.uint8 else image
    while image.shape[-2] < size or image.shape[-1] < size:
        pad_h, pad_w = max(0, size - image.shape[-2]), max(0, size - image.shape[-1])
        mode = "reflect" if pad_h < image.shape[-2] and pad_w < image.shape[-1] else "replicate"
        image = nn.functional.pad(image, (0, pad_w, 0, pad_h), mode=mode)
    return image


def _check_float(model: nn.Module) -> None:
    if not isinstance(model, nn.Module):
        raise ValueError(f"ptq needs a float CompressAI model (an nn.Module), got {type(model).__name__}")
    quantized = (
        isinstance(getattr(model, "dynaquant", None), DynaQuantState)
        or getattr(model, "dynaquant_profile", None) is not None
        or any(isinstance(m, ContentAwareIntQuant) or hasattr(m, "weight_quant") for m in model.modules())
    )
    if quantized:
        raise ValueError("ptq needs a float model, and this one is already quantized; start from its float checkpoint")


def _units(model: nn.Module, probe: Tensor) -> List[_Unit]:
    """The quantized layers in the order a forward pass first runs them, with their call counts."""
    units: Dict[str, _Unit] = {}
    order: List[str] = []
    handles = []
    for name, module in model.named_modules():
        weight = getattr(getattr(module, "weight_quant", None), "tensor_quant", None)
        if not isinstance(weight, ContentAwareIntQuant):
            continue
        fused = getattr(getattr(module, "input_quant", None), "fused_activation_quant_proxy", None)
        act = getattr(fused, "tensor_quant", None)
        units[name] = _Unit(name, module, weight, act if isinstance(act, ContentAwareIntQuant) else None)

        def count(mod, inputs, output, unit=units[name]):
            unit.calls += 1
            if unit.name not in order:
                order.append(unit.name)
            out = _plain(output)
            unit.macs = unit.weight_numel_per_output * out.numel() / max(1, out.shape[0])

        units[name].weight_numel_per_output = module.weight.numel() / max(1, _out_channels(module))
        handles.append(module.register_forward_hook(count))
    try:
        with torch.no_grad():
            model(probe)
    finally:
        for handle in handles:
            handle.remove()
    return [units[name] for name in order]


def _out_channels(module: nn.Module) -> int:
    if isinstance(module, nn.ConvTranspose2d):
        return module.weight.shape[1] * module.groups
    return module.weight.shape[0]


def _plain(t: Any) -> Tensor:
    return t.value if hasattr(t, "value") and not isinstance(t, Tensor) else t


def _output_channel_dim(module: nn.Module) -> int:
    return -1 if isinstance(module, nn.Linear) else 1


def _per_channel(x: Tensor, dim: int) -> Tensor:
    """``x`` as ``(C, elements)`` along ``dim``."""
    dim = dim % x.dim()
    return x.transpose(0, dim).reshape(x.shape[dim], -1)


class _Run:
    """The layer-by-layer pass of :func:`ptq`."""

    def __init__(self, model, reference, units, batches, search, bias_correction, rounding, rounding_iters, generator):
        self.model, self.reference, self.units, self.batches = model, reference, units, batches
        self.search, self.bias_correction, self.rounding, self.rounding_iters = search, bias_correction, rounding, rounding_iters
        self.generator = generator
        self.float_modules = dict(reference.named_modules())

    # -- the pass ---------------------------------------------------------------------------------

    def all(self, forward_seconds: float, progress: bool) -> None:
        from tqdm import tqdm

        total_macs = sum(u.macs * u.calls for u in self.units) or 1.0
        done = 0.0
        pending = list(self.units)
        with contextlib.ExitStack() as stack:
            disabled = {}
            for u in pending:  # every layer in float until its turn
                disabled[u.name] = stack.enter_context(contextlib.ExitStack())
                disabled[u.name].enter_context(_disabled(u.module))
            bar = None
            seconds = []
            for i, unit in enumerate(pending):
                started = time.perf_counter()
                disabled.pop(unit.name).close()
                self.layer(unit, done / total_macs)
                done += unit.macs * unit.calls
                seconds.append(time.perf_counter() - started)
                if i == min(1, len(pending) - 1) and progress:
                    # the first layer (3 input channels) is no guide to the rest: each further layer
                    # costs at least what the second did, whatever its MACs
                    estimate = max(self._estimate(seconds[0], forward_seconds), seconds[0] + seconds[-1] * (len(pending) - 1))
                    print(
                        f"ptq: {len(pending)} layers on {sum(len(b) for b in self.batches)} crops, "
                        f"about {_duration(estimate)} (first layers {_duration(sum(seconds))})",
                        file=sys.stderr,
                        flush=True,
                    )
                    bar = stack.enter_context(tqdm(total=len(pending), initial=i + 1, desc="ptq", unit="layer"))
                elif bar is not None:
                    bar.update(1)
                if bar is not None:
                    bar.set_postfix_str(unit.name)

    def _estimate(self, first: float, forward_seconds: float) -> float:
        """Seconds the whole pass takes: each layer's inputs cost the share of a forward pass that
        runs before it (twice: quantized and float), its search a time proportional to its MACs."""
        total = sum(u.macs * u.calls for u in self.units) or 1.0
        before, prefix = 0.0, 0.0
        for unit in self.units:
            prefix += 1.5 * forward_seconds * (before + unit.macs * unit.calls) / total
            before += unit.macs * unit.calls
        first_search = max(1e-3, first - 1.5 * forward_seconds * self.units[0].macs * self.units[0].calls / total)
        search = first_search * sum(min(u.macs, 1e12) for u in self.units) / max(1.0, self.units[0].macs)
        return prefix + min(search, 60.0 * len(self.units))

    @torch.no_grad()
    def layer(self, unit: _Unit, _position: float) -> None:
        inputs = self._capture(self.model, unit.name, "input")
        targets = self._capture(self.reference, unit.name, "output")
        unit.report = {"layer": unit.name}
        if self.search and unit.act is not None:
            self._search_activation(unit, inputs)
        normal = _Normal.build(unit.module, inputs, targets, self.bias_correction, self.generator)
        has_bias = self.bias_correction and getattr(unit.module, "bias", None) is not None
        if normal is None:  # a layer without a patch form: candidates are scored by running it
            unit.report["rounding"] = "nearest"
            if self.search:
                self._search_weight(unit, inputs, targets)
            if has_bias:
                self._correct_bias(unit, inputs, targets)
            return
        if self.search and self.rounding != "gptq":  # GPTQ's error feedback does better unclipped
            self._search_weight_normal(unit, normal)
        unit.report["error_nearest"] = float(normal.error(normal.delta(unit)))
        if self.rounding == "gptq":
            normal.gptq(unit)
        elif self.rounding == "adaround":
            with torch.enable_grad():
                self._learn_rounding(unit, normal)
        if has_bias:
            shift = normal.bias_shift(normal.delta(unit))
            unit.module.bias.data += shift.to(unit.module.bias.dtype)
            unit.report["bias_shift"] = float(shift.abs().max())
        unit.report["error"] = float(normal.error(normal.delta(unit)))

    # -- data -------------------------------------------------------------------------------------

    def _capture(self, model: nn.Module, name: str, what: str) -> List[Tensor]:
        """The inputs (or outputs) of layer ``name`` over the calibration batches: one tensor per
        call, each forward pass stopped after the layer's last call."""
        module = dict(model.named_modules())[name]
        unit = next(u for u in self.units if u.name == name)
        seen: List[Tensor] = []
        calls = [0]

        def keep(value: Any) -> None:
            seen.append(_plain(value).detach().clone())  # later in-place operations (ReLU) would change it
            calls[0] += 1
            if calls[0] == unit.calls:
                raise _Captured

        if what == "input":
            handle = module.register_forward_pre_hook(lambda m, args: keep(args[0]))
        else:
            handle = module.register_forward_hook(lambda m, args, out: keep(out))
        try:
            for batch in self.batches:
                calls[0] = 0
                try:
                    model(batch)
                except _Captured:
                    pass
        finally:
            handle.remove()
        return seen

    def _subset(self, tensors: List[Tensor], positions_per_tensor: int) -> List[int]:
        """Indices of the captured tensors an output-error search reads (about
        ``_SEARCH_POSITIONS`` output positions per channel, spread over the batches)."""
        wanted = max(1, _SEARCH_POSITIONS // max(1, positions_per_tensor))
        step = max(1, len(tensors) // wanted)
        return list(range(0, len(tensors), step))[:wanted]

    # -- activations --------------------------------------------------------------------------------

    def _search_activation(self, unit: _Unit, inputs: List[Tensor]) -> None:
        """Per channel, the grid with the least quantization error on the captured input values
        (from a fine histogram: rounding noise inside, clipping error outside), or an exact grid
        for inputs on a lattice; then one common factor of the ranges, chosen by the layer's output
        error on held-out samples (ranges fitted on the others), which undoes the clipping a finite
        sample of the tails invites."""
        quant = unit.act
        qmin, qmax = quant.levels(int(quant.static_bit_width))
        ranges, offsets, lattice = self._channel_grids(quant, inputs, qmin, qmax)
        unit.report["act_lattice"] = lattice
        self._set_act(quant, ranges, offsets, qmax)
        if lattice is not None:
            return  # exact grids: nothing to trade
        fit = [x[0::2] for x in inputs if x.shape[0] > 1]
        held_out = [x[1::2] for x in inputs if x.shape[0] > 1]
        fitted = (ranges, offsets)
        if held_out:
            fitted = self._channel_grids(quant, fit, qmin, qmax)[:2]
        else:
            held_out = inputs
        subset = [held_out[i] for i in self._subset(held_out, 1)]
        with _weights_float(unit.module):
            reference = [self._float_output(unit, x) for x in subset]
            scores = []
            for factor in _ACT_COMMON:
                self._set_act(quant, fitted[0] * factor, fitted[1], qmax)
                scores.append(sum(_sq(unit.module(x), ref) for x, ref in zip(subset, reference)))
        factor = _ACT_COMMON[min(range(len(scores)), key=scores.__getitem__)]
        self._set_act(quant, ranges * factor, offsets, qmax)
        unit.report["act_factor"] = factor

    def _channel_grids(self, quant, inputs: List[Tensor], qmin: int, qmax: int) -> Tuple[Tensor, Tensor, Optional[float]]:
        """``(ranges, offsets, lattice)``: each channel's grid with the least error on ``inputs``."""
        dim = quant.channel_dim if quant.per_channel else None
        flat = torch.cat([(_per_channel(x, dim) if dim is not None else x.reshape(1, -1)) for x in inputs], dim=1)
        if flat.shape[1] > _CHANNEL_SAMPLES:
            flat = flat[:, torch.randint(flat.shape[1], (_CHANNEL_SAMPLES,), generator=self.generator).to(flat.device)]
        low, high = flat.amin(dim=1), flat.amax(dim=1)
        lattice = _lattice(flat[:, :_LATTICE_SAMPLES])
        if lattice is not None:  # exact grids exist: score them on the values themselves
            candidates = self._lattice_candidates(quant, low, high, lattice, qmin, qmax)
            sample = flat[:, :_LATTICE_SAMPLES]
            errors = torch.stack([_grid_error(sample, r, o, qmin, qmax) for r, o in candidates])
        else:
            histogram = _Histogram(flat, low, high)
            candidates = [_grid_from_ends(quant, lo, hi, qmin, qmax) for lo, hi in self._end_candidates(quant, low, high)]
            errors = torch.stack([histogram.error(*_grid_ends(quant, r, o, qmin, qmax)) for r, o in candidates])
        del flat
        best = errors.argmin(dim=0)
        channels = torch.arange(best.numel(), device=best.device)
        ranges = torch.stack([r for r, _ in candidates])[best, channels].clamp_min(1e-8)
        offsets = torch.stack([o for _, o in candidates])[best, channels]
        return ranges, offsets, lattice

    @staticmethod
    def _end_candidates(quant: ContentAwareIntQuant, low: Tensor, high: Tensor) -> List[Tuple[Tensor, Tensor]]:
        """(lower end, upper end) pairs per channel: with offsets, each end shrunk towards 0 on
        its own; without, the symmetric ``+-max |x|`` shrunk (unsigned grids keep 0 as lower end)."""
        zero = torch.zeros_like(low)
        if quant.learn_offset:
            out = []
            for a in _END_FACTORS:
                for b in _END_FACTORS:
                    lo = torch.where(low > 0, low * a, torch.minimum(low * a, zero))
                    hi = torch.where(high < 0, high * b, torch.maximum(high * b, zero))
                    out.append((lo, torch.maximum(hi, lo + 1e-8)))
            return out
        peak = torch.maximum(low.abs(), high.abs()).clamp_min(1e-8)
        if not quant.signed:
            return [(zero, peak * a) for a in _ACT_FACTORS]
        return [(-peak * a, peak * a) for a in _ACT_FACTORS]

    @staticmethod
    def _lattice_candidates(quant, low, high, lattice, qmin, qmax) -> List[Tuple[Tensor, Tensor]]:
        """(range, offset) grids whose steps are 1, 2, 3 or 4 lattice steps, centred on 0, starting at
        the lowest value or ending at the highest, all with integer zero points."""
        out = []
        for multiple in (1, 2, 3, 4):
            step = torch.full_like(low, lattice * multiple)
            span = step * qmax
            for zero_point in (torch.zeros_like(low), qmin - torch.round(low / step), qmax - torch.round(high / step)):
                out.append((span, -zero_point * step))
        return out

    @staticmethod
    def _set_act(quant: ContentAwareIntQuant, ranges: Tensor, offsets: Tensor, qmax: int) -> None:
        ranges, offsets = _snap(ranges, offsets, qmax)
        quant.range.data = ranges.to(quant.range.dtype).reshape(quant.range.shape)
        quant.offset.data = offsets.to(quant.offset.dtype).reshape(quant.offset.shape)

    def _float_output(self, unit: _Unit, x: Tensor) -> Tensor:
        with _disabled(unit.module):
            return unit.module(x)

    # -- weights ----------------------------------------------------------------------------------

    def _search_weight_normal(self, unit: _Unit, normal: "_Normal") -> None:
        """Per output channel, the clipping factor of ``max |w|`` with the least output error."""
        quant = unit.weight
        peak = _per_channel(unit.module.weight.detach(), quant.channel_dim).abs().amax(dim=1).clamp_min(1e-8)
        scores = []
        for factor in _WEIGHT_FACTORS:
            quant.range.data = (peak * factor).reshape(quant.range.shape)
            scores.append(normal.channel_errors(normal.delta(unit)))
        best = torch.stack(scores).argmin(dim=0)
        factors = torch.tensor(_WEIGHT_FACTORS, dtype=peak.dtype, device=peak.device)[best]
        quant.range.data = (peak * factors).reshape(quant.range.shape)
        unit.report["weight_factor_mean"] = float(factors.mean())

    def _search_weight(self, unit: _Unit, inputs: List[Tensor], targets: List[Tensor]) -> None:
        quant = unit.weight
        dim = _output_channel_dim(unit.module)
        peak = _per_channel(unit.module.weight.detach(), quant.channel_dim).abs().amax(dim=1).clamp_min(1e-8)
        subset = self._subset(inputs, int(targets[0].numel() // max(1, targets[0].shape[dim])))
        scores = []
        for factor in _WEIGHT_FACTORS:
            quant.range.data = (peak * factor).reshape(quant.range.shape)
            scores.append(
                sum(_channel_error(unit.module(inputs[i]), targets[i], dim, self.bias_correction) for i in subset)
            )
        best = torch.stack(scores).argmin(dim=0)
        factors = torch.tensor(_WEIGHT_FACTORS, dtype=peak.dtype, device=peak.device)[best]
        quant.range.data = (peak * factors).reshape(quant.range.shape)
        unit.report["weight_factor_mean"] = float(factors.mean())

    # -- rounding -----------------------------------------------------------------------------------

    def _learn_rounding(self, unit: _Unit, normal: "_Normal") -> None:
        """AdaRound: ``w = s * clamp(floor(w / s) + h(v), qmin, qmax)`` with a learned ``h(v)`` in
        [0, 1] pushed towards 0 or 1, minimising the layer's output error; the weights are then
        replaced by their rounded values on the grid (which the quantizer leaves unchanged)."""
        module, quant = unit.module, unit.weight
        qp = quant.qparams()
        scale = _weight_scale(quant, module.weight)
        w, mask = normal.weight, getattr(module, "mask", None)
        base = torch.floor(w / scale)
        rest = (w / scale - base).clamp(0.01, 0.99)
        v = nn.Parameter(torch.logit((rest - _GAMMA) / (_ZETA - _GAMMA)))
        optimizer = torch.optim.Adam([v], lr=1e-2)
        nearest = scale * torch.clamp(torch.round(w / scale), qp.qmin, qp.qmax)
        norm = max(float(normal.excess(normal.rows(module, nearest - w, mask))), 1e-30)
        warmup = int(0.2 * self.rounding_iters)
        for step in range(self.rounding_iters):
            h = _rectified(v)
            soft = scale * torch.clamp(base + h, qp.qmin, qp.qmax)
            loss = normal.excess(normal.rows(module, soft - w, mask)) / norm
            if step >= warmup:  # anneal the regulariser from soft to hard choices
                beta = 20 - 18 * (step - warmup) / max(1, self.rounding_iters - warmup)
                loss = loss + _ROUNDING_WEIGHT * (1 - (2 * h - 1).abs().pow(beta)).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            learned = scale * torch.clamp(base + (_rectified(v) >= 0.5).to(w.dtype), qp.qmin, qp.qmax)
            before = float(normal.error(normal.rows(module, nearest - w, mask)))
            after = float(normal.error(normal.rows(module, learned - w, mask)))
            if after < before:
                module.weight.data = learned if mask is None else learned * mask
        unit.report["adaround_gain"] = 1.0 - min(after, before) / before if before > 0 else 0.0

    # -- bias -----------------------------------------------------------------------------------------

    def _correct_bias(self, unit: _Unit, inputs: List[Tensor], targets: List[Tensor]) -> None:
        dim = _output_channel_dim(unit.module)
        total, count = 0.0, 0
        for x, target in zip(inputs, targets):
            flat = _per_channel(unit.module(x) - target, dim)
            total = total + flat.sum(dim=1)
            count += flat.shape[1]
        shift = total / max(1, count)
        unit.module.bias.data -= shift.to(unit.module.bias.dtype)
        unit.report["bias_shift"] = float(shift.abs().max())


class _Normal:
    """A layer's output error as a quadratic form of its weight error, from sampled output positions.

    With ``P`` the rows of (quantized) input a weight row multiplies (convolution patches) and
    ``r = P w + b - y`` the residual of the float weights against the float model's output ``y``,
    a weight error ``D`` (one row per output channel) gives, per channel ``o``::

        error_o = ||r_o + P D_o||^2 / n = e_o + 2 D_o . g_o + D_o^T H D_o

    with ``H = P^T P / n`` and ``g = P^T r / n``; with bias correction everything is centred
    (each channel's mean error is what the bias removes).
    """

    def __init__(self, module, hessian: Tensor, gradient: Tensor, residual: Tensor, mean_rows: Tensor, mean_residual: Tensor):
        self.module, self.weight = module, module.weight.detach().clone()
        self.hessian, self.gradient, self.residual = hessian, gradient, residual
        self.mean_rows, self.mean_residual = mean_rows, mean_residual

    @classmethod
    def build(cls, module, inputs, targets, centred, generator) -> Optional["_Normal"]:
        if _patch_form(module) is None:
            return None
        out_dim = _output_channel_dim(module)
        positions = sum(t.numel() // t.shape[out_dim] for t in targets)
        keep = min(1.0, _NORMAL_ROWS / max(1, positions))
        rows, outs = [], []
        weight_rows = _weight_rows(module, module.weight.detach())
        bias = module.bias.detach() if getattr(module, "bias", None) is not None else None
        for x, y in zip(inputs, targets):
            xq = _plain(module.input_quant(x))
            for p, t in _patches(module, xq, y):
                if keep < 1.0:
                    index = torch.randperm(p.shape[0], generator=generator)[: max(1, round(keep * p.shape[0]))]
                    p, t = p[index.to(p.device)], t[index.to(p.device)]
                rows.append(p)
                outs.append(t)
        p, y = torch.cat(rows), torch.cat(outs)
        r = p @ weight_rows.T - y
        if bias is not None:
            r += bias
        n = p.shape[0]
        if centred and bias is not None:
            mean_rows, mean_residual = p.mean(0), r.mean(0)
            p, r = p - mean_rows, r - mean_residual
        else:
            mean_rows, mean_residual = p.new_zeros(p.shape[1]), r.new_zeros(r.shape[1])
        hessian = (p.T @ p).div_(n)
        gradient = (p.T @ r).div_(n)  # (D, O)
        return cls(module, hessian, gradient, r.pow(2).mean(0), mean_rows, mean_residual)

    @staticmethod
    def rows(module: nn.Module, delta: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        return _weight_rows(module, delta if mask is None else delta * mask)

    def delta(self, unit: _Unit) -> Tensor:
        """Rows of the layer's weight error (its quantized weight against the float one)."""
        module = unit.module
        quantized = unit.weight.fake_quantize(module.weight.detach())
        return self.rows(module, quantized - self.weight, getattr(module, "mask", None))

    def gptq(self, unit: _Unit) -> None:
        """Round the weights one input after the other, each rounding error moved onto the inputs
        not yet rounded so that the output error stays smallest; inputs in decreasing order of
        energy. The weights become the rounded values (on the quantizer's grid)."""
        module, quant = unit.module, unit.weight
        qp = quant.qparams()
        rows = _weight_rows(module, self.weight).double()
        scale = _weight_rows(module, _weight_scale(quant, self.weight).expand_as(self.weight)).double()
        zero = _weight_rows(module, _weight_zero_point(quant, self.weight).expand_as(self.weight)).double()
        hessian = self.hessian.double().clone()
        fixed = torch.diag(hessian) <= 0
        mask = getattr(module, "mask", None)
        if mask is not None:
            mask_rows = _weight_rows(module, mask.expand_as(self.weight))
            if not bool((mask_rows == mask_rows[:1]).all()):
                return  # a mask that differs between output channels: keep nearest rounding
            fixed |= mask_rows[0] == 0
        hessian[fixed, :] = 0
        hessian[:, fixed] = 0
        hessian[fixed, fixed] = 1
        order = torch.argsort(torch.diag(hessian), descending=True)
        damping = _DAMPING * float(torch.diag(hessian).mean())
        hessian[range(len(hessian)), range(len(hessian))] += damping
        target = rows
        h = hessian[order][:, order]
        try:
            upper = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
        except RuntimeError:  # not positive definite even after damping: keep nearest rounding
            return
        work = target[:, order].clone()
        s, z = scale[:, order], zero[:, order]
        out = torch.empty_like(work)
        for i in range(work.shape[1]):
            q = (torch.clamp(torch.round(work[:, i] / s[:, i] + z[:, i]), qp.qmin, qp.qmax) - z[:, i]) * s[:, i]
            out[:, i] = q
            work[:, i + 1 :] -= ((work[:, i] - q) / upper[i, i]).unsqueeze(1) * upper[i, i + 1 :].unsqueeze(0)
        rounded = torch.empty_like(out)
        rounded[:, order] = out
        before = float(self.error(self.delta(unit)))
        original = module.weight.data.clone()
        module.weight.data = _weight_from_rows(module, rounded.to(self.weight.dtype), self.weight.shape)
        after = float(self.error(self.delta(unit)))
        if not after <= before:
            module.weight.data = original
        unit.report["gptq_gain"] = 1.0 - min(after, before) / before if before > 0 else 0.0

    def channel_errors(self, delta: Tensor) -> Tensor:
        """``(O,)`` output error per channel (mean over positions) for weight errors ``delta``."""
        return self.residual + 2 * (delta * self.gradient.T).sum(1) + ((delta @ self.hessian) * delta).sum(1)

    def error(self, delta: Tensor) -> Tensor:
        """Mean output error over channels and positions."""
        return self.channel_errors(delta).mean()

    def excess(self, delta: Tensor) -> Tensor:
        """What ``delta`` adds to the error of the float weights (on the same quantized input)."""
        return (2 * (delta * self.gradient.T).sum(1) + ((delta @ self.hessian) * delta).sum(1)).mean()

    def bias_shift(self, delta: Tensor) -> Tensor:
        """What to add to the bias: minus each channel's mean error."""
        return -(self.mean_residual + delta @ self.mean_rows)


# -- helpers ------------------------------------------------------------------------------------------


def _snap(ranges: Tensor, offsets: Tensor, qmax: int) -> Tuple[Tensor, Tensor]:
    """``offsets`` moved to the nearest multiple of the step ``range / qmax``: an integer zero point."""
    step = ranges.clamp_min(1e-8) / qmax
    return ranges, -torch.round(-offsets / step) * step


def _grid_error(x: Tensor, ranges: Tensor, offsets: Tensor, qmin: int, qmax: int) -> Tensor:
    """Per-channel mean squared error of quantizing ``x`` (``(C, M)``) on the grids ``(range, offset)``."""
    step = ranges.clamp_min(1e-8).unsqueeze(1) / qmax
    zero_point = torch.round(-offsets.unsqueeze(1) / step)
    q = torch.clamp(torch.round(x / step + zero_point), qmin, qmax)
    return ((q - zero_point) * step - x).pow_(2).mean(dim=1)


def _lattice(values: Tensor) -> Optional[float]:
    """The coarsest of :data:`_LATTICES` that every value lies on (``None`` if none, or all zero)."""
    if not bool(values.abs().gt(0).any()):
        return None
    for step in _LATTICES:
        scaled = values.double() / step
        if bool(((scaled - scaled.round()).abs() <= 1e-4 * scaled.abs().clamp_min(1.0)).all()):
            return step
    return None


def _grid_from_ends(quant: ContentAwareIntQuant, lo: Tensor, hi: Tensor, qmin: int, qmax: int) -> Tuple[Tensor, Tensor]:
    """(range, offset) of the grid from ``lo`` to ``hi``, its zero point moved to an integer."""
    if quant.signed:
        ranges, offsets = (hi - lo) / 2, (hi + lo) / 2
    else:
        ranges, offsets = hi - lo, lo
    return _snap(ranges.clamp_min(1e-8), offsets, qmax)


def _grid_ends(quant: ContentAwareIntQuant, ranges: Tensor, offsets: Tensor, qmin: int, qmax: int) -> Tuple[Tensor, Tensor, Tensor]:
    """``(lowest, highest, step)`` of the grids ``(range, offset)``, per channel."""
    step = ranges.clamp_min(1e-8) / qmax
    zero_point = torch.round(-offsets / step)
    return (qmin - zero_point) * step, (qmax - zero_point) * step, step


class _Histogram:
    """Per-channel histograms of values (counts, sums, sums of squares per bin) that score grids:
    the squared clipping error outside ``[lo, hi]``; inside, the error of rounding each bin to the
    grid point nearest its centre when bins are much finer than the step, else ``step^2 / 12``."""

    def __init__(self, flat: Tensor, low: Tensor, high: Tensor, bins: int = _BINS) -> None:
        channels = flat.shape[0]
        span = (high - low).clamp_min(1e-12)
        index = ((flat - low[:, None]) / span[:, None] * bins).floor_().clamp_(0, bins - 1).long()
        index += torch.arange(channels, device=flat.device)[:, None] * bins
        index = index.flatten()
        values = flat.flatten().double()
        size = channels * bins

        def count(weights):
            return torch.bincount(index, weights=weights, minlength=size).view(channels, bins).double()

        self.n, self.s1, self.s2 = count(None), count(values), count(values * values)
        self.centres = low[:, None].double() + span[:, None].double() * (torch.arange(bins, device=flat.device) + 0.5) / bins
        self.width = span[:, None].double() / bins
        self.total = float(flat.shape[1])

    def error(self, lo: Tensor, hi: Tensor, step: Tensor) -> Tensor:
        """``(C,)`` mean squared error of the grids ``[lo, hi]`` with steps ``step``."""
        lo, hi, step = lo.double()[:, None], hi.double()[:, None], step.double()[:, None]
        below = self.s2 - 2 * lo * self.s1 + lo * lo * self.n
        above = self.s2 - 2 * hi * self.s1 + hi * hi * self.n
        nearest = lo + step * torch.round((self.centres - lo) / step)
        fine = self.s2 - 2 * nearest * self.s1 + nearest * nearest * self.n
        inside = torch.where(self.width <= step / 4, fine, self.n * step * step / 12)
        error = torch.where(self.centres < lo, below, torch.where(self.centres > hi, above, inside))
        return (error.sum(1) / self.total).float()


def _sq(a: Tensor, b: Tensor) -> float:
    return float((a - b).pow(2).sum())


def _channel_error(out: Tensor, target: Tensor, dim: int, centred: bool) -> Tensor:
    """Per-output-channel squared error (its mean removed when a bias will correct it)."""
    diff = _per_channel(out - target, dim)
    if centred:
        diff = diff - diff.mean(dim=1, keepdim=True)
    return diff.pow(2).sum(dim=1)


def _patch_form(module: nn.Module) -> Optional[str]:
    """How the layer's output is rows of its input times weight rows (``None``: no such form here)."""
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, nn.ConvTranspose2d):
        ok = module.groups == 1 and tuple(module.dilation) == (1, 1) and module.padding_mode == "zeros"
        ok = ok and all(k - 1 - p >= 0 for k, p in zip(module.kernel_size, module.padding))
        return "transposed" if ok else None
    if isinstance(module, nn.Conv2d):
        return "conv" if module.groups == 1 and not isinstance(module.padding, str) else None
    return None


def _weight_rows(module: nn.Module, weight: Tensor) -> Tensor:
    """``(O, D)``: each output channel's weights in the order of :func:`_patches`' columns."""
    if _patch_form(module) == "transposed":  # (C, O, kh, kw) -> the equivalent convolution's (O, C, kh, kw)
        weight = weight.flip(2, 3).transpose(0, 1)
    return weight.reshape(weight.shape[0], -1)


def _weight_from_rows(module: nn.Module, rows: Tensor, shape: torch.Size) -> Tensor:
    """The inverse of :func:`_weight_rows`."""
    if _patch_form(module) == "transposed":
        return rows.reshape(shape[1], shape[0], *shape[2:]).transpose(0, 1).flip(2, 3).contiguous()
    return rows.reshape(shape).contiguous()


def _patches(module: nn.Module, x: Tensor, y: Tensor) -> Iterator[Tuple[Tensor, Tensor]]:
    """``(rows, outputs)`` of ``module`` on input ``x`` with output ``y``, one sample at a time:
    ``outputs = rows @ weight_rows.T + bias``."""
    form = _patch_form(module)
    if form == "linear":
        yield x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])
        return
    for n in range(x.shape[0]):
        sample = x[n : n + 1]
        if form == "transposed":
            (sh, sw), (kh, kw), (ph, pw) = module.stride, module.kernel_size, module.padding
            oh, ow = module.output_padding
            up = sample.new_zeros(1, sample.shape[1], (sample.shape[2] - 1) * sh + 1, (sample.shape[3] - 1) * sw + 1)
            up[..., ::sh, ::sw] = sample
            up = nn.functional.pad(up, (kw - 1 - pw, kw - 1 - pw + ow, kh - 1 - ph, kh - 1 - ph + oh))
            cols = nn.functional.unfold(up, module.kernel_size)
        else:
            padding = module.padding
            if module.padding_mode != "zeros":
                sample = nn.functional.pad(sample, module._reversed_padding_repeated_twice, mode=module.padding_mode)
                padding = 0
            cols = nn.functional.unfold(sample, module.kernel_size, module.dilation, padding, module.stride)
        yield cols[0].T, y[n].reshape(y.shape[1], -1).T


def _rectified(v: Tensor) -> Tensor:
    """AdaRound's rectified sigmoid, in [0, 1] and reaching both ends."""
    return (torch.sigmoid(v) * (_ZETA - _GAMMA) + _GAMMA).clamp(0, 1)


def _weight_scale(quant: ContentAwareIntQuant, weight: Tensor) -> Tensor:
    """The weight quantizer's step, shaped to broadcast over ``weight``."""
    return _weight_view(quant, quant.qparams().scale, weight)


def _weight_zero_point(quant: ContentAwareIntQuant, weight: Tensor) -> Tensor:
    return _weight_view(quant, quant.qparams().zero_point, weight)


def _weight_view(quant: ContentAwareIntQuant, value: Tensor, weight: Tensor) -> Tensor:
    if value.numel() == 1:
        return value.reshape([1] * weight.dim())
    return value.reshape([-1 if d == quant.channel_dim % weight.dim() else 1 for d in range(weight.dim())])


@contextlib.contextmanager
def _disabled(module: nn.Module) -> Iterator[None]:
    """``module``'s weight and input quantizers off inside the block."""
    proxies = [p for p in (getattr(module, "weight_quant", None), getattr(module, "input_quant", None)) if p is not None]
    previous = [p.disable_quant for p in proxies]
    for proxy in proxies:
        proxy.disable_quant = True
    try:
        yield
    finally:
        for proxy, state in zip(proxies, previous):
            proxy.disable_quant = state


@contextlib.contextmanager
def _weights_float(module: nn.Module) -> Iterator[None]:
    proxy = module.weight_quant
    previous = proxy.disable_quant
    proxy.disable_quant = True
    try:
        yield
    finally:
        proxy.disable_quant = previous


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
