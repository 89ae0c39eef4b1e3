"""Brevitas quantizers for DynaQuant: content-aware per-channel range and offset, DGM rounding.

Rounding estimators (:mod:`.rounding`), fused fake-quantization kernels (:mod:`.fake_quant`), the
content-aware tensor quantizer and its integer grid (:mod:`.tensor_quant`), Brevitas presets
(:mod:`.injectors`) and calibration (:mod:`.calibration`).
"""

from .calibration import calibrate, quantization_disabled
from .injectors import *  # noqa: F401,F403
from .injectors import __all__ as _injectors_all
from .rounding import DGMRound, STERound, dgm_round, rounding_estimator, ste_round
from .tensor_quant import ADAPTIVE_QUANTILE, IMAGE_RANGES, BitChoice, ContentAwareIntQuant, QParams, QuantizerNotCalibratedError, int_range

__all__ = list(_injectors_all) + [
    "ADAPTIVE_QUANTILE",
    "IMAGE_RANGES",
    "BitChoice",
    "ContentAwareIntQuant",
    "DGMRound",
    "QParams",
    "QuantizerNotCalibratedError",
    "STERound",
    "calibrate",
    "dgm_round",
    "int_range",
    "quantization_disabled",
    "rounding_estimator",
    "ste_round",
]
