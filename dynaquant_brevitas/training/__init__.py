"""Rate-distortion training: the configuration, the loss and its bit controller, the resumable loop."""

from .config import ConfigError, DataSection, ModelSection, QuantSection, TrainConfig, TrainSection
from .loop import Prepare, TrainingDiverged, dynaquant_prepare, train, train_step
from .loss import GammaController, bpp_of, rd_loss
from .state import FINAL, LAST, TrainState, build_float_model, load_matching

__all__ = [
    "FINAL", "LAST", "ConfigError", "DataSection", "GammaController", "ModelSection", "Prepare",
    "QuantSection", "TrainConfig", "TrainSection", "TrainState", "TrainingDiverged", "bpp_of",
    "build_float_model", "dynaquant_prepare", "load_matching", "rd_loss", "train", "train_step"
]
