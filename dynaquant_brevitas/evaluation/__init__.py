"""Measuring codecs: real-bitstream coding and evaluation, quality metrics, BD-rate, figures."""

from .coding import Coded, EvalError, decode_image, encode_image, prepare_for_coding
from .evaluate import LoadedModel, evaluate, evaluate_model, load_for_eval
from .metrics import MetricError, bd_rate, ms_ssim, psnr

__all__ = [
    "Coded", "EvalError", "LoadedModel", "MetricError", "bd_rate", "decode_image", "encode_image",
    "evaluate", "evaluate_model", "load_for_eval", "ms_ssim", "prepare_for_coding", "psnr"
]
