"""Bit and compute accounting: the bit loss, per-layer MACs, BitOPs, model size.

Definitions used throughout the project (``w``, ``a``: a layer's weight and activation widths):

* *average weight bits* (``bits_per_param``): weight widths averaged over every weight of the
  codec's convolution and linear layers (float ones count 32; selectors are not codec layers).
  What the model's size pays.
* *average activation bits*: activation widths averaged over the layers, weighted by MACs.
* *BitOPs*: ``MACs x w x a`` per layer; *average bits (BitOPs)* is the width ``b`` with
  ``b^2 x total MACs = total BitOPs``; the *BitOPs ratio* divides by ``32 x 32 x total MACs``.
  What the compute pays.
* *bit loss* (the training term that the selectors' choices pay), one of three costs, each read
  in bits so that a target stays a number of bits:

  - ``"layers"``: ``(1/L) sum_l E[sqrt(w_l a_l)]``, the plain layer average of the paper;
  - ``"bitops"``: ``sqrt(E[BitOPs] / MACs)`` over the whole model, fixed and float layers
    included as constants: the expected average bits (BitOPs);
  - ``"size"``: ``E[sum_l P_l w_l] / P`` over the whole model: the expected average weight bits.

* *model size*: quantized weights packed at their widths, plus 32-bit floats for everything else
  (biases, per-channel ranges and offsets, entropy models, selectors).

Example:
    >>> import torch
    >>> from compressai.models import FactorizedPrior
    >>> from dynaquant_brevitas import DynaQuantConfig, dynaquantize
    >>> model = dynaquantize(FactorizedPrior(8, 12), DynaQuantConfig(weight_bits=(4,), activation_bits=(8,)))
    >>> averages = average_bits(model, layer_macs(model, (1, 3, 64, 64)))
    >>> averages["bits_per_param"] < 8 < averages["avg_activation_bits"] + 1, round(averages["bits_bitops"], 2) < 8
    (True, True)
"""

from __future__ import annotations

import math
from typing import Dict, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from ..nn import StaticWidths, as_pair
from ..quant import quantization_disabled

__all__ = [
    "BIT_COSTS", "LayerCosts", "average_bits", "bit_cost", "bit_loss", "layer_bits", "layer_costs", "layer_macs",
    "model_size_bytes",
]

BIT_COSTS = ("layers", "bitops", "size")
_COMPUTE_LAYERS = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)
_SELECTORS = "dynaquant"  # where dynaquantize attaches its selectors
FLOAT_BITS = 32.0
#: a profile value: one width, a (weight, activation) pair, or mean widths
Widths = Union[float, Tuple[float, float]]


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


def _static_widths(module: nn.Module) -> Tuple[float, float]:
    """A compute layer's (weight, activation) widths: DynaQuant's static ones, a Brevitas layer's
    quantizer widths, or 32 for what runs in float."""
    if isinstance(module, StaticWidths):
        weight, activation = module.widths
        return float(weight), float(activation) if activation is not None else FLOAT_BITS
    proxy = getattr(module, "weight_quant", None)
    if proxy is None or not getattr(proxy, "is_quant_enabled", False):
        return FLOAT_BITS, FLOAT_BITS
    act = getattr(module, "input_quant", None)
    act_bits = float(act.bit_width()) if act is not None and getattr(act, "is_quant_enabled", False) else FLOAT_BITS
    return float(module.quant_weight().bit_width), act_bits


def layer_bits(model: nn.Module, profile: Optional[Mapping[str, Widths]] = None) -> Dict[str, Tuple[float, float]]:
    """``(weight bits, activation bits)`` of every compute layer: the profile's value (one width or
    a pair), the layer's static widths, or 32 (float). Layers inside an attention block count
    once, as the block."""
    profile = dict(profile or {})
    bits: Dict[str, Tuple[float, float]] = {}
    inside: Tuple[str, ...] = ()
    for name, module in model.named_modules():
        if name == _SELECTORS or name.startswith(_SELECTORS + "."):
            continue  # the selectors are counted in the size, not as codec layers
        if inside and name.startswith(inside):
            continue
        if isinstance(module, StaticWidths) and not isinstance(module, _COMPUTE_LAYERS):
            inside = (name + ".",)  # e.g. multi-head attention: its projections are its compute layers
            for sub, child in module.named_modules():
                if isinstance(child, _COMPUTE_LAYERS):
                    bits[f"{name}.{sub}"] = _as_float_pair(profile.get(name, _static_widths(module)))
            continue
        if isinstance(module, _COMPUTE_LAYERS):
            bits[name] = _as_float_pair(profile[name]) if name in profile else _static_widths(module)
    return bits


def _as_float_pair(value: Widths) -> Tuple[float, float]:
    if isinstance(value, (tuple, list)):
        return float(value[0]), float(value[1])
    return float(value), float(value)


def average_bits(
    model: nn.Module, macs: Mapping[str, int], profile: Optional[Mapping[str, Widths]] = None
) -> Dict[str, float]:
    """Average weight bits (per parameter), activation bits (per MAC), BitOPs bits and ratio."""
    bits = layer_bits(model, profile)
    modules = dict(model.named_modules())
    params = {name: modules[name].weight.numel() for name in bits}
    total_params = sum(params.values())
    total_macs = sum(macs.get(name, 0) for name in bits)
    bitops = sum(macs.get(name, 0) * w * a for name, (w, a) in bits.items())
    nan = float("nan")
    return {
        "bits_per_param": sum(params[n] * w for n, (w, _) in bits.items()) / max(1, total_params),
        "avg_activation_bits": sum(macs.get(n, 0) * a for n, (_, a) in bits.items()) / total_macs if total_macs else nan,
        "bits_bitops": math.sqrt(bitops / total_macs) if total_macs else nan,
        "bitops_ratio": bitops / (total_macs * 32 * 32) if total_macs else nan,
    }


def model_size_bytes(model: nn.Module, profile: Optional[Mapping[str, Widths]] = None) -> int:
    """Bytes of the model with quantized weights packed at their bit widths (see module doc)."""
    bits = layer_bits(model, profile)
    packed_bits = 0.0
    counted = set()
    modules = dict(model.named_modules())
    for name, (w, _) in bits.items():
        if w < FLOAT_BITS:
            packed_bits += modules[name].weight.numel() * w
            counted.add(id(modules[name].weight))
    floats = sum(p.numel() for p in model.parameters() if id(p) not in counted)
    return int(math.ceil(packed_bits / 8)) + 4 * floats


# --------------------------------------------------------------------------- the bit loss


class LayerCosts:
    """What each dynamic layer's width costs, for the bit loss: MACs per pixel and parameters of
    the dynamic layers (in selector order), and the constant part of the other layers.

    Built by ``dynaquantize`` from the float model (:func:`layer_costs`); ``to(device)`` is free.
    """

    def __init__(self, macs: Sequence[float], params: Sequence[float], fixed_bitops: float, fixed_macs: float,
                 fixed_weight_bits: float, fixed_params: float) -> None:
        self.macs, self.params = torch.tensor(macs, dtype=torch.float64), torch.tensor(params, dtype=torch.float64)
        self.fixed_bitops, self.fixed_macs = float(fixed_bitops), float(fixed_macs)
        self.fixed_weight_bits, self.fixed_params = float(fixed_weight_bits), float(fixed_params)


def layer_costs(float_model: nn.Module, dynamic: Sequence[str], fixed: Mapping[str, Widths]) -> LayerCosts:
    """:class:`LayerCosts` of a float model about to be quantized: ``dynamic`` layer names, ``fixed``
    widths of the other quantized layers (every other compute layer stays float, 32 bits)."""
    macs = layer_macs(float_model, (1, 3, 64, 64))
    modules = dict(float_model.named_modules())
    others = [n for n, m in modules.items() if isinstance(m, _COMPUTE_LAYERS) and n not in dynamic]
    widths = {n: _as_float_pair(fixed.get(n, FLOAT_BITS)) for n in others}
    return LayerCosts(
        [macs.get(n, 0) for n in dynamic],
        [modules[n].weight.numel() for n in dynamic],
        fixed_bitops=sum(macs.get(n, 0) * w * a for n, (w, a) in widths.items()),
        fixed_macs=sum(macs.get(n, 0) for n in others),
        fixed_weight_bits=sum(modules[n].weight.numel() * w for n, (w, _) in widths.items()),
        fixed_params=sum(modules[n].weight.numel() for n in others),
    )


def bit_cost(record: Mapping[str, object], cost: str = "layers", hard: bool = False) -> Tensor:
    """Per image, the bits the selectors' choices cost (``(N,)``); expected under ``probs`` (the
    differentiable bit loss) or, with ``hard``, of the choices made. ``cost`` is one of
    :data:`BIT_COSTS` (see the module docstring)."""
    if cost not in BIT_COSTS:
        raise ValueError(f"unknown bit cost {cost!r}; one of {', '.join(BIT_COSTS)}")
    p: Tensor = record["weights"].detach() if hard else record["probs"]  # (N, L, K)
    w, a = (torch.tensor([as_pair(c)[i] for c in record["candidates"]], dtype=p.dtype, device=p.device) for i in (0, 1))
    if cost == "layers":
        return (p * (w * a).sqrt()).sum(-1).mean(-1)
    costs: LayerCosts = record["costs"]
    if cost == "bitops":
        macs = costs.macs.to(p.device, p.dtype)
        total = costs.fixed_bitops + (p * (w * a)).sum(-1) @ macs
        return (total / (costs.fixed_macs + float(costs.macs.sum()))).sqrt()
    params = costs.params.to(p.device, p.dtype)
    total = costs.fixed_weight_bits + (p * w).sum(-1) @ params
    return total / (costs.fixed_params + float(costs.params.sum()))


def bit_loss(output: Mapping[str, object], cost: str = "layers") -> Tensor:
    """The bit loss of a dynaquantized model's forward output (differentiable, the batch mean); 0
    without dynamic layers. ``cost``: ``"layers"`` (the paper), ``"bitops"`` or ``"size"``."""
    record = output.get("bits", output) if isinstance(output, Mapping) else None
    if not isinstance(record, Mapping) or "probs" not in record:
        return torch.zeros(())
    return bit_cost(record, cost).mean()
