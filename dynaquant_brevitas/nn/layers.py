"""Brevitas layers whose bit width can change per layer, per call and per sample.

Each class subclasses the Brevitas layer of the same name and adds:

* ``set_bit_width(bits)``: one static bit width for weights and input activations;
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

from typing import Any, Dict, Iterator, Optional, Type

import torch
import torch.nn.functional as F
from brevitas.nn import QuantConv2d, QuantConvTranspose2d, QuantLinear
from compressai.layers import MaskedConv2d
from torch import Tensor, nn

from ..quant import BitChoice, ContentAwareIntQuant, DynaActQuant, DynaWeightQuant
from ..registry import register_handler

__all__ = [
    "DynaQuantLayer",
    "DynaQuantConv2d",
    "DynaQuantConvTranspose2d",
    "DynaQuantLinear",
    "DynaQuantMaskedConv2d",
    "quantizer_kwargs",
]


def _plain(t: Any) -> Any:
    return t.value if hasattr(t, "value") and not isinstance(t, Tensor) else t


def quantizer_kwargs(
    bits: int,
    *,
    rounding: str = "dgm",
    beta: float = 1.0,
    quantize_activations: bool = True,
    learn_range: bool = True,
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
    kwargs: Dict[str, Any] = {
        "weight_quant": DynaWeightQuant,
        "weight_bit_width": bits,
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
            input_bit_width=bits,
            input_rounding=rounding,
            input_rounding_beta=beta,
            input_learn_range=learn_range,
            input_learn_offset=learn_offset,
            input_per_channel=activation_per_channel,
            input_calibration_batches=calibration_batches,
            input_integer_zero_point=integer_zero_point,
        )
    return kwargs


class DynaQuantLayer:
    """Mixin shared by the DynaQuant layers: bit-width control and the per-sample path."""

    float_class: Type[nn.Module]

    def tensor_quants(self) -> Iterator[ContentAwareIntQuant]:
        """The content-aware quantizers of this layer (weights, then input)."""
        candidates = [getattr(self.weight_quant, "tensor_quant", None)]
        fused = getattr(self.input_quant, "fused_activation_quant_proxy", None)
        candidates.append(getattr(fused, "tensor_quant", None))
        return (q for q in candidates if isinstance(q, ContentAwareIntQuant))

    @property
    def bit_width(self) -> int:
        """The static bit width (used when no per-sample choice is set)."""
        return int(next(self.tensor_quants()).static_bit_width)

    def set_bit_width(self, bits: int) -> None:
        for q in self.tensor_quants():
            q.set_bit_width(bits)

    def set_bit_choice(self, choice: Optional[BitChoice]) -> None:
        for q in self.tensor_quants():
            q.bit_choice = choice

    @property
    def bit_choice(self) -> Optional[BitChoice]:
        return next(self.tensor_quants()).bit_choice

    @classmethod
    def from_float(cls, module: nn.Module, bits: int = 8, **options: Any) -> "DynaQuantLayer":
        """A quantized copy of a float ``module`` (weights shared by value, not by reference)."""
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
            if weight.shape[0] != x.shape[0]:
                raise RuntimeError(
                    f"{type(self).__name__}: bit choice is for {weight.shape[0]} samples but the "
                    f"input has {x.shape[0]}; the bit-width selector did not run for this batch"
                )
            return self.per_sample_forward(x, weight, bias)
        return super().inner_forward_impl(x, weight, bias)

    def per_sample_forward(self, x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        raise NotImplementedError


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
        n = x.shape[0]
        padding = self.padding
        if self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding = 0
        out = F.conv2d(
            x.reshape(1, -1, *x.shape[2:]),
            weight.reshape(-1, *weight.shape[2:]),
            None,
            self.stride,
            padding,
            self.dilation,
            self.groups * n,
        )
        return _add_channel_bias(out.reshape(n, -1, *out.shape[2:]), bias)


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
        n = x.shape[0]
        output_padding = self.compute_output_padding(x, self._output_size)
        self._output_size = None
        out = F.conv_transpose2d(
            x.reshape(1, -1, *x.shape[2:]),
            weight.reshape(-1, *weight.shape[2:]),
            None,
            self.stride,
            self.padding,
            output_padding,
            self.groups * n,
            self.dilation,
        )
        return _add_channel_bias(out.reshape(n, -1, *out.shape[2:]), bias)


@register_handler(nn.Linear)
class DynaQuantLinear(DynaQuantLayer, QuantLinear):
    """``QuantLinear`` with run-time and per-sample bit widths."""

    float_class = nn.Linear

    @staticmethod
    def _float_arguments(m: nn.Linear) -> Dict[str, Any]:
        return dict(in_features=m.in_features, out_features=m.out_features, bias=m.bias is not None)

    def per_sample_forward(self, x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        out = torch.einsum("n...i,noi->n...o", x, weight)
        return out if bias is None else out + bias
