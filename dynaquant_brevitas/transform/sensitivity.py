"""Layer sensitivity: what quantizing one layer, alone, costs in rate, distortion and RD cost.

For every quantizable layer and every width, the weights and the input activations apart: the
model runs in float except that one quantizer (ranges calibrated on the same images), and the
change of the estimated rate (bpp from the likelihoods), the distortion (MSE) and the RD cost
``bpp + lambda * 255^2 * MSE`` against the float model is recorded. No training; a few crops
and a few minutes on two cores for the reference models. The static mixed-precision search
(:mod:`.mixed`) and the selector's start read it.

Example:
    >>> import torch
    >>> from compressai.models import ScaleHyperprior
    >>> sens = sensitivity(ScaleHyperprior(8, 12), [torch.rand(1, 3, 64, 64)], widths=(4, 8), lmbda=0.013,
    ...                    progress=False)
    >>> sorted(sens.weight["g_a.2"]), sens.cost("g_a.2", 8, 8) <= sens.cost("g_a.2", 4, 4) + 1e-6
    ([4, 8], True)
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..quant import calibrate, quantization_disabled
from .config import DynaQuantConfig
from .cost import layer_macs
from .dynaquantize import dynaquant_layers, dynaquantize

__all__ = ["Delta", "Sensitivity", "estimated_rd", "per_image_rd", "sensitivity"]


@dataclass
class Delta:
    """Change against the float model: ``bpp`` (estimated), ``mse`` and the RD ``cost``."""

    bpp: float
    mse: float
    cost: float


@dataclass
class Sensitivity:
    """Per layer and width, the :class:`Delta` of quantizing only its weights (``weight``) or only
    its input (``activation``); ``macs`` (per pixel of a 64 x 64 image) and ``params`` per layer;
    ``base`` the float model's bpp, MSE and cost on the same images."""

    layers: List[str]
    widths: List[int]
    lmbda: float
    base: Delta
    weight: Dict[str, Dict[int, Delta]]
    activation: Dict[str, Dict[int, Delta]]
    macs: Dict[str, float]
    params: Dict[str, int]
    images: int = 0
    extra: Dict[str, object] = field(default_factory=dict)

    def cost(self, layer: str, weight_bits: int, activation_bits: int) -> float:
        """The RD-cost increase of ``layer`` at these widths, the two parts added (the
        additive model the mixed-precision search assumes)."""
        activation = self.activation.get(layer, {}).get(activation_bits)
        return self.weight[layer][weight_bits].cost + (activation.cost if activation is not None else 0.0)

    def to_dict(self) -> Dict[str, object]:
        data = asdict(self)
        for part in ("weight", "activation"):
            data[part] = {layer: {str(b): asdict(d) for b, d in by_bits.items()} for layer, by_bits in getattr(self, part).items()}
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> "Sensitivity":
        parts = {
            part: {layer: {int(b): Delta(**d) for b, d in by_bits.items()} for layer, by_bits in data[part].items()}
            for part in ("weight", "activation")
        }
        fields = {k: v for k, v in data.items() if k not in ("weight", "activation", "base")}
        return cls(base=Delta(**data["base"]), **parts, **fields)


@torch.no_grad()
def estimated_rd(model: nn.Module, images: Sequence[Tensor], lmbda: float) -> Delta:
    """Mean estimated bpp (from the likelihoods), MSE and RD cost ``bpp + lmbda 255^2 MSE`` of
    ``model`` on ``images`` (batches), without entropy coding."""
    bpp = mse = 0.0
    for x in images:
        out = model(x)
        pixels = x.shape[0] * x.shape[2] * x.shape[3]
        bpp += float(sum(torch.log2(lik).sum() for lik in out["likelihoods"].values())) / -pixels
        mse += float(torch.mean((out["x_hat"].clamp(0, 1) - x) ** 2))
    bpp, mse = bpp / len(images), mse / len(images)
    return Delta(bpp, mse, bpp + lmbda * 255**2 * mse)


def per_image_rd(model: nn.Module, x: Tensor, lmbda: float) -> Tensor:
    """``(N,)`` estimated RD cost ``bpp + lmbda 255^2 MSE`` of each image of the batch ``x``
    (float64), without entropy coding."""
    out = model(x)
    bits = sum(torch.log2(lik).flatten(1).sum(1) for lik in out["likelihoods"].values())
    mse = ((out["x_hat"].clamp(0, 1) - x) ** 2).flatten(1).mean(1)
    return (-bits / (x.shape[2] * x.shape[3]) + lmbda * 255**2 * mse).double()


def _proxies(layer: nn.Module) -> Dict[str, nn.Module]:
    return {"weight": layer.weight_quant, "activation": layer.input_quant}


def sensitivity(
    model: nn.Module,
    images: Iterable[Tensor],
    widths: Sequence[int] = (2, 3, 4, 5, 6, 8),
    lmbda: float = 0.013,
    config: Optional[DynaQuantConfig] = None,
    progress: bool = True,
) -> Sensitivity:
    """Measure every quantizable layer's sensitivity (see the module docstring).

    Args:
        model: a float CompressAI model (left unchanged: a copy is quantized).
        images: batches ``(N, 3, H, W)`` in [0, 1] (sides multiples of 64), e.g. training crops.
        widths: the bit widths to try, for weights and for activations.
        lmbda: the RD trade-off of the cost (the model's training lambda).
        config: quantizer settings (rounding, ranges, offsets, ...); its widths are ignored.
        progress: show a progress bar.
    """
    from tqdm import tqdm

    images = [x if x.dim() == 4 else x.unsqueeze(0) for x in images]
    if not images:
        raise ValueError("sensitivity needs at least one image")
    widths = sorted({int(b) for b in widths})
    config = (config or DynaQuantConfig()).replace(candidate_bits=(max(widths),), weight_bits=None, activation_bits=None)
    quantized = dynaquantize(copy.deepcopy(model).eval(), config)
    calibrate(quantized, images)
    quantized.eval()
    layers = dict(dynaquant_layers(quantized))
    macs = layer_macs(model, (1, 3, 64, 64))
    modules = dict(model.named_modules())
    floats = [n for n in macs if n not in layers and not any(n.startswith(q + ".") for q in layers)]
    with quantization_disabled(quantized):
        base = estimated_rd(quantized, images, lmbda)
        result = Sensitivity(list(layers), widths, lmbda, base, {}, {}, {n: float(macs.get(n, 0)) for n in layers},
                             {n: layer.weight.numel() for n, layer in layers.items()}, images=sum(x.shape[0] for x in images),
                             extra={"float_macs": float(sum(macs[n] for n in floats)),
                                    "float_params": float(sum(modules[n].weight.numel() for n in floats))})
        steps = [(n, part, b) for n, layer in layers.items() for part in _proxies(layer) for b in widths]
        for name, part, bits in tqdm(steps, desc="sensitivity", disable=not progress):
            layer = layers[name]
            proxy = _proxies(layer)[part]
            if getattr(proxy, "fused_activation_quant_proxy", True) is None:
                continue  # an unquantized input
            saved = layer.widths
            layer.set_bit_width(bits, bits)
            proxy.disable_quant = False
            try:
                rd = estimated_rd(quantized, images, lmbda)
            finally:
                proxy.disable_quant = True
                layer.set_bit_width(*saved) if saved[1] is not None else layer.set_bit_width(saved[0])
            getattr(result, part).setdefault(name, {})[bits] = Delta(rd.bpp - base.bpp, rd.mse - base.mse, rd.cost - base.cost)
    return result


def heatmap_rows(sens: Sensitivity) -> Tuple[List[str], List[str], List[List[float]]]:
    """``(row labels, column labels, values)`` of the RD-cost increase, relative to the float cost
    in percent: one row per layer and part, one column per width."""
    rows, values = [], []
    for name in sens.layers:
        for part in ("weight", "activation"):
            by_bits = getattr(sens, part).get(name)
            if by_bits:
                rows.append(f"{name} {part[0]}")
                values.append([100 * by_bits[b].cost / sens.base.cost if b in by_bits else math.nan for b in sens.widths])
    return rows, [str(b) for b in sens.widths], values
