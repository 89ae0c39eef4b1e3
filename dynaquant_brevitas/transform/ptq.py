"""Post-training quantization in one call: ``ptq(model, images)``.

``dynaquantize`` plus percentile calibration sets every range from statistics of its own tensor;
``ptq`` then visits the quantized layers in the order the model runs them and, for each one,
chooses the ranges that minimise the error of the layer's *output*, on calibration crops:

1. **activation ranges** (per channel): a grid of clipping ranges (and, with offsets, of lower
   and upper ends) scored by each channel's quantization error, then one common factor scored by
   the layer's output error. Zero points are integers, so 0 is always on the grid; inputs that
   are integers (the latents CompressAI's synthesis and hyper-synthesis transforms receive) get
   a step of 1 whenever it fits;
2. **weight ranges** (per output channel): a grid of clipping factors of ``max |w|``, scored by
   each output channel's error (channels are independent, so one layer run scores every channel);
3. **bias correction**: each output channel's mean error over the crops is removed from its bias;
4. optionally **rounding** (AdaRound-style): each weight learns whether it rounds up or down, so
   that the layer's output error is smallest; the result is written back as weights on the grid.

A layer's input is taken from the model with every earlier layer already quantized, and its
target is the float model's output, so a layer also corrects what the layers before it got wrong.

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
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..quant import ContentAwareIntQuant, calibrate
from .config import DynaQuantConfig
from .dynaquantize import DynaQuantState, dynaquantize

__all__ = ["PTQ_CONFIG", "calibration_crops", "ptq"]

#: The default configuration: static 8 bits, no offsets on weights; see :func:`ptq`.
PTQ_CONFIG = DynaQuantConfig(candidate_bits=(8,), learn_offset=False, integer_zero_point=True)

#: clipping factors of the activation range tried per channel (the full range first)
_ACT_FACTORS = tuple(0.88 ** k for k in range(28))
#: clipping factors of each end of the activation range when offsets are on
_END_FACTORS = tuple(0.8 ** k for k in range(12))
#: common factors of the chosen activation ranges, scored by the layer's output error
_ACT_COMMON = (0.8, 0.9, 1.0, 1.12, 1.25)
#: clipping factors of max |w| tried per output channel
_WEIGHT_FACTORS = tuple(1.0 - 0.025 * k for k in range(21))
#: samples per channel the per-channel activation search reads
_CHANNEL_SAMPLES = 1 << 14
#: output positions per channel the output-error searches read
_SEARCH_POSITIONS = 1 << 14
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
    rounding: bool = False,
    rounding_iters: int = 300,
    batch_size: int = 8,
    seed: int = 0,
    progress: bool = True,
) -> nn.Module:
    """Quantize a float CompressAI model after training, from a few images (see the module docs).

    Args:
        model: a float CompressAI model; it is quantized in place (as by ``dynaquantize``) and
            returned in eval mode.
        images: RGB images in [0, 1], each ``(3, H, W)`` or ``(N, 3, H, W)`` (any iterable:
            a list, a generator reading files).
        config: a static configuration (one candidate width); :data:`PTQ_CONFIG` by default.
        crops: random crops drawn from ``images`` (seeded) to calibrate on.
        crop_size: their side in pixels, a multiple of 64; smaller images are padded by reflection.
        search: choose activation and weight ranges by the layers' output error (``False``: the
            percentile and ``max |w|`` ranges of calibration).
        bias_correction: remove each output channel's mean error from its bias.
        rounding: learn each weight's rounding (AdaRound-style), ``rounding_iters`` steps a layer.
        batch_size: crops per forward pass.
        seed: seed of the crops and of every random choice.
        progress: print a time estimate and show a progress bar over the layers.

    Returns:
        ``model``, dynaquantized and calibrated, ready for ``update()``, ``compress`` and
        :func:`~dynaquant_brevitas.io.save_model`.

    Raises:
        ValueError: for an already quantized model, a dynamic configuration, no images, or
            images of the wrong shape.
    """
    config = PTQ_CONFIG if config is None else config
    _check_float(model)
    if config.dynamic:
        raise ValueError(
            f"ptq needs a static configuration (one candidate width), got the candidates "
            f"{list(getattr(config, 'pairs', config.candidate_bits))}: a dynamic model needs a trained "
            "bit-width selector (dynaquant train)"
        )
    if crop_size % 64 or crop_size <= 0:
        raise ValueError(f"crop_size must be a positive multiple of 64, got {crop_size}")
    if crops < 1 or batch_size < 1 or rounding_iters < 0:
        raise ValueError("crops and batch_size must be >= 1 and rounding_iters >= 0")
    generator = torch.Generator().manual_seed(seed)
    samples = calibration_crops(images, crops, crop_size, generator)
    device = next(model.parameters()).device
    batches = [torch.cat(samples[i : i + batch_size]).to(device) for i in range(0, len(samples), batch_size)]
    reference = copy.deepcopy(model).eval()
    was_training = model.training
    dynaquantize(model, config)
    start = time.perf_counter()
    calibrate(model, batches)
    forward_seconds = time.perf_counter() - start
    model.eval()
    units = _units(model, batches[0][:1])
    if search or bias_correction or rounding:
        run = _Run(model, reference, units, batches, search, bias_correction, rounding, rounding_iters, generator)
        run.all(forward_seconds, progress)
    model.dynaquant.ptq = [unit.report for unit in units]
    return model.train(was_training) if was_training else model


def calibration_crops(
    images: Iterable[Tensor], count: int, size: int, generator: Optional[torch.Generator] = None
) -> List[Tensor]:
    """``count`` random ``(1, 3, size, size)`` crops of ``images`` (each ``(3, H, W)`` or
    ``(N, 3, H, W)`` in [0, 1]), the image and the position drawn with ``generator``.

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
        if not batch.is_floating_point() or not bool(torch.isfinite(batch).all()):
            raise ValueError(f"image {index}: expected finite floating-point values in [0, 1]")
        pool.extend(batch.detach().float().split(1))
    if not pool:
        raise ValueError("ptq got no images to calibrate on")
    out = []
    for _ in range(count):
        image = _padded(pool[int(torch.randint(len(pool), (1,), generator=generator))], size)
        height, width = image.shape[-2:]
        top = int(torch.randint(height - size + 1, (1,), generator=generator))
        left = int(torch.randint(width - size + 1, (1,), generator=generator))
        out.append(image[..., top : top + size, left : left + size].contiguous())
    return out


def _padded(image: Tensor, size: int) -> Tensor:
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
            for i, unit in enumerate(pending):
                started = time.perf_counter()
                disabled.pop(unit.name).close()
                self.layer(unit, done / total_macs)
                done += unit.macs * unit.calls
                if i == 0 and progress:
                    estimate = self._estimate(time.perf_counter() - started, forward_seconds)
                    print(
                        f"ptq: {len(pending)} layers on {sum(len(b) for b in self.batches)} crops, "
                        f"about {_duration(estimate)} (first layer {_duration(time.perf_counter() - started)})",
                        file=sys.stderr,
                        flush=True,
                    )
                    bar = stack.enter_context(tqdm(total=len(pending), initial=1, desc="ptq", unit="layer"))
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
        if self.search:
            self._search_weight(unit, inputs, targets)
        if self.rounding:
            with torch.enable_grad():
                self._learn_rounding(unit, inputs, targets)
        if self.bias_correction and getattr(unit.module, "bias", None) is not None:
            self._correct_bias(unit, inputs, targets)
        unit.report["mse"] = _mse(unit.module, inputs, targets)

    # -- data -------------------------------------------------------------------------------------

    def _capture(self, model: nn.Module, name: str, what: str) -> List[Tensor]:
        """The inputs (or outputs) of layer ``name`` over the calibration batches: one tensor per
        call, each forward pass stopped after the layer's last call."""
        module = dict(model.named_modules())[name]
        unit = next(u for u in self.units if u.name == name)
        seen: List[Tensor] = []
        calls = [0]

        def keep(value: Any) -> None:
            seen.append(_plain(value).detach())
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

    def _subset(self, tensors: List[Tensor], positions_per_sample: int) -> List[int]:
        """Indices of the captured tensors the output-error searches read (about
        ``_SEARCH_POSITIONS`` output positions per channel, spread over the batches)."""
        per_tensor = max(1, positions_per_sample)
        wanted = max(1, _SEARCH_POSITIONS // per_tensor)
        step = max(1, len(tensors) // wanted)
        return list(range(0, len(tensors), step))[:wanted]

    # -- activations --------------------------------------------------------------------------------

    def _search_activation(self, unit: _Unit, inputs: List[Tensor]) -> None:
        quant = unit.act
        qmin, qmax = quant.levels(int(quant.static_bit_width))
        dim = quant.channel_dim if quant.per_channel else None
        flat = torch.cat([(_per_channel(x, dim) if dim is not None else x.reshape(1, -1)) for x in inputs], dim=1)
        low, high = flat.amin(dim=1), flat.amax(dim=1)
        sample = flat
        if flat.shape[1] > _CHANNEL_SAMPLES:
            index = torch.randperm(flat.shape[1], generator=self.generator)[:_CHANNEL_SAMPLES].to(flat.device)
            sample = flat[:, index]
        integral = bool((sample == sample.round()).all())
        candidates = self._act_candidates(quant, low, high, integral, qmax)
        errors = torch.stack([_grid_error(sample, r, o, qmin, qmax) for r, o in candidates])  # (K, C)
        best = errors.argmin(dim=0)
        ranges = torch.stack([r for r, _ in candidates])[best, torch.arange(best.numel())]
        offsets = torch.stack([o for _, o in candidates])[best, torch.arange(best.numel())]
        ranges = ranges.clamp_min(1e-8)
        unit.report["act_integral"] = integral
        if integral:  # the per-channel errors were exact: keep the steps (1, 2, ... when chosen)
            self._set_act(quant, ranges, offsets, qmax)
            return
        # one common factor, scored by the output error with float weights
        subset = self._subset(inputs, 1)
        with _weights_float(unit.module):
            reference = [self._float_output(unit, inputs[i]) for i in subset]
            scores = []
            for factor in _ACT_COMMON:
                self._set_act(quant, ranges * factor, offsets, qmax)
                scores.append(sum(_sq(unit.module(inputs[i]), ref) for i, ref in zip(subset, reference)))
        factor = _ACT_COMMON[min(range(len(scores)), key=scores.__getitem__)]
        self._set_act(quant, ranges * factor, offsets, qmax)
        unit.report["act_factor"] = factor

    def _act_candidates(self, quant, low, high, integral, qmax) -> List[Tuple[Tensor, Tensor]]:
        """(range, offset) pairs per channel: shrunk symmetric ranges (or, with offsets, shrunk
        lower and upper ends), and steps of 1, 2, ... for integer inputs."""
        zero = torch.zeros_like(low)
        out: List[Tuple[Tensor, Tensor]] = []
        if quant.learn_offset:
            for a in _END_FACTORS:
                for b in _END_FACTORS:
                    lo, hi = torch.minimum(low * a, zero), torch.maximum(high * b, zero)
                    lo = torch.where(low > 0, low * a, lo)
                    span = ((hi - lo) / 2).clamp_min(1e-8)
                    out.append(_snap(span, (hi + lo) / 2, qmax))
        else:
            peak = torch.maximum(low.abs(), high.abs())
            out.extend((peak * a, zero) for a in _ACT_FACTORS)
        if integral:
            for step in (1.0, 2.0, 3.0, 4.0):
                out.append((torch.full_like(low, step * qmax), zero))
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

    def _learn_rounding(self, unit: _Unit, inputs: List[Tensor], targets: List[Tensor]) -> None:
        """AdaRound: ``w = s * clamp(floor(w / s) + h(v), qmin, qmax)`` with a learned ``h(v)`` in
        [0, 1] pushed towards 0 or 1, minimising the layer's output error; the weights are then
        replaced by their rounded values on the grid (which the quantizer leaves unchanged)."""
        module, quant = unit.module, unit.weight
        qp = quant.qparams()
        scale = _weight_scale(quant, module.weight)
        w = module.weight.detach()
        base = torch.floor(w / scale)
        rest = (w / scale - base).clamp(0.01, 0.99)
        v = nn.Parameter(torch.logit((rest - _GAMMA) / (_ZETA - _GAMMA)))
        optimizer = torch.optim.Adam([v], lr=1e-2)
        order = torch.randperm(len(inputs), generator=self.generator).tolist()
        warmup = int(0.2 * self.rounding_iters)
        for step in range(self.rounding_iters):
            h = _rectified(v)
            i = order[step % len(order)]
            loss = (_functional(module, inputs[i], scale * torch.clamp(base + h, qp.qmin, qp.qmax)) - targets[i]).pow(2).mean()
            if step >= warmup:  # anneal the regulariser from soft to hard choices
                beta = 20 - 18 * (step - warmup) / max(1, self.rounding_iters - warmup)
                loss = loss + _ROUNDING_WEIGHT * loss.detach() * (1 - (2 * h - 1).abs().pow(beta)).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            nearest = torch.clamp(torch.round(w / scale), qp.qmin, qp.qmax)
            learned = torch.clamp(base + (_rectified(v) >= 0.5).to(w.dtype), qp.qmin, qp.qmax)
            module.weight.data = scale * learned
        unit.report["rounding_flipped"] = float((learned != nearest).float().mean())

    # -- bias -----------------------------------------------------------------------------------------

    def _correct_bias(self, unit: _Unit, inputs: List[Tensor], targets: List[Tensor]) -> None:
        dim = _output_channel_dim(unit.module)
        total, count = 0.0, 0
        for x, target in zip(inputs, targets):
            diff = unit.module(x) - target
            flat = _per_channel(diff, dim)
            total = total + flat.sum(dim=1)
            count += flat.shape[1]
        shift = total / max(1, count)
        unit.module.bias.data -= shift.to(unit.module.bias.dtype)
        unit.report["bias_shift"] = float(shift.abs().max())


# -- helpers ------------------------------------------------------------------------------------------


def _snap(ranges: Tensor, offsets: Tensor, qmax: int) -> Tuple[Tensor, Tensor]:
    """``offsets`` moved to the nearest multiple of the step ``range / qmax``: an integer zero point."""
    step = ranges.clamp_min(1e-8) / qmax
    return ranges, -torch.round(-offsets / step) * step


def _grid_error(x: Tensor, ranges: Tensor, offsets: Tensor, qmin: int, qmax: int) -> Tensor:
    """Per-channel squared error of quantizing ``x`` (``(C, M)``) on the grids ``(range, offset)``."""
    step = ranges.clamp_min(1e-8).unsqueeze(1) / qmax
    zero_point = torch.round(-offsets.unsqueeze(1) / step)
    q = torch.clamp(torch.round(x / step + zero_point), qmin, qmax)
    return ((q - zero_point) * step - x).pow_(2).sum(dim=1)


def _sq(a: Tensor, b: Tensor) -> float:
    return float((a - b).pow(2).sum())


def _channel_error(out: Tensor, target: Tensor, dim: int, centred: bool) -> Tensor:
    """Per-output-channel squared error (its mean removed when a bias will correct it)."""
    diff = _per_channel(out - target, dim)
    if centred:
        diff = diff - diff.mean(dim=1, keepdim=True)
    return diff.pow(2).sum(dim=1)


def _mse(module: nn.Module, inputs: List[Tensor], targets: List[Tensor]) -> float:
    total = sum(_sq(module(x), t) for x, t in zip(inputs, targets))
    return total / max(1, sum(t.numel() for t in targets))


def _rectified(v: Tensor) -> Tensor:
    """AdaRound's rectified sigmoid, in [0, 1] and reaching both ends."""
    return (torch.sigmoid(v) * (_ZETA - _GAMMA) + _GAMMA).clamp(0, 1)


def _weight_scale(quant: ContentAwareIntQuant, weight: Tensor) -> Tensor:
    qp = quant.qparams()
    return qp.scale.reshape([-1 if d == quant.channel_dim % weight.dim() else 1 for d in range(weight.dim())])


def _functional(module: nn.Module, x: Tensor, weight: Tensor) -> Tensor:
    """``module``'s output on ``x`` with ``weight`` in place of its own (its input quantizer kept)."""
    x = _plain(module.input_quant(x))
    if isinstance(module, nn.ConvTranspose2d):
        module._output_size = None
    return module.inner_forward_impl(x, weight, module.bias)


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
