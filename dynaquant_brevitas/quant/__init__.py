"""Brevitas quantizers for DynaQuant: content-aware per-channel range and offset, DGM rounding."""

from .injectors import *  # noqa: F401,F403
from .injectors import __all__ as _injectors_all
from .tensor_quant import BitChoice, ContentAwareIntQuant, QuantizerNotCalibratedError, int_range

__all__ = list(_injectors_all) + ["BitChoice", "ContentAwareIntQuant", "QuantizerNotCalibratedError", "int_range"]
