"""DynaQuant for CompressAI learned image codecs, as a Brevitas plugin.

The public API, layer by layer (each name is imported on first use, so ``import dynaquant_brevitas``
and the ``dynaquant`` command start fast):

- quantizers (:mod:`.quant`): rounding estimators, Brevitas presets, calibration;
- layers and selector (:mod:`.nn`);
- from a float model to a quantized one (:mod:`.transform`): config, plan, ``dynaquantize``,
  ``freeze``, bit and size accounting;
- files (:mod:`.io`), training (:mod:`.training`), evaluation (:mod:`.evaluation`), export
  (:mod:`.export`), the command line (:mod:`.cli`); the plugin registry (:mod:`.registry`).

Example:
    >>> from dynaquant_brevitas import DynaQuantConfig
    >>> DynaQuantConfig(candidate_bits=(6, 8)).dynamic
    True
"""

from importlib.metadata import version as _version

from ._lazy import lazy_attributes

__version__ = _version("dynaquant-brevitas")

_WHERE = {
    **dict.fromkeys(
        (
            "BitChoice",
            "ContentAwareIntQuant",
            "DGMRound",
            "DynaActQuant",
            "DynaUintActQuant",
            "DynaWeightQuant",
            "Int4WeightPerChannelDGM",
            "Int6WeightPerChannelDGM",
            "Int8ActPerChannelDGM",
            "Int8ActPerChannelSTE",
            "Int8WeightPerChannelDGM",
            "Int8WeightPerChannelOffsetDGM",
            "Int8WeightPerChannelSTE",
            "QParams",
            "QuantizerNotCalibratedError",
            "STERound",
            "Uint8ActPerChannelDGM",
            "calibrate",
            "dgm_round",
            "rounding_estimator",
            "ste_round",
        ),
        ".quant",
    ),
    **dict.fromkeys(
        ("BitSelector", "DynaQuantConv2d", "DynaQuantConvTranspose2d", "DynaQuantLinear", "DynaQuantMaskedConv2d"),
        ".nn",
    ),
    **dict.fromkeys(
        (
            "DynaQuantConfig",
            "ModelAdapter",
            "UnsupportedModuleError",
            "bit_loss",
            "bit_report",
            "dynaquant_layers",
            "dynaquantize",
            "freeze",
            "layer_macs",
            "model_size_bytes",
            "plan_quantization",
            "ptq",
        ),
        ".transform",
    ),
    **dict.fromkeys(("load_model", "save_model"), ".io"),
    **dict.fromkeys(("TrainConfig", "rd_loss", "train"), ".training"),
    **dict.fromkeys(("bd_rate", "evaluate"), ".evaluation"),
}

__all__ = sorted(_WHERE)
__getattr__, __dir__ = lazy_attributes(__name__, _WHERE)
