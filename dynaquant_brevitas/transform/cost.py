"""Bit and compute accounting: the bit loss, per-layer MACs, BitOPs, model size, bit reports.

Definitions used throughout the project:

* *bit loss*: ``(1/L) sum_l sum_k p_lk b_k``, the expected average bit width of the L dynamic
  layers, averaged over the batch (the paper's ``L_bits``).
* *average bits per parameter*: weights' bit widths averaged over all weights of the codec's
  convolution and linear layers (float ones count as 32 bits; the selectors are not codec layers
  and appear in the size only).
* *BitOPs*: ``MACs x weight bits x activation bits`` per layer; *average bits (BitOPs)* is the
  bit width ``b`` with ``b^2 x total MACs = total BitOPs``; the *BitOPs ratio* divides by
  ``32 x 32 x total MACs``.
* *model size*: quantized weights packed at their bit widths, plus 32-bit floats for
  everything else (biases, per-channel ranges and offsets, entropy models, selectors).

Example:
    >>> import torch
    >>> from compressai.models import FactorizedPrior
    >>> from dynaquant_brevitas import DynaQuantConfig, dynaquantize
    >>> model = dynaquantize(FactorizedPrior(8, 12), DynaQuantConfig(candidate_bits=(8,)))
    >>> macs = layer_macs(model, (1, 3, 64, 64))
    >>> round(average_bits(model, macs)["bits_per_param"], 2)
    8.0
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Dict, Iterable, List, Mapping, Optional, Sequence

import torch
from torch import Tensor, nn

from ..nn import DynaQuantLayer
from ..quant import quantization_disabled
from .profiles import chosen_bits

__all__ = [
    "BitReport", "average_bits", "bit_loss", "bit_report", "layer_macs", "layer_bits", "model_size_bytes"
]

_COMPUTE_LAYERS = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)
_SELECTORS = "dynaquant"  # where dynaquantize attaches its selectors


def bit_loss(output: Mapping[str, object]) -> Tensor:
    """Expected average bit width of the dynamic layers (differentiable); 0 without them.

    Args:
        output: a dynaquantized model's forward output, or its ``output["bits"]``.
    """
    bits = output.get("bits", output) if isinstance(output, Mapping) else None
    if not isinstance(bits, Mapping) or "probs" not in bits:
        return torch.zeros(())
    probs: Tensor = bits["probs"]
    table = torch.tensor(bits["candidates"], dtype=probs.dtype, device=probs.device)
    return (probs * table).sum(-1).mean()


def layer_macs(model: nn.Module, input_shape: Sequence[int] = (1, 3, 256, 256)) -> Dict[str, int]:
    """Multiply-accumulates per image of every Conv2d, ConvTranspose2d and Linear layer.

    Measured with one forward pass of the model (in eval mode, no gradient) on a random input.
    """
    macs: Dict[str, int] = {}

    def hook(name: str):
        def record(module: nn.Module, inputs, output):
            x = inputs[0].value if hasattr(inputs[0], "value") else inputs[0]
            y = output.value if hasattr(output, "value") else output
            n = max(1, x.shape[0])
            if isinstance(module, nn.ConvTranspose2d):
                per = module.out_channels // module.groups * math.prod(module.kernel_size)
                macs[name] = macs.get(name, 0) + x.numel() // n * per
            elif isinstance(module, nn.Conv2d):
                per = module.in_channels // module.groups * math.prod(module.kernel_size)
                macs[name] = macs.get(name, 0) + y.numel() // n * per
            else:
                macs[name] = macs.get(name, 0) + y.numel() // n * module.in_features

        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if isinstance(m, _COMPUTE_LAYERS)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), quantization_disabled(model):  # MACs do not depend on calibration
            first = next(model.parameters())
            x = torch.rand(*input_shape, generator=torch.Generator().manual_seed(0))
            model(x.to(first.device, first.dtype))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return macs


def layer_bits(model: nn.Module, profile: Optional[Mapping[str, float]] = None) -> Dict[str, float]:
    """Bit width of every compute layer: the profile's value, the static width (DynaQuant layers,
    or any Brevitas layer whose weight quantizer is on), or 32 (float)."""
    profile = dict(profile or {})
    bits = {}
    for name, module in model.named_modules():
        if name == _SELECTORS or name.startswith(_SELECTORS + "."):
            continue  # the selectors are counted in the size, not as codec layers
        if isinstance(module, DynaQuantLayer):
            bits[name] = float(profile.get(name, module.bit_width))
        elif isinstance(module, _COMPUTE_LAYERS):
            proxy = getattr(module, "weight_quant", None)
            quantized = proxy is not None and getattr(proxy, "is_quant_enabled", False)
            bits[name] = float(module.quant_weight().bit_width) if quantized else 32.0
    return bits


def average_bits(
    model: nn.Module, macs: Mapping[str, int], profile: Optional[Mapping[str, float]] = None
) -> Dict[str, float]:
    """Average bits per parameter, BitOPs-equivalent bits and the BitOPs ratio to float."""
    bits = layer_bits(model, profile)
    modules = dict(model.named_modules())
    params = {name: modules[name].weight.numel() for name in bits}
    total_params = sum(params.values())
    total_macs = sum(macs.get(name, 0) for name in bits)
    bitops = sum(macs.get(name, 0) * b * b for name, b in bits.items())
    return {
        "bits_per_param": sum(params[n] * b for n, b in bits.items()) / max(1, total_params),
        "bits_bitops": math.sqrt(bitops / total_macs) if total_macs else float("nan"),
        "bitops_ratio": bitops / (total_macs * 32 * 32) if total_macs else float("nan"),
    }


def model_size_bytes(model: nn.Module, profile: Optional[Mapping[str, float]] = None) -> int:
    """Bytes of the model with quantized weights packed at their bit widths (see module doc)."""
    bits = layer_bits(model, profile)
    packed_bits = 0.0
    counted = set()
    modules = dict(model.named_modules())
    for name, b in bits.items():
        if b < 32:
            packed_bits += modules[name].weight.numel() * b
            counted.add(id(modules[name].weight))
    floats = sum(p.numel() for p in model.parameters() if id(p) not in counted)
    return int(math.ceil(packed_bits / 8)) + 4 * floats


@dataclass
class BitReport:
    """Which bit widths a dynaquantized model chose over a set of images.

    Attributes:
        layers: dynamic layer names, in selector order.
        per_image: chosen bits per image, one list per image (``layers`` order).
        histograms: per layer, ``{bits: count}`` over the images.
        mean_bits: per layer, the mean chosen bit width.
        bits_per_param, bits_bitops, bitops_ratio: averages over the whole model (fixed layers
            included), for the mean choice.
        size_bytes: model size at the mean choice.
    """

    layers: List[str]
    per_image: List[List[int]]
    histograms: Dict[str, Dict[int, int]]
    mean_bits: Dict[str, float]
    bits_per_param: float
    bits_bitops: float
    bitops_ratio: float
    size_bytes: int
    extra: Dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, object]:
        return asdict(self)


def bit_report(model: nn.Module, images: Iterable[Tensor], macs: Optional[Mapping[str, int]] = None) -> BitReport:
    """Run ``images`` (each ``(3, H, W)`` or ``(1, 3, H, W)``) and report the bit choices."""
    layers, per_image = chosen_bits(model, images)
    if not per_image:
        raise ValueError("bit_report needs at least one image and a model with dynamic layers")
    histograms = {name: dict(Counter(row[i] for row in per_image)) for i, name in enumerate(layers)}
    mean_bits = {name: sum(row[i] for row in per_image) / len(per_image) for i, name in enumerate(layers)}
    macs = macs if macs is not None else layer_macs(model, (1, 3, 256, 256))
    averages = average_bits(model, macs, mean_bits)
    return BitReport(
        layers=layers,
        per_image=per_image,
        histograms=histograms,
        mean_bits=mean_bits,
        size_bytes=model_size_bytes(model, mean_bits),
        **averages,
    )
