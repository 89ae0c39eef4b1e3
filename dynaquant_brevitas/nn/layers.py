"""Brevitas layers whose bit width can change per layer, per call and per sample.

Each class subclasses the Brevitas layer of the same name and adds:

* ``set_bit_width(weight_bits, activation_bits=None)``: static widths for weights and input
  activations (the same when the second is not given);
* ``set_bit_choice(choice)``: a per-sample :class:`~dynaquant_brevitas.quant.BitChoice`. When the
  samples of a batch use different bit widths, the weight quantizer returns one weight per sample
  and the layer runs a single grouped convolution (groups x batch) instead of one convolution
  per candidate: the same arithmetic as the float layer, and every candidate still gets a
  gradient through the straight-through selection weights.

Example:
    >>> import torch
    >>> conv = DynaQuantConv2d.from_float(torch.nn.Conv2d(3, 8, 3, padding=1), bits=8)
    >>> _ = conv.train()(torch.randn(2, 3, 16, 16))  # calibrates the input quantizer
    >>> conv.set_bit_width(4)
    >>> conv.eval()(torch.randn(1, 3, 16, 16)).shape
    torch.Size([1, 8, 16, 16])
"""

from __future__ import annotations

from typing import Any, Dict, Iterator, Optional, Tuple, Type, Union

import torch
import torch.nn.functional as F
from brevitas.nn import QuantConv2d, QuantConvTranspose2d, QuantLinear, QuantMultiheadAttention
from compressai.layers import MaskedConv2d
from torch import Tensor, nn

from ..quant import BitChoice, ContentAwareIntQuant, DynaActQuant, DynaWeightQuant
from ..registry import register_handler

__all__ = [
    "Bits", "DynaQuantConv2d", "DynaQuantConvTranspose2d", "DynaQuantLayer", "DynaQuantLinear", "DynaQuantMaskedConv2d",
    "DynaQuantMultiheadAttention", "StaticWidths", "as_pair", "quantizer_kwargs", "rows_per_image",
]


Bits = Union[int, Tuple[int, int]]


def as_pair(bits: Bits) -> Tuple[int, int]:
    """``(weight bits, activation bits)`` of one width or a pair.

    Example:
        >>> as_pair(6), as_pair((4, 8))
        ((6, 6), (4, 8))
    """
    if isinstance(bits, (tuple, list)):
        weight, activation = bits
        return int(weight), int(activation)
    return int(bits), int(bits)


def _plain(t: Any) -> Any:
    return t.value if hasattr(t, "value") and not isinstance(t, Tensor) else t


def quantizer_kwargs(
    bits: Bits,
    *,
    rounding: str = "dgm",
    beta: float = 1.0,
    quantize_activations: bool = True,
    learn_range: bool = True,
    activation_percentile: float = 99.99,
    activation_headroom: float = 1.0,
    activation_range: str = "static",
    learn_offset: bool = True,
    activation_per_channel: bool = True,
    weight_offset: bool = False,
    calibration_batches: int = 8,
    integer_zero_point: bool = False,
) -> Dict[str, Any]:
    """Keyword arguments that configure a Brevitas layer with DynaQuant quantizers.

    The options have the names of the :class:`~dynaquant_brevitas.DynaQuantConfig` fields they
    come from; Brevitas reads them with its ``weight_`` and ``input_`` prefixes.
    """
    weight_bits, activation_bits = as_pair(bits)
    kwargs: Dict[str, Any] = {
        "weight_quant": DynaWeightQuant,
        "weight_bit_width": weight_bits,
        "weight_rounding": rounding,
        "weight_rounding_beta": beta,
        "weight_learn_range": learn_range,
        "weight_learn_offset": weight_offset,
        "weight_integer_zero_point": integer_zero_point,
        "bias_quant": None,
        "output_quant": None,
        "return_quant_tensor": False,
    }
    if quantize_activations:
        kwargs.update(
            input_quant=DynaActQuant,
            input_bit_width=activation_bits,
            input_rounding=rounding,
            input_rounding_beta=beta,
            input_learn_range=learn_range,
            input_stats_percentile=activation_percentile,
            input_stats_headroom=activation_headroom,
            input_image_range=activation_range,
            input_learn_offset=learn_offset,
            input_per_channel=activation_per_channel,
            input_calibration_batches=calibration_batches,
            input_integer_zero_point=integer_zero_point,
        )
    return kwargs


class StaticWidths:
    """Mixin: the static widths of a layer's content-aware quantizers (weights first, then input)."""

    def tensor_quants(self) -> Iterator[ContentAwareIntQuant]:
        raise NotImplementedError

    @property
    def bit_width(self) -> int:
        """The weights' static bit width (used when no per-sample choice is set)."""
        return int(next(self.tensor_quants()).static_bit_width)

    @property
    def widths(self) -> Tuple[int, Optional[int]]:
        """``(weight bits, activation bits)``; the second is ``None`` when the input is not quantized."""
        quants = list(self.tensor_quants())
        weight = int(quants[0].static_bit_width)
        inputs = [q for q in quants if not q.is_weight]
        return weight, int(inputs[0].static_bit_width) if inputs else None

    def set_bit_width(self, weight_bits: int, activation_bits: Optional[int] = None) -> None:
        """Static widths from now on: ``weight_bits`` for weights, ``activation_bits`` (default: the
        same) for the input."""
        for q in self.tensor_quants():
            q.set_bit_width(activation_bits if activation_bits is not None and not q.is_weight else weight_bits)


class DynaQuantLayer(StaticWidths):
    """Mixin shared by the DynaQuant layers: bit-width control and the per-sample path."""

    float_class: Type[nn.Module]

    def tensor_quants(self) -> Iterator[ContentAwareIntQuant]:
        """The content-aware quantizers of this layer (weights, then input)."""
        candidates = [getattr(self.weight_quant, "tensor_quant", None)]
        fused = getattr(self.input_quant, "fused_activation_quant_proxy", None)
        candidates.append(getattr(fused, "tensor_quant", None))
        return (q for q in candidates if isinstance(q, ContentAwareIntQuant))

    def set_bit_choice(self, choice: Optional[BitChoice]) -> None:
        """Per-sample widths (``None``: the static ones); pairs go to the weight and input quantizers apart."""
        for q in self.tensor_quants():
            q.bit_choice = None if choice is None else choice.part(0 if q.is_weight else 1)

    @property
    def bit_choice(self) -> Optional[BitChoice]:
        return next(self.tensor_quants()).bit_choice

    @classmethod
    def from_float(cls, module: nn.Module, bits: Bits = 8, **options: Any) -> "DynaQuantLayer":
        """A quantized copy of a float ``module`` (weights shared by value, not by reference);
        ``bits`` is one width, or a (weight, activation) pair."""
        layer = cls(**cls._float_arguments(module), **quantizer_kwargs(bits, **options))
        layer.to(device=module.weight.device, dtype=module.weight.dtype)
        with torch.no_grad():
            layer.weight.copy_(module.weight)
            if module.bias is not None:
                layer.bias.copy_(module.bias)
        layer.weight_quant.init_tensor_quant()  # re-derive the weight range from the copied weight
        layer.train(module.training)
        return layer

    def inner_forward_impl(self, x: Tensor, quant_weight: Tensor, quant_bias: Optional[Tensor]):
        x, weight, bias = _plain(x), _plain(quant_weight), _plain(quant_bias)
        if weight.dim() == self.weight.dim() + 1:
            rows_per_image(x.shape[0], weight.shape[0], self)
            return self.per_sample_forward(x, weight, bias)
        return super().inner_forward_impl(x, weight, bias)

    def per_sample_forward(self, x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        """``x`` (``N k`` rows: ``k`` per image, image-major) through ``weight`` (``N`` per-image weights)."""
        raise NotImplementedError


def rows_per_image(rows: int, images: int, layer: nn.Module) -> int:
    """How many input rows each image's bit choice covers: 1 for image batches, more for layers that
    see several rows per image (windows of an attention block, image-major).

    Raises:
        RuntimeError: naming the layer, when the rows are not a multiple of the images.
    """
    if images <= 0 or rows % images:
        name = getattr(layer, "dynaquant_name", type(layer).__name__)
        raise RuntimeError(
            f"{name}: its input has {rows} rows, not a multiple of the {images} images whose bit widths "
            "were chosen; leave it in float with DynaQuantConfig(float_modules=[...]) naming it"
        )
    return rows // images


def _grouped(x: Tensor, images: int) -> Tensor:
    """``(N k, C, ...)`` -> ``(k, N C, ...)``: each image's rows side by side as channel groups."""
    k = x.shape[0] // images
    return x.reshape(images, k, *x.shape[1:]).transpose(0, 1).reshape(k, -1, *x.shape[2:])


def _ungrouped(out: Tensor, images: int) -> Tensor:
    """The inverse of :func:`_grouped` for the output: ``(k, N O, ...)`` -> ``(N k, O, ...)``."""
    k = out.shape[0]
    return out.reshape(k, images, -1, *out.shape[2:]).transpose(0, 1).reshape(k * images, -1, *out.shape[2:])


_CONV_ARGUMENTS = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups")


def _constructor_arguments(module: nn.Module, names: tuple) -> Dict[str, Any]:
    """The float module's constructor arguments, to build its quantized twin."""
    return {**{name: getattr(module, name) for name in names}, "bias": module.bias is not None}


def _add_channel_bias(out: Tensor, bias: Optional[Tensor]) -> Tensor:
    if bias is None:
        return out
    return out + bias.reshape(1, -1, *([1] * (out.dim() - 2)))


@register_handler(nn.Conv2d)
class DynaQuantConv2d(DynaQuantLayer, QuantConv2d):
    """``QuantConv2d`` with run-time and per-sample bit widths."""

    float_class = nn.Conv2d

    @staticmethod
    def _float_arguments(m: nn.Conv2d) -> Dict[str, Any]:
        return _constructor_arguments(m, _CONV_ARGUMENTS + ("padding_mode",))

    def per_sample_forward(self, x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        n = weight.shape[0]
        padding = self.padding
        if self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding = 0
        out = F.conv2d(
            _grouped(x, n), weight.reshape(-1, *weight.shape[2:]), None, self.stride, padding, self.dilation, self.groups * n
        )
        return _add_channel_bias(_ungrouped(out, n), bias)


@register_handler(MaskedConv2d)
class DynaQuantMaskedConv2d(DynaQuantConv2d):
    """Masked convolution (CompressAI's ``MaskedConv2d`` and subclasses), mask kept.

    The mask multiplies the float weight in place, as CompressAI does, and the quantized weight,
    so masked taps stay exactly zero whatever the quantizer's offset.
    """

    float_class = MaskedConv2d

    @classmethod
    def from_float(cls, module: nn.Module, bits: int = 8, **options: Any) -> "DynaQuantMaskedConv2d":
        with torch.no_grad():
            module.weight.mul_(module.mask)
        layer = super().from_float(module, bits, **options)
        layer.register_buffer("mask", module.mask.detach().clone())
        return layer

    def forward(self, x):
        with torch.no_grad():
            self.weight.mul_(self.mask)
        return super().forward(x)

    def inner_forward_impl(self, x, quant_weight, quant_bias):
        return super().inner_forward_impl(x, _plain(quant_weight) * self.mask, quant_bias)


@register_handler(nn.ConvTranspose2d)
class DynaQuantConvTranspose2d(DynaQuantLayer, QuantConvTranspose2d):
    """``QuantConvTranspose2d`` with run-time and per-sample bit widths."""

    float_class = nn.ConvTranspose2d

    @staticmethod
    def _float_arguments(m: nn.ConvTranspose2d) -> Dict[str, Any]:
        if m.padding_mode != "zeros":
            raise ValueError(f"ConvTranspose2d with padding_mode={m.padding_mode!r} is not supported")
        return _constructor_arguments(m, _CONV_ARGUMENTS + ("output_padding",))

    def per_sample_forward(self, x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        n = weight.shape[0]
        output_padding = self.compute_output_padding(x, self._output_size)
        self._output_size = None
        out = F.conv_transpose2d(
            _grouped(x, n), weight.reshape(-1, *weight.shape[2:]), None, self.stride, self.padding, output_padding,
            self.groups * n, self.dilation,
        )
        return _add_channel_bias(_ungrouped(out, n), bias)


@register_handler(nn.Linear)
class DynaQuantLinear(DynaQuantLayer, QuantLinear):
    """``QuantLinear`` with run-time and per-sample bit widths."""

    float_class = nn.Linear

    @staticmethod
    def _float_arguments(m: nn.Linear) -> Dict[str, Any]:
        return dict(in_features=m.in_features, out_features=m.out_features, bias=m.bias is not None)

    def per_sample_forward(self, x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        n = weight.shape[0]
        out = torch.einsum("nri,noi->nro", x.reshape(n, -1, x.shape[-1]), weight).reshape(*x.shape[:-1], -1)
        return out if bias is None else out + bias


@register_handler(nn.MultiheadAttention)
class DynaQuantMultiheadAttention(StaticWidths, QuantMultiheadAttention):
    """``nn.MultiheadAttention`` as Brevitas's ``QuantMultiheadAttention``: the input and output
    projections (weights and their inputs) quantized with DynaQuant's quantizers at one bit width;
    the attention scores and softmax stay float. Its bit width does not change per image, so
    ``dynaquantize`` keeps it at ``fixed_bits``.

    Example:
        >>> attn = DynaQuantMultiheadAttention.from_float(nn.MultiheadAttention(16, 2, batch_first=True), bits=8)
        >>> x = torch.randn(2, 5, 16)
        >>> _ = attn.train()(x, x, x)  # the first batches calibrate the input ranges
        >>> attn.eval()(x, x, x)[0].shape
        torch.Size([2, 5, 16])
    """

    dynamic_bits = False

    @classmethod
    def from_float(cls, module: nn.MultiheadAttention, bits: Bits = 8, **options: Any) -> "DynaQuantMultiheadAttention":
        if module.kdim != module.embed_dim or module.vdim != module.embed_dim or module.bias_k is not None:
            raise ValueError("MultiheadAttention with kdim/vdim other than embed_dim or add_bias_kv is not supported")
        quant = quantizer_kwargs(bits, **options)
        kwargs: Dict[str, Any] = {}
        for proj in ("in_proj", "out_proj"):
            kwargs.update({f"{proj}_{k}": v for k, v in quant.items() if k.startswith(("weight_", "input_"))})
            kwargs[f"{proj}_bias_quant"] = None
        for internal in ("softmax_input_quant", "attn_output_weights_quant", "q_scaled_quant", "k_transposed_quant", "v_quant"):
            kwargs[internal] = None
        layer = cls(
            module.embed_dim, module.num_heads, dropout=module.dropout, bias=module.in_proj_bias is not None,
            add_zero_attn=module.add_zero_attn, batch_first=module.batch_first, return_quant_tensor=False, **kwargs,
        )
        layer.to(device=module.out_proj.weight.device, dtype=module.out_proj.weight.dtype)
        layer.load_state_dict(module.state_dict(), strict=False)  # Brevitas maps in_proj_weight -> in_proj.weight
        for proj in (layer.in_proj, layer.out_proj):
            proj.weight_quant.init_tensor_quant()
        layer.train(module.training)
        return layer

    def tensor_quants(self) -> Iterator[ContentAwareIntQuant]:
        quants = [m for m in self.modules() if isinstance(m, ContentAwareIntQuant)]
        return iter(sorted(quants, key=lambda q: not q.is_weight))  # weights first
