"""DynaQuant for CompressAI learned image codecs, as a Brevitas plugin."""

from .gradients import DGMRound, STERound, dgm_round, rounding_estimator, ste_round
from .quant import (
    BitChoice,
    ContentAwareIntQuant,
    DynaActQuant,
    DynaUintActQuant,
    DynaWeightQuant,
    Int4WeightPerChannelDGM,
    Int6WeightPerChannelDGM,
    Int8ActPerChannelDGM,
    Int8ActPerChannelSTE,
    Int8WeightPerChannelDGM,
    Int8WeightPerChannelOffsetDGM,
    Int8WeightPerChannelSTE,
    QuantizerNotCalibratedError,
    Uint8ActPerChannelDGM,
)

from .quant.calibration import calibrate
from .config import DynaQuantConfig
from .layers import DynaQuantConv2d, DynaQuantConvTranspose2d, DynaQuantLinear, DynaQuantMaskedConv2d
from .selector import BitSelector
from .cost import bit_loss, bit_report, layer_macs, model_size_bytes
from .transform import UnsupportedModuleError, dynaquant_layers, dynaquantize, freeze, plan_quantization

__version__ = "0.1.0"
