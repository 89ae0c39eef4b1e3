"""The content-aware integer quantizer behind every DynaQuant Brevitas preset.

Parametrisation (shared by all bit widths, so the bit width can change at run time):

* ``range_c`` > 0, learned per channel: the real-valued span the integer grid covers. For a signed
  quantizer the grid is symmetric and narrow, ``[-(2^(b-1)-1), 2^(b-1)-1]``, and covers
  ``offset_c +- range_c``; the step is ``range_c / (2^(b-1) - 1)``. For an unsigned quantizer the
  grid is ``[0, 2^b - 1]`` and covers ``[offset_c, offset_c + range_c]``; the step is
  ``range_c / (2^b - 1)``.
* ``offset_c``, learned per channel (optional): the real value that integer 0 stands for.

For bit width ``b`` this gives Brevitas's affine form with a float zero point::

    s = range / qmax(b)        z = -offset / s
    q = clamp(round(x / s + z), qmin(b), qmax(b))        x_hat = s * (q - z)

Changing ``b`` changes only the step, never the learned range and offset, so no recalibration is
needed. Gradients reaching ``range`` and ``offset`` are scaled as in LSQ by
``1 / sqrt(elements_per_channel * qmax(b))``.

Per-sample bit widths: when a :class:`BitChoice` is set, sample ``n`` is quantized with the
candidate selected for it; the selection weights ``w`` are one-hot in the forward pass, so values
are exact, and carry the straight-through Gumbel-softmax gradient backward:

* weights: ``W_n = sum_k w[n, k] * Q_k(W)``, one quantized weight per sample (shape
  ``(N, *weight.shape)``), which the DynaQuant layers run as one grouped convolution;
* activations: a single quantization pass at each sample's chosen step and bounds; backward gives
  ``w`` the gradient of the mixture ``sum_k w[n, k] * Q_k(x)`` (each candidate's output recomputed
  there, not stored), so the selector weighs every candidate's rounding and clipping.

Per-image ranges (activations, ``image_range``): the grid's range can follow each sample, computed
from the tensor itself (its largest distance from the offset per channel), so the decoder derives
the same step from what it decoded and no side information is sent. Such a grid has no static
scale, so :meth:`ContentAwareIntQuant.qparams` (packing, every exporter) refuses it.

The arithmetic is fused into one autograd node (:mod:`.fake_quant`) whenever the rounding module
provides ``grad_multiplier``; other rounding modules go through plain autograd.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
from brevitas.function.ops import tensor_clamp
from torch import Tensor, nn

from .fake_quant import fake_quantize, mixture_gradient
from .rounding import DGMRound, STERound

__all__ = ["ADAPTIVE_QUANTILE", "IMAGE_RANGES", "BitChoice", "ContentAwareIntQuant", "QParams", "QuantizerNotCalibratedError", "int_range"]

#: how an activation grid's range follows each image: ``"static"`` (the learned range),
#: ``"per-image"`` (each sample's own reach per channel, nothing clipped), ``"per-image-capped"``
#: (the smaller of the two: the learned range still clips, a quieter image gets a finer step) or
#: ``"per-image-adaptive"`` (capped, but widened to the image's :data:`ADAPTIVE_QUANTILE` distance
#: where more than that share of a channel lies beyond the learned range: isolated values clip,
#: content that leaves the range everywhere does not)
IMAGE_RANGES = ("static", "per-image", "per-image-capped", "per-image-adaptive")
ADAPTIVE_QUANTILE = 0.999

_MIN_RANGE = 1e-8
_DEAD_RANGE = 1e-6
_MAX_STATS_SAMPLES = 1 << 16


class QuantizerNotCalibratedError(RuntimeError):
    """An activation quantizer was asked to quantize before it saw any calibration data."""


def int_range(bits: int, signed: bool, narrow_range: bool) -> Tuple[int, int]:
    """Integer bounds ``(qmin, qmax)`` of a ``bits``-wide grid.

    Example:
        >>> int_range(8, signed=True, narrow_range=True), int_range(4, signed=False, narrow_range=False)
        ((-127, 127), (0, 15))
    """
    if signed:
        qmax = 2 ** (bits - 1) - 1
        return (-qmax if narrow_range else -qmax - 1), qmax
    return 0, 2**bits - 1 - (1 if narrow_range else 0)


@dataclass(frozen=True)
class QParams:
    """The integer grid of one bit width: ``q = clamp(round(x / scale + zero_point), qmin, qmax)``
    and ``x_hat = scale * (q - zero_point)``; ``scale`` and ``zero_point`` broadcast over the input.

    Example:
        >>> qp = QParams(torch.tensor(0.5), torch.tensor(0.0), -3, 3, bits=3, signed=True, narrow_range=True)
        >>> qp.quantize(torch.tensor([-1.2, 0.26, 3.0])).tolist(), qp.dequantize(torch.tensor([2])).tolist()
        ([-2, 1, 3], [1.0])
    """

    scale: Tensor
    zero_point: Tensor
    qmin: int
    qmax: int
    bits: int
    signed: bool
    narrow_range: bool

    def quantize(self, x: Tensor) -> Tensor:
        """Integers (int64) of ``x`` on this grid."""
        return torch.clamp(torch.round(x / self.scale + self.zero_point), self.qmin, self.qmax).to(torch.int64)

    def dequantize(self, q: Tensor) -> Tensor:
        return self.scale * (q.to(self.scale.dtype) - self.zero_point)


@dataclass
class BitChoice:
    """Which candidate bit width each sample of a batch uses, for one layer.

    Attributes:
        candidates: the candidate bit widths, e.g. ``(4, 6, 8)``, or (weight, activation) pairs,
            e.g. ``((4, 8), (8, 8))``; :meth:`part` gives one quantizer's widths.
        weights: ``(N, K)`` selection weights, one-hot in value; in training they carry the
            straight-through gradient of the Gumbel-softmax.
    """

    candidates: Tuple
    weights: Tensor

    def part(self, index: int) -> "BitChoice":
        """The choice as one quantizer sees it: entry ``index`` (0 weights, 1 activations) of each
        pair; the choice itself when the candidates are plain widths."""
        if not self.candidates or isinstance(self.candidates[0], int):
            return self
        return BitChoice(tuple(int(pair[index]) for pair in self.candidates), self.weights)

    @property
    def index(self) -> Tensor:
        """``(N,)`` index of the chosen candidate per sample."""
        return self.weights.argmax(dim=1)

    @property
    def bits(self) -> Tensor:
        """``(N,)`` chosen bit width per sample."""
        table = torch.tensor(self.candidates, device=self.weights.device, dtype=torch.float32)
        return table[self.index]

    def for_rows(self, rows: int) -> "BitChoice":
        """The choice for an input of ``rows`` rows, image-major (e.g. an attention block's windows):
        each image's weights repeated for its rows (their gradients add up in backward).

        Raises:
            RuntimeError: if ``rows`` is not a multiple of the number of images.
        """
        images = self.weights.shape[0]
        if rows == images:
            return self
        if images <= 0 or rows % images:
            raise RuntimeError(
                f"an input of {rows} rows is not a multiple of the {images} images whose bit widths were "
                "chosen; leave the layer in float with DynaQuantConfig(float_modules=[...]) naming it"
            )
        return BitChoice(self.candidates, self.weights.repeat_interleave(rows // images, dim=0))

    def uniform_bits(self) -> Optional[int]:
        """The common bit width when every sample uses the same one and no gradient is needed."""
        if self.weights.requires_grad and torch.is_grad_enabled():
            return None
        index = self.index
        if bool((index == index[0]).all()):
            return self.candidates[int(index[0])]
        return None


class _GradScale(torch.autograd.Function):
    @staticmethod
    def forward(ctx, param: Tensor, factor: float) -> Tensor:
        ctx.factor = factor
        return param.view_as(param)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad * ctx.factor, None


def _scale_grad(param: Tensor, factor: float) -> Tensor:
    """Exactly ``param`` in value (so :meth:`ContentAwareIntQuant.qparams` gives the forward's
    numbers bit for bit); multiplies the gradient by ``factor`` (the LSQ trick)."""
    return _GradScale.apply(param, factor)


class _SelectionGradient(torch.autograd.Function):
    """Identity on the quantized activation; gives the selection weights ``w`` (``(N, K)``) the
    gradient of the output mixture ``sum_k w_nk Q_k(x)``, i.e. ``<grad_n, Q_k(x_n)>``.

    The candidates' outputs are recomputed in backward, so nothing extra is kept in memory, and the
    gradient compares what each candidate's rounding *and* clipping would do to the loss. (Routing
    the gradient through an interpolated step instead reads clipping as "a larger step is better"
    and drifts the selector towards the fewest bits.)
    """

    @staticmethod
    def forward(ctx, x_hat, w, x, grids):
        ctx.save_for_backward(x)
        ctx.grids = grids
        return x_hat.view_as(x_hat)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        grad_w = None
        if ctx.needs_input_grad[1]:
            grad_w = torch.stack([mixture_gradient(x, grad, *grid) for grid in ctx.grids], dim=1)
        return grad, grad_w, None, None


class ContentAwareIntQuant(nn.Module):
    """Brevitas ``tensor_quant`` with learned per-channel range and offset (see module docstring).

    Its ``forward(x)`` returns ``(x_hat, scale, zero_point, bit_width)`` as Brevitas expects.
    Channel-wise parameters are created on the first input (or from the tracked weight), so the
    same quantizer class serves any layer width; a state dict restores them with their shape.

    Activation quantizers initialise ``range`` and ``offset`` from percentiles of what they see
    during calibration (the union over batches): the first ``calibration_batches`` training
    batches, or an explicit :func:`dynaquant_brevitas.calibrate` pass. Weight quantizers
    initialise from the weight.
    """

    def __init__(
        self,
        float_to_int_impl: nn.Module,
        bit_width: int,
        signed: bool,
        narrow_range: bool,
        learn_range: bool,
        learn_offset: bool,
        per_channel: bool,
        is_weight: bool,
        stats_percentile: float,
        calibration_batches: int,
        channel_dim: int = 1,
        tracked_parameter_list: Optional[List[Tensor]] = None,
        integer_zero_point: bool = False,
        stats_headroom: float = 1.0,
        image_range: str = "static",
    ) -> None:
        super().__init__()
        _check_bits(bit_width)
        if not 50.0 < stats_percentile <= 100.0:
            raise ValueError(f"stats_percentile must be in (50, 100], got {stats_percentile}")
        if not 1.0 <= stats_headroom <= 16.0:
            raise ValueError(f"stats_headroom must be in [1, 16], got {stats_headroom}")
        if image_range not in IMAGE_RANGES:
            raise ValueError(f"image_range must be one of {IMAGE_RANGES}, got {image_range!r}")
        self.float_to_int_impl = float_to_int_impl
        self.signed = bool(signed)
        self.narrow_range = bool(narrow_range)
        self.learn_range = bool(learn_range)
        self.learn_offset = bool(learn_offset)
        self.per_channel = bool(per_channel)
        self.is_weight = bool(is_weight)
        self.stats_percentile = float(stats_percentile)
        self.stats_headroom = float(stats_headroom)
        self.image_range = "static" if is_weight else image_range
        self.calibration_batches = int(calibration_batches)
        self.channel_dim = int(channel_dim)
        self.integer_zero_point = bool(integer_zero_point)
        self.range = nn.Parameter(torch.empty(0), requires_grad=self.learn_range)
        self.offset = nn.Parameter(torch.empty(0), requires_grad=self.learn_offset)
        self.register_buffer("static_bit_width", torch.tensor(float(bit_width)))
        self.register_buffer("observed_batches", torch.tensor(0, dtype=torch.long))
        self.bit_choice: Optional[BitChoice] = None
        self.collecting = False
        self.input_ndim = 2 if channel_dim == -1 else 4
        if self.is_weight and tracked_parameter_list:
            self.input_ndim = tracked_parameter_list[0].dim()
            with torch.no_grad():
                self._observe(tracked_parameter_list[0].detach())

    # -- public knobs ---------------------------------------------------------------------------

    @property
    def initialized(self) -> bool:
        return self.range.numel() > 0

    def set_bit_width(self, bits: int) -> None:
        """Use ``bits`` from now on for every sample (clears any per-sample choice)."""
        _check_bits(bits)
        self.static_bit_width.fill_(float(bits))
        self.bit_choice = None

    def levels(self, bits: int) -> Tuple[int, int]:
        return int_range(bits, self.signed, self.narrow_range)

    def qparams(self, bits: Optional[int] = None) -> QParams:
        """Scale, zero point and integer bounds at ``bits`` (default: the static width), detached,
        shaped to broadcast over this quantizer's input; what packing and every exporter read."""
        if self.image_range != "static":
            raise ValueError(
                f"this activation quantizer sets its range per image (image_range={self.image_range!r}): it has "
                "no static scale to export or pack; quantize with activation_range='static' for that"
            )
        bits = int(self.static_bit_width) if bits is None else int(bits)
        qmin, qmax = self.levels(bits)
        with torch.no_grad():
            ndim = self.input_ndim
            scale = self._param_view(self.range, ndim).clamp_min(_MIN_RANGE) / qmax
            zero_point = self._zero_point(self._param_view(self.offset, ndim), scale)
        return QParams(scale, zero_point, qmin, qmax, bits, self.signed, self.narrow_range)

    def fake_quantize(self, x: Tensor, bits: Optional[int] = None) -> Tensor:
        """``x`` quantized and dequantized at ``bits`` (default: the static width), with gradients."""
        return self._quantize(x, int(self.static_bit_width) if bits is None else int(bits))[0]

    # -- statistics -----------------------------------------------------------------------------

    def _channels_first(self, x: Tensor) -> Tensor:
        """``x`` as ``(C, elements)`` (or ``(1, elements)`` when per tensor)."""
        if not self.per_channel:
            return x.reshape(1, -1)
        dim = self.channel_dim % x.dim()
        return x.transpose(0, dim).reshape(x.shape[dim], -1)

    def _covered(self, headroom: float = 1.0) -> Tuple[Tensor, Tensor]:
        """``(low, high)`` per channel: the real values the current grid spans (with the range
        divided by ``headroom``: what calibration observed before it added its headroom)."""
        range_ = self.range.detach() / headroom
        low = self.offset.detach() - (range_ if self.signed else 0)
        return low, self.offset.detach() + range_

    def _observe(self, x: Tensor) -> None:
        """Fold one batch into ``range`` and ``offset``: the grid spans the union of every batch's
        ``stats_percentile`` range (per channel), so no calibration batch is clipped, with its
        range widened by ``stats_headroom`` for the larger extremes of images calibration did not see."""
        flat = self._channels_first(x.detach().float())
        if flat.shape[1] > _MAX_STATS_SAMPLES:
            stride = -(-flat.shape[1] // _MAX_STATS_SAMPLES)
            flat = flat[:, ::stride]
        q = self.stats_percentile / 100.0
        if self.is_weight and not self.learn_offset:
            hi = torch.quantile(flat.abs(), q, dim=1) if q < 1 else flat.abs().amax(dim=1)
            lo = -hi
        elif q < 1:
            hi = torch.quantile(flat, q, dim=1)
            lo = torch.quantile(flat, 1.0 - q, dim=1)
        else:
            hi, lo = flat.amax(dim=1), flat.amin(dim=1)
        count = int(self.observed_batches)
        if self.initialized and count > 0 and self.range.shape == hi.shape:
            # the union with what earlier batches covered: a mean of per-batch extremes would clip
            # every batch that reaches further than the average one
            prev_lo, prev_hi = self._covered(self.stats_headroom)
            lo, hi = torch.minimum(lo, prev_lo.to(lo)), torch.maximum(hi, prev_hi.to(hi))
        if self.signed:
            new_offset = (hi + lo) / 2 if self.learn_offset else torch.zeros_like(hi)
            new_range = torch.maximum(hi - new_offset, new_offset - lo)
        else:
            new_offset = lo if self.learn_offset else torch.zeros_like(lo)
            new_range = hi - new_offset
        # A constant ("dead") channel: centre the grid on 0 and let it reach the constant, so the
        # zero point stays small (a collapsed range would make -offset/scale explode).
        dead = new_range <= _DEAD_RANGE * torch.maximum(hi.abs(), lo.abs()).clamp_min(1.0)
        new_offset = torch.where(dead, torch.zeros_like(new_offset), new_offset)
        new_range = torch.where(dead, torch.maximum(hi.abs(), lo.abs()), new_range).clamp_min(_MIN_RANGE)
        new_range = new_range * self.stats_headroom
        # Assign .data so that an optimizer built before the first batch keeps valid references.
        self.range.data = new_range.to(self.range.device if self.initialized else x.device)
        self.offset.data = new_offset.to(self.range.device)
        self.observed_batches += 1

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in ("range", "offset"):
            key = prefix + name
            if key in state_dict:
                # Take the saved shape but keep this module's device and dtype, as nn.Module does.
                param = getattr(self, name)
                param.data = param.new_empty(state_dict[key].shape)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # -- quantization -----------------------------------------------------------------------------

    def _param_view(self, param: Tensor, ndim: int) -> Tensor:
        """``param`` shaped to broadcast over an ``ndim``-dimensional input."""
        if not self.per_channel:
            return param.reshape(())
        shape = [1] * ndim
        shape[self.channel_dim % ndim] = -1
        return param.reshape(shape)

    def _grid(self, x: Tensor, qmax: int) -> Tuple[Tensor, Tensor]:
        """Per-channel ``(range, offset)`` shaped for ``x``, with LSQ gradient scaling."""
        per_channel_elements = max(1, x.numel() // max(1, self.range.numel()))
        factor = 1.0 / (per_channel_elements * qmax) ** 0.5
        range_ = _scale_grad(self.range, factor) if self.learn_range else self.range
        offset = _scale_grad(self.offset, factor) if self.learn_offset else self.offset
        ndim = x.dim() if x.dim() > 0 else self.input_ndim
        range_, offset = self._param_view(range_, ndim).clamp_min(_MIN_RANGE), self._param_view(offset, ndim)
        if self.image_range == "static" or x.dim() < 2 or x.numel() == 0:  # an empty batch has no reach
            return range_, offset
        reach = self._image_reach(x, offset)
        if self.image_range == "per-image":
            return reach, offset
        if self.image_range == "per-image-adaptive":
            range_ = torch.maximum(range_, self._image_reach(x, offset, ADAPTIVE_QUANTILE))
        return torch.minimum(range_, reach), offset

    def _image_reach(self, x: Tensor, offset: Tensor, quantile: float = 1.0) -> Tensor:
        """How far each sample's values reach from the grid's origin, per channel (detached, shaped
        to broadcast over ``x``): at ``quantile`` 1 the range that spans the sample without clipping,
        below 1 that quantile of the distances."""
        distance = x.detach() - offset.detach()
        distance = distance.abs() if self.signed else distance.clamp_min(0)
        channel = self.channel_dim % x.dim()
        n = x.shape[0]
        flat = distance.movedim(channel, 1).reshape(n, x.shape[channel], -1) if self.per_channel else distance.reshape(n, 1, -1)
        if quantile >= 1.0:
            reach = flat.amax(dim=-1)
        else:
            reach = flat.kthvalue(max(1, math.ceil(quantile * flat.shape[-1])), dim=-1).values
        shape = [n] + [1] * (x.dim() - 1)
        if self.per_channel:
            shape[channel] = x.shape[channel]
        return reach.reshape(shape).clamp_min(_MIN_RANGE)

    def _zero_point(self, offset: Tensor, scale: Tensor) -> Tensor:
        """``-offset / scale``; rounded (straight-through, so the offset keeps learning) when zero
        points are integers, which puts an exact 0 on the grid."""
        zero_point = -offset / scale
        if self.integer_zero_point:
            zero_point = torch.round(zero_point).detach() + (zero_point - zero_point.detach())  # exact in value
        return zero_point

    def _fake_quantize(self, x: Tensor, scale: Tensor, zero_point: Tensor, qmin, qmax) -> Tensor:
        impl = self.float_to_int_impl
        multiplier = getattr(impl, "grad_multiplier", None)
        qmin = torch.as_tensor(qmin, dtype=x.dtype, device=x.device)
        qmax = torch.as_tensor(qmax, dtype=x.dtype, device=x.device)
        if multiplier is None:  # a rounding module without a closed-form gradient: plain autograd
            # Brevitas's clamp: values rounding onto qmin/qmax are not clipped and keep a gradient
            return (tensor_clamp(impl(x / scale + zero_point), qmin, qmax) - zero_point) * scale
        if isinstance(impl, (DGMRound, STERound)):  # closed form known: fused kernels
            return fake_quantize(x, scale, zero_point, qmin, qmax, getattr(impl, "beta", 0.0))
        return fake_quantize(x, scale, zero_point, qmin, qmax, multiplier=multiplier)

    def _quantize(self, x: Tensor, bits: int) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        qmin, qmax = self.levels(bits)
        range_, offset = self._grid(x, qmax)
        scale = range_ / qmax
        zero_point = self._zero_point(offset, scale)
        x_hat = self._fake_quantize(x, scale, zero_point, qmin, qmax)
        return x_hat, scale, zero_point, torch.tensor(float(bits), device=x.device)

    def _quantize_per_sample(self, x: Tensor, choice: BitChoice) -> Tuple[Tensor, ...]:
        """Each sample at its own bit width; the selection weights get a gradient (see module doc)."""
        w = choice.weights.to(x.dtype)
        table = torch.tensor(choice.candidates, dtype=w.dtype, device=w.device)
        if self.is_weight:
            return self._mix_quantized_weights(x, choice, w, table)
        # Activations: one pass at each sample's chosen step and bounds (exact in value) ...
        view = (-1,) + (1,) * (x.dim() - 1)
        hard = w.detach()
        grids = [self._candidate_grid(x, bits) for bits in choice.candidates]
        scale, zero_point, qmin, qmax = (
            sum(hard[:, k].reshape(view) * grid[i] for k, grid in enumerate(grids)) for i in range(4)
        )
        x_hat = self._fake_quantize(x, scale, zero_point, qmin, qmax)
        # ... and the selection gradient of the output mixture sum_k w_nk Q_k(x) in backward
        x_hat = _SelectionGradient.apply(x_hat, w, x.detach(), [[t.detach() for t in g] for g in grids])
        return x_hat, scale, zero_point, (hard * table).sum(1)

    def _candidate_grid(self, x: Tensor, bits: int) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(scale, zero_point, qmin, qmax)`` of one candidate bit width, shaped for ``x``."""
        qmin, qmax = self.levels(bits)
        range_, offset = self._grid(x, qmax)
        scale = range_ / qmax
        bound = functools.partial(torch.tensor, dtype=x.dtype, device=x.device)
        return scale, self._zero_point(offset, scale), bound(float(qmin)), bound(float(qmax))

    def _mix_quantized_weights(self, weight: Tensor, choice: BitChoice, w: Tensor, table: Tensor):
        """One quantized weight per sample, ``sum_k w_nk Q_k(W)``: shape ``(N, *weight.shape)``."""
        outputs = [self._quantize(weight, bits) for bits in choice.candidates]

        def mix(parts: List[Tensor]) -> Tensor:
            stacked = torch.stack(parts)  # (K, ...)
            return torch.einsum("nk,k...->n...", w, stacked)

        x_hat, scale, zero_point = (mix([o[i] for o in outputs]) for i in range(3))
        return x_hat, scale, zero_point, (w.detach() * table).sum(1)

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        sentinel = x.dim() == 0  # Brevitas asks for scale/zero-point with a scalar input
        if not sentinel:
            self.input_ndim = x.dim()
            if self.collecting or self._auto_calibrating():
                self._observe(x)
        if not self.initialized:
            raise QuantizerNotCalibratedError(
                "DynaQuant activation quantizer has seen no calibration data: run "
                "dynaquant_brevitas.calibrate(model, samples) or train a few steps first"
            )
        if self.collecting:
            _, scale, zero_point, bit_width = self._quantize(x, int(self.static_bit_width))
            return x, scale, zero_point, bit_width
        choice = self.bit_choice
        if choice is None or sentinel:
            return self._quantize(x, int(self.static_bit_width))
        bits = choice.uniform_bits()
        if bits is not None:
            return self._quantize(x, bits)
        return self._quantize_per_sample(x, choice if self.is_weight else choice.for_rows(x.shape[0]))

    def _auto_calibrating(self) -> bool:
        if self.is_weight:
            return not self.initialized
        return self.training and int(self.observed_batches) < self.calibration_batches

    def extra_repr(self) -> str:
        kind = "signed" if self.signed else "unsigned"
        channels = self.range.numel() if self.per_channel else "per-tensor"
        ranges = "" if self.image_range == "static" else f", image_range={self.image_range}"
        return f"{kind}, bits={int(self.static_bit_width)}, channels={channels}, learn_offset={self.learn_offset}{ranges}"


def _check_bits(bits: int) -> None:
    if int(bits) != bits or not 2 <= bits <= 16:
        raise ValueError(f"bit width must be an integer in 2..16, got {bits}")

