"""Brevitas layers whose bit width changes per call and per sample, and the bit-width selector."""

from .layers import (
    DynaQuantConv2d, DynaQuantConvTranspose2d, DynaQuantLayer, DynaQuantLinear, DynaQuantMaskedConv2d,
    DynaQuantMultiheadAttention, quantizer_kwargs
)
from .selector import BitSelector, Selection

__all__ = [
    "BitSelector", "DynaQuantConv2d", "DynaQuantConvTranspose2d", "DynaQuantLayer", "DynaQuantLinear",
    "DynaQuantMaskedConv2d", "DynaQuantMultiheadAttention", "Selection", "quantizer_kwargs"
]
