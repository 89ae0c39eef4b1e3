"""Name every module FINN cannot map, with a suggestion, before any export runs.

FINN fails deep inside a transformation when it meets something it has no hardware layer for.
:func:`finn_precheck` looks at the PyTorch module instead and reports each problem by module
name; :func:`check_finn` raises one :class:`FinnUnsupportedError` listing all of them.

Example:
    >>> from compressai.models import FactorizedPrior
    >>> problems = finn_precheck(FactorizedPrior(8, 12).g_a)
    >>> [(p.module, p.kind) for p in problems][:2]
    [('0', 'unquantized'), ('1', 'GDN')]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

from torch import nn

__all__ = ["FinnProblem", "FinnUnsupportedError", "UNMAPPED_OPS", "check_finn", "finn_precheck", "graph_precheck"]


@dataclass(frozen=True)
class FinnProblem:
    """One module FINN cannot map: where, what, and what to do instead."""

    module: str
    kind: str
    reason: str
    suggestion: str

    def __str__(self) -> str:
        return f"{self.module or '<root>'} ({self.kind}): {self.reason}; {self.suggestion}"


class FinnUnsupportedError(ValueError):
    """The module contains layers FINN cannot map (see :attr:`problems`)."""

    def __init__(self, problems: List[FinnProblem]) -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{len(problems)} module(s) cannot be mapped by FINN:\n{lines}")


_GDN = FinnProblem("", "GDN", "generalized divisive normalization needs a square root and a division per "
                   "pixel, which FINN has no hardware layer for",
                   "use the GDN-free model (compressai.models.FactorizedPriorReLU) or replace GDN by ReLU "
                   "and retrain")


def finn_precheck(module: nn.Module) -> List[FinnProblem]:
    """Every module of ``module`` that FINN's front end cannot map, in module order."""
    problems: List[FinnProblem] = []
    for name, child in module.named_modules():
        problem = _check(child)
        if problem is not None:
            problems.append(FinnProblem(name, problem.kind, problem.reason, problem.suggestion))
    return problems


def check_finn(module: nn.Module) -> None:
    """Raise :class:`FinnUnsupportedError` naming every problem :func:`finn_precheck` finds."""
    problems = finn_precheck(module)
    if problems:
        raise FinnUnsupportedError(problems)


def _check(m: nn.Module) -> Optional[FinnProblem]:
    kind = type(m).__name__
    from compressai.layers import GDN

    if isinstance(m, GDN):
        return _GDN
    if isinstance(m, nn.Upsample) and m.mode != "nearest":
        return FinnProblem("", kind, f"{m.mode} upsampling interpolates with fractional weights",
                           "use nearest-neighbour upsampling or a transposed convolution")
    if isinstance(m, nn.PixelShuffle):
        return FinnProblem("", kind, "depth-to-space (sub-pixel convolution) is not mapped by this flow",
                           "use a transposed convolution (it is lowered to zero insertion + convolution)")
    if isinstance(m, (nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.ELU)):
        return FinnProblem("", kind, "a smooth activation on an unquantized input has no threshold form",
                           "put a quantizer right after it or use ReLU")
    if isinstance(m, (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase)) and not isinstance(
        m, nn.modules.batchnorm._BatchNorm
    ):
        return FinnProblem("", kind, "normalisation by a data-dependent statistic needs a division",
                           "fold it into the neighbouring layer or drop it")
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        return _check_linear(m)
    return None


def _check_linear(m: nn.Module) -> Optional[FinnProblem]:
    kind = type(m).__name__
    weight_quant = getattr(m, "weight_quant", None)
    input_quant = getattr(m, "input_quant", None)
    if weight_quant is None or not getattr(weight_quant, "is_quant_enabled", False):
        return FinnProblem("", "unquantized", f"{kind} with float weights", "quantize it (dynaquantize, then freeze)")
    if input_quant is None or not getattr(input_quant, "is_quant_enabled", False):
        return FinnProblem("", "float input", f"the input of this {kind} is not quantized",
                           "quantize its input (DynaQuantConfig(quantize_activations=True))")
    bias_quant = getattr(m, "bias_quant", None)
    if bias_quant is not None and getattr(bias_quant, "is_quant_enabled", False):
        return FinnProblem("", "quantized bias", "a quantized bias (e.g. Int32Bias) breaks qonnx's ExtractBiasFromConv",
                           "keep the bias in float (bias_quant=None); FINN folds it into thresholds")
    tensor_quant = getattr(weight_quant, "tensor_quant", None)
    offset = getattr(tensor_quant, "offset", None)
    if offset is not None and offset.numel() and bool((offset != 0).any()):
        return FinnProblem("", "weight offset", "weights with a learned offset have a float zero point that "
                           "cannot be folded into integer weights",
                           "train without weight offsets (DynaQuantConfig(weight_offset=False))")
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        if m.groups != 1 and isinstance(m, nn.ConvTranspose2d):
            return FinnProblem("", kind, "grouped transposed convolution", "use groups=1")
        if tuple(m.dilation) != (1, 1) and isinstance(m, nn.ConvTranspose2d):
            return FinnProblem("", kind, "dilated transposed convolution", "use dilation 1")
        if m.padding_mode != "zeros":
            return FinnProblem("", kind, f"{m.padding_mode} padding", "use zero padding")
    return None


#: ONNX operators FINN's front end has no hardware layer for, with what to do instead.
UNMAPPED_OPS = {
    "Sqrt": "a square root (GDN?): use ReLU-based transforms",
    "Div": "a division by a tensor (GDN?): use ReLU-based transforms",
    "Reciprocal": "a reciprocal (GDN?): use ReLU-based transforms",
    "Pow": "a power: avoid it in the transforms to export",
    "Resize": "interpolating upsampling: use a transposed convolution",
    "DepthToSpace": "depth-to-space: use a transposed convolution",
    "Exp": "an exponential: not mappable",
    "Log": "a logarithm: not mappable",
}


def graph_precheck(model) -> List[FinnProblem]:
    """The nodes of a (Q)ONNX ``ModelWrapper`` whose operator FINN cannot map.

    A second line of defence after :func:`finn_precheck`: node names carry the module scope
    of the exporter (``/g_a/g_a.1/Sqrt``).
    """
    problems = []
    for node in model.graph.node:
        if node.op_type == "Div" and model.get_initializer(node.input[1]) is not None:
            continue  # division by a constant is a scale
        if node.op_type in UNMAPPED_OPS:
            reason, _, suggestion = UNMAPPED_OPS[node.op_type].partition(": ")
            problems.append(FinnProblem(node.name, node.op_type, reason, suggestion))
    return problems
