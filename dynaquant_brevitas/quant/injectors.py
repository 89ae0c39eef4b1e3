"""Brevitas quantizers (injectors) for DynaQuant, composed of small mixins like Brevitas's presets.

Drop them into any Brevitas layer::

    QuantConv2d(..., weight_quant=DynaWeightQuant, input_quant=DynaActQuant)

Keyword overrides work as for every Brevitas quantizer, e.g. ``weight_bit_width=6`` or
``input_rounding_beta=2.0``.
"""

from __future__ import annotations

from brevitas.inject import ExtendedInjector, value
from brevitas.inject.enum import FloatToIntImplType
from torch import nn

from ..registry import lookup
from .proxies import DynaActQuantProxy, DynaWeightQuantProxy
from .tensor_quant import ContentAwareIntQuant

__all__ = [
    "DGMRounding", "STERounding", "ContentAwareWeight", "ContentAwareAct", "ContentAwareUintAct",
    "DynaWeightQuant", "DynaActQuant", "DynaUintActQuant", "Int8WeightPerChannelDGM",
    "Int6WeightPerChannelDGM", "Int4WeightPerChannelDGM", "Int8WeightPerChannelOffsetDGM",
    "Int8ActPerChannelDGM", "Uint8ActPerChannelDGM", "Int8WeightPerChannelSTE", "Int8ActPerChannelSTE"
]


class DGMRounding(ExtendedInjector):
    """Round with the Distance-aware Gradient Modulator (``rounding_beta`` sets its sharpness)."""

    rounding = "dgm"
    rounding_beta = 1.0
    float_to_int_impl_type = FloatToIntImplType.ROUND

    @value
    def float_to_int_impl(rounding):
        return lookup("estimator", rounding)


class STERounding(DGMRounding):
    """Round with the straight-through estimator (the baseline)."""

    rounding = "ste"


class _ContentAware(ExtendedInjector):
    tensor_quant = ContentAwareIntQuant
    bit_width = 8
    learn_range = True
    per_channel = True
    integer_zero_point = False
    stats_headroom = 1.0
    image_range = "static"


class ContentAwareWeight(_ContentAware):
    """Signed, narrow-range, per-output-channel learned range initialised from ``max |w|``."""

    proxy_class = DynaWeightQuantProxy
    is_weight = True
    signed = True
    narrow_range = True
    learn_offset = False
    stats_percentile = 100.0
    calibration_batches = 0

    @value
    def channel_dim(module):
        return module.output_channel_dim


class ContentAwareAct(_ContentAware):
    """Signed, narrow-range, per-channel learned range and offset from activation percentiles."""

    proxy_class = DynaActQuantProxy
    is_weight = False
    signed = True
    narrow_range = True
    learn_offset = True
    stats_percentile = 99.99
    calibration_batches = 8

    @value
    def channel_dim(module):
        return -1 if isinstance(module, nn.Linear) else 1


class ContentAwareUintAct(ContentAwareAct):
    """Unsigned version, for activations after a ReLU; the offset is the grid's lower end."""

    signed = False
    narrow_range = False


class DynaWeightQuant(DGMRounding, ContentAwareWeight):
    """DynaQuant's weight quantizer: 8-bit, per-channel learned range, DGM rounding.

    Example:
        >>> import torch
        >>> from brevitas.nn import QuantConv2d
        >>> conv = QuantConv2d(3, 4, 3, weight_quant=DynaWeightQuant, weight_bit_width=4)
        >>> len(torch.unique(conv.quant_weight().value[0]))  <= 2 ** 4
        True
    """


class DynaActQuant(DGMRounding, ContentAwareAct):
    """DynaQuant's content-aware activation quantizer: per-channel learned range and offset.

    Example:
        >>> import torch
        >>> from brevitas.nn import QuantConv2d
        >>> conv = QuantConv2d(3, 4, 3, weight_quant=DynaWeightQuant, input_quant=DynaActQuant)
        >>> _ = conv.train()(torch.randn(2, 3, 8, 8))  # the first batches calibrate the range
        >>> conv.eval()(torch.randn(1, 3, 8, 8)).shape
        torch.Size([1, 4, 6, 6])
    """


class DynaUintActQuant(DGMRounding, ContentAwareUintAct):
    """Unsigned content-aware activation quantizer, for inputs that follow a ReLU.

    Example:
        >>> import torch
        >>> from brevitas.nn import QuantReLU
        >>> relu = QuantReLU(act_quant=DynaUintActQuant, bit_width=4).train()  # no act_ prefix here
        >>> out = relu(torch.randn(2, 3, 5, 5))
        >>> bool((out >= 0).all()), len(torch.unique(out[:, 0])) <= 2 ** 4
        (True, True)
    """


class Int8WeightPerChannelDGM(DynaWeightQuant):
    """Alias of :class:`DynaWeightQuant` in Brevitas's naming style.

    Example:
        >>> from brevitas.nn import QuantLinear
        >>> QuantLinear(8, 2, bias=False, weight_quant=Int8WeightPerChannelDGM).quant_weight().bit_width.item()
        8.0
    """


class Int6WeightPerChannelDGM(DynaWeightQuant):
    """6-bit per-channel weights with DGM rounding.

    Example:
        >>> from brevitas.nn import QuantConv2d
        >>> QuantConv2d(2, 2, 1, weight_quant=Int6WeightPerChannelDGM).quant_weight().bit_width.item()
        6.0
    """

    bit_width = 6


class Int4WeightPerChannelDGM(DynaWeightQuant):
    """4-bit per-channel weights with DGM rounding.

    Example:
        >>> from brevitas.nn import QuantConv2d
        >>> QuantConv2d(2, 2, 1, weight_quant=Int4WeightPerChannelDGM).quant_weight().bit_width.item()
        4.0
    """

    bit_width = 4


class Int8WeightPerChannelOffsetDGM(DynaWeightQuant):
    """8-bit weights with a learned per-channel offset as well as a learned range.

    Example:
        >>> from brevitas.nn import QuantConv2d
        >>> conv = QuantConv2d(2, 3, 1, weight_quant=Int8WeightPerChannelOffsetDGM)
        >>> conv.weight_quant.tensor_quant.offset.shape
        torch.Size([3])
    """

    learn_offset = True
    stats_percentile = 100.0


class Int8ActPerChannelDGM(DynaActQuant):
    """Alias of :class:`DynaActQuant` in Brevitas's naming style.

    Example:
        >>> from brevitas.nn import QuantIdentity
        >>> QuantIdentity(act_quant=Int8ActPerChannelDGM).act_quant.is_signed
        True
    """


class Uint8ActPerChannelDGM(DynaUintActQuant):
    """Alias of :class:`DynaUintActQuant` in Brevitas's naming style.

    Example:
        >>> from brevitas.nn import QuantReLU
        >>> QuantReLU(act_quant=Uint8ActPerChannelDGM).act_quant.is_signed
        False
    """


class Int8WeightPerChannelSTE(STERounding, ContentAwareWeight):
    """8-bit learned-range weights with straight-through rounding (LSQ-style baseline).

    Example:
        >>> from brevitas.nn import QuantConv2d
        >>> QuantConv2d(2, 2, 1, weight_quant=Int8WeightPerChannelSTE).weight_quant.tensor_quant.float_to_int_impl
        STERound()
    """


class Int8ActPerChannelSTE(STERounding, ContentAwareAct):
    """Content-aware activation quantizer with straight-through rounding (ablation baseline).

    Example:
        >>> from brevitas.nn import QuantIdentity
        >>> QuantIdentity(act_quant=Int8ActPerChannelSTE).act_quant.fused_activation_quant_proxy.tensor_quant.float_to_int_impl
        STERound()
    """
