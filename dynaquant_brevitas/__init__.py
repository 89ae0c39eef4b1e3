"""DynaQuant for CompressAI learned image codecs, as a Brevitas plugin."""

import warnings as _warnings

# Two import-time notices from dependencies that say nothing about this package's use of them.
_warnings.filterwarnings("ignore", message="fast_hadamard_transform package not found")
_warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)

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

from .checkpoint import load_model
from .evaluate import evaluate
from .metrics import bd_rate
from .train import TrainConfig, train

__version__ = "0.1.0"
