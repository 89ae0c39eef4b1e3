"""Brevitas layers whose bit width changes per call and per sample, and the bit-width selector."""

from .layers import (
    Bits, DynaQuantConv2d, DynaQuantConvTranspose2d, DynaQuantLayer, DynaQuantLinear, DynaQuantMaskedConv2d,
    DynaQuantMultiheadAttention, StaticWidths, as_pair, quantizer_kwargs
)
from .selector import BitSelector, Selection

__all__ = [
    "BitSelector", "Bits", "DynaQuantConv2d", "DynaQuantConvTranspose2d", "DynaQuantLayer", "DynaQuantLinear",
    "DynaQuantMaskedConv2d", "DynaQuantMultiheadAttention", "Selection", "StaticWidths", "as_pair", "quantizer_kwargs",
]
