"""From a float model to a quantized one: the config, the plan, ``dynaquantize``, profiles and ``freeze``, costs."""

from .adapters import DECODER, ENCODER, AutoregressiveContextAdapter, CompressAIAdapter, ModelAdapter, adapter_for
from .config import DynaQuantConfig
from .cost import BIT_COSTS, average_bits, bit_cost, bit_loss, layer_bits, layer_macs, model_size_bytes
from .dynaquantize import QUANTIZER_OPTIONS, DynaQuantState, dynaquant_layers, dynaquant_state, dynaquantize
from .plan import FLOAT_BY_DESIGN, QuantizationPlan, UnsupportedModuleError, plan_quantization
from .ptq import ptq
from .profiles import Profile, chosen_bits, freeze, profile_entry, resolve_profile, unfreeze
from .report import BitReport, bit_report

__all__ = [
    "BIT_COSTS", "DECODER", "ENCODER", "FLOAT_BY_DESIGN", "QUANTIZER_OPTIONS", "AutoregressiveContextAdapter",
    "BitReport", "CompressAIAdapter", "DynaQuantConfig", "DynaQuantState", "ModelAdapter", "Profile",
    "QuantizationPlan", "UnsupportedModuleError", "adapter_for", "average_bits", "bit_cost", "bit_loss", "bit_report",
    "chosen_bits", "dynaquant_layers", "dynaquant_state", "dynaquantize", "freeze", "layer_bits",
    "layer_macs", "model_size_bytes", "plan_quantization", "ptq", "profile_entry", "resolve_profile", "unfreeze"
]
