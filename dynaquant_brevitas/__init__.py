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

__version__ = "0.1.0"
