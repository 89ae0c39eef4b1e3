"""An integer path from the decoded hyper-latents to the entropy coder, identical on every platform.

A learned codec decodes only if the decoder computes the entropy model's scales (and means) bit
for bit as the encoder did. Float convolutions do not: their sums are reordered by thread count,
BLAS, SIMD width or device, and a scale that lands on the other side of a scale-table boundary
gives another index, and the arithmetic decoder desynchronises. Integer sums do not depend on
their order, so this module computes the hyper-synthesis ``h_s`` in integers end to end:

* the input ``z_hat`` goes onto the first layer's activation grid with its own quantizer
  (``q = clamp(round(z_hat / s + z))``: element-wise IEEE operations, the same everywhere);
* each convolution (or transposed convolution) multiplies integer weights ``q_w`` with integer
  activations in int64; the per-channel scales of weights and inputs and the step of the next
  grid are folded into one integer multiplier per (output, input) channel pair, ``M[o, c] =
  round(s_w[o] s_a[c] / s_next[o] * 2^shift)``, and the float bias into an integer at the same
  scale, so a layer is ``next = clamp(floor((sum q_w M q_a + B + 2^(shift-1)) / 2^shift))``;
* ReLU is a clamp at zero, LeakyReLU a second integer multiplier on the negative side;
* the last layer lands on a fixed output grid of step :data:`OUTPUT_STEP` (a power of two, so
  ``q * step`` is exact in float32); the scale-table index is found by comparing those integers
  with integer thresholds (:func:`scale_indexes`).

Every constant is derived from the model's float32 parameters with element-wise operations and
rounding, which IEEE 754 defines exactly, so encoder and decoder build the same program from the
same checkpoint (a model running in float64 is read through a float32 copy). :func:`install` hooks the program onto ``model.h_s``: in evaluation the hook's
output *is* the integer result; in training the forward value is the integer result and the
gradient flows through the fake-quantized float layers (the straight-through trick), so the RD
cost of the integer path is trained in. ``dynaquant_brevitas.export.integer_path`` runs the same
program in numpy.

Example:
    >>> import torch
    >>> from compressai.models import ScaleHyperprior
    >>> from dynaquant_brevitas import DynaQuantConfig, calibrate, dynaquantize
    >>> model = dynaquantize(ScaleHyperprior(8, 12), DynaQuantConfig(candidate_bits=(8,)))
    >>> calibrate(model, [torch.rand(2, 3, 128, 128)])
    >>> program = build_program(model.h_s)
    >>> [layer.kind for layer in program.layers]
    ['deconv', 'deconv', 'conv']
    >>> z_hat = torch.round(torch.randn(1, 8, 2, 2) * 3)
    >>> q = run_program(program, z_hat)
    >>> q.dtype, bool(torch.equal(run_program(program, z_hat), q))
    (torch.int64, True)
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, List, Optional, Tuple

import torch
from torch import Tensor, nn

from .layers import DynaQuantConv2d, DynaQuantConvTranspose2d, DynaQuantLayer

__all__ = ["OUTPUT_BITS", "OUTPUT_STEP", "IntegerLayer", "IntegerPathError", "IntegerProgram", "build_program",
           "install", "installed", "run_program", "scale_indexes", "scale_thresholds", "uninstall"]

#: step of the output grid (scales and means): 2^-12, so ``q * OUTPUT_STEP`` is exact in float32
OUTPUT_STEP = 2.0**-12
#: output integers are kept below 2^OUTPUT_BITS in magnitude (float32 holds them exactly)
OUTPUT_BITS = 24
#: bits of the fixed-point multipliers
SHIFT = 30
#: extra bits kept before LeakyReLU's negative-side multiplier
_LEAKY_BITS = 16
_HOOK_ATTR = "_dynaquant_integer_path"


class IntegerPathError(ValueError):
    """A model whose entropy path cannot run in integers (and why)."""


@dataclass
class IntegerLayer:
    """One convolution of the integer program (see the module docstring); every tensor is int64."""

    kind: str  # "conv" or "deconv"
    weight: Tensor  # (O, I, kh, kw) as a convolution: a transposed one is stored flipped and swapped
    stride: int
    padding: Tuple[int, int]  # (before, after) on each side, after stride dilation for "deconv"
    bias: Tensor  # (O,), at scale 2^-SHIFT of the next grid
    activation: str  # "relu", "leaky" or "none"
    leaky: int  # LeakyReLU's slope times 2^_LEAKY_BITS
    low: int
    high: int


@dataclass
class IntegerProgram:
    """The integer hyper-synthesis: the input grid and the layers."""

    input_scale: Tensor  # float32, broadcastable over (N, C, H, W)
    input_zero_point: Tensor
    input_low: int
    input_high: int
    layers: List[IntegerLayer] = field(default_factory=list)

    def quantize_input(self, z_hat: Tensor) -> Tensor:
        """``z_hat`` onto the first layer's activation grid (element-wise, deterministic)."""
        q = torch.round(z_hat.float() / self.input_scale + self.input_zero_point)
        return torch.clamp(q, self.input_low, self.input_high).to(torch.int64)


def _compute_layers(h_s: nn.Module) -> List[Tuple[nn.Module, str, float]]:
    """``(layer, activation, slope)`` for the convolutions of ``h_s``, refusing what has no integer form."""
    found: List[Tuple[nn.Module, str, float]] = []
    for name, module in h_s.named_children():
        if isinstance(module, (DynaQuantConv2d, DynaQuantConvTranspose2d)):
            found.append((module, "none", 0.0))
        elif isinstance(module, nn.ReLU) and found:
            found[-1] = (found[-1][0], "relu", 0.0)
        elif isinstance(module, nn.LeakyReLU) and found:
            found[-1] = (found[-1][0], "leaky", float(module.negative_slope))
        else:
            raise IntegerPathError(
                f"h_s.{name} ({type(module).__name__}): the integer entropy path supports DynaQuant convolutions, "
                "transposed convolutions, ReLU and LeakyReLU in sequence")
    if not found:
        raise IntegerPathError("h_s has no quantized convolution")
    return found


def _grid(layer: DynaQuantLayer, which: str) -> Any:
    quant = getattr(layer, which).tensor_quant if which == "weight_quant" else \
        layer.input_quant.fused_activation_quant_proxy.tensor_quant
    if layer.bit_choice is not None:
        raise IntegerPathError("h_s follows a per-image bit choice: the integer path needs static widths there")
    qp = quant.qparams()
    zero = qp.zero_point.double()
    if bool((zero != torch.round(zero)).any()):
        raise IntegerPathError(
            f"{which} has fractional zero points: use DynaQuantConfig(integer_zero_point=True) or no offsets")
    return qp


def _channels(t: Tensor) -> Tensor:
    """A per-channel (or per-tensor) scale as a flat float64 vector."""
    return t.detach().double().reshape(-1)


def _as_conv_weight(layer: nn.Module, q: Tensor) -> Tuple[Tensor, str, Tuple[int, int]]:
    """Integer weight in convolution layout, kind and (before, after) padding."""
    k = layer.kernel_size[0]
    if layer.kernel_size[0] != layer.kernel_size[1] or layer.stride[0] != layer.stride[1] or \
            layer.padding[0] != layer.padding[1] or getattr(layer, "groups", 1) != 1 or layer.dilation != (1, 1):
        raise IntegerPathError("the integer path supports square kernels, equal strides and paddings, no groups")
    if isinstance(layer, DynaQuantConvTranspose2d):
        p, extra = layer.padding[0], layer.output_padding[0]
        return q.transpose(0, 1).flip(-1, -2), "deconv", (k - 1 - p, k - 1 - p + extra)
    return q, "conv", (layer.padding[0], layer.padding[0])


@torch.no_grad()
def build_program(h_s: nn.Module) -> IntegerProgram:
    """The integer program of a DynaQuant-quantized hyper-synthesis ``h_s`` (static widths).

    The constants come from the float32 parameters (a model running in another precision is read
    through a float32 copy), so every decoder of the same checkpoint builds the same program.
    """
    if any(p.dtype != torch.float32 for p in h_s.parameters()):
        h_s = copy.deepcopy(h_s).float()
    found = _compute_layers(h_s)
    first = _grid(found[0][0], "input_quant")
    program = IntegerProgram(first.scale.float(), first.zero_point.float(), int(first.qmin), int(first.qmax))
    for index, (layer, activation, slope) in enumerate(found):
        a, w = _grid(layer, "input_quant"), _grid(layer, "weight_quant")
        q_w = (w.quantize(layer.weight) - w.zero_point).to(torch.int64)
        weight, kind, padding = _as_conv_weight(layer, q_w)
        out_channels = weight.shape[0]
        s_w = _channels(w.scale).expand(out_channels) if w.scale.numel() == 1 else _channels(w.scale)
        s_a = _channels(a.scale).expand(weight.shape[1]) if a.scale.numel() == 1 else _channels(a.scale)
        if index + 1 < len(found):
            nxt = _grid(found[index + 1][0], "input_quant")
            s_next = _channels(nxt.scale).expand(out_channels) if nxt.scale.numel() == 1 else _channels(nxt.scale)
            low, high = int(nxt.qmin), int(nxt.qmax)
        else:
            s_next = torch.full((out_channels,), OUTPUT_STEP, dtype=torch.float64)
            low, high = -(2**OUTPUT_BITS) + 1, 2**OUTPUT_BITS - 1
        multiplier = torch.round(s_w[:, None] * s_a[None, :] / s_next[:, None] * 2.0**SHIFT).to(torch.int64)
        bias = layer.bias.detach().double() if layer.bias is not None else torch.zeros(out_channels, dtype=torch.float64)
        program.layers.append(IntegerLayer(
            kind, weight * multiplier[:, :, None, None], int(layer.stride[0]), padding,
            torch.round(bias / s_next * 2.0**SHIFT).to(torch.int64), activation,
            int(round(slope * 2**_LEAKY_BITS)), 0 if activation == "relu" else low, high))
    return program


def _dilate(x: Tensor, stride: int) -> Tensor:
    if stride == 1:
        return x
    n, c, h, w = x.shape
    out = x.new_zeros((n, c, (h - 1) * stride + 1, (w - 1) * stride + 1))
    out[:, :, ::stride, ::stride] = x
    return out


def _conv_int64(x: Tensor, weight: Tensor, stride: int, padding: Tuple[int, int]) -> Tensor:
    """A convolution in int64, one kernel tap at a time (exact: integer sums in any order)."""
    before, after = padding
    x = torch.nn.functional.pad(x, (before, after, before, after))
    k = weight.shape[-1]
    h = (x.shape[2] - k) // stride + 1
    w = (x.shape[3] - k) // stride + 1
    out = torch.zeros((x.shape[0], weight.shape[0], h, w), dtype=torch.int64)
    for i in range(k):
        for j in range(k):
            patch = x[:, :, i: i + stride * (h - 1) + 1: stride, j: j + stride * (w - 1) + 1: stride]
            out += torch.einsum("oc,nchw->nohw", weight[:, :, i, j], patch)
    return out


def _requantize(total: Tensor, layer: IntegerLayer) -> Tensor:
    half = 1 << (SHIFT - 1)
    out = torch.div(total + half, 1 << SHIFT, rounding_mode="floor")
    if layer.activation == "leaky":
        fine = torch.div(total + (1 << (SHIFT - 9)), 1 << (SHIFT - 8), rounding_mode="floor")
        scale = 1 << (_LEAKY_BITS + 8)
        negative = torch.div(fine * layer.leaky + scale // 2, scale, rounding_mode="floor")
        out = torch.where(total < 0, negative, out)
    return torch.clamp(out, layer.low, layer.high)


def run_program(program: IntegerProgram, z_hat: Tensor) -> Tensor:
    """The output integers (on the grid of step :data:`OUTPUT_STEP`) for decoded hyper-latents ``z_hat``."""
    x = program.quantize_input(z_hat)
    for layer in program.layers:
        if layer.kind == "deconv":
            x = _dilate(x, layer.stride)
        total = _conv_int64(x, layer.weight, 1 if layer.kind == "deconv" else layer.stride, layer.padding)
        x = _requantize(total + layer.bias[None, :, None, None], layer)
    return x


def scale_thresholds(scale_table: Tensor) -> Tensor:
    """Integer thresholds ``T_i = floor(table_i / OUTPUT_STEP)``: a scale ``q * OUTPUT_STEP`` is at
    most ``table_i`` exactly when ``q <= T_i`` (the step is a power of two, so the division is exact)."""
    return torch.floor(scale_table.double() / OUTPUT_STEP).to(torch.int64)


def scale_indexes(q_scales: Tensor, thresholds: Tensor) -> Tensor:
    """CompressAI's ``build_indexes`` on integer scales: the number of table entries (but the last)
    below the scale, found by integer comparison."""
    below = (q_scales[..., None] <= thresholds[:-1]).sum(-1)
    return (len(thresholds) - 1 - below).to(torch.int32)


def _calibrating(h_s: nn.Module) -> bool:
    """Whether an activation quantizer of ``h_s`` is still collecting its range (no program yet)."""
    for layer, _, _ in _compute_layers(h_s):
        quant = layer.input_quant.fused_activation_quant_proxy.tensor_quant
        if not quant.initialized or quant.collecting or quant._auto_calibrating():
            return True
    return False


def _hook(module: nn.Module, inputs: Tuple[Tensor, ...], output: Tensor) -> Optional[Tensor]:
    if _calibrating(module):
        return None  # the float output while ranges are collected
    exact = run_program(build_program(module), inputs[0].detach()).to(output.dtype) * OUTPUT_STEP
    return output + (exact - output).detach() if output.requires_grad else exact


def _build_indexes(self: nn.Module, scales: Tensor) -> Tensor:
    q = torch.round(scales.double() / OUTPUT_STEP).to(torch.int64)  # exact: scales are q * 2^-12
    return scale_indexes(q, scale_thresholds(self.scale_table)).to(scales.device)


def install(model: nn.Module) -> nn.Module:
    """Run ``model.h_s`` as the integer program from now on (training and coding), and find the
    scale-table indexes by integer comparison; returns ``model``.

    For ScaleHyperprior-like (``h_s`` gives the scales) and MeanScaleHyperprior-like models
    (``h_s`` gives scales and means); raises :class:`IntegerPathError` for others.
    """
    h_s, coder = getattr(model, "h_s", None), getattr(model, "gaussian_conditional", None)
    if h_s is None or coder is None or any(hasattr(model, n) for n in ("context_prediction", "entropy_parameters")):
        raise IntegerPathError(
            f"{type(model).__name__}: the integer entropy path covers models whose h_s alone gives the entropy "
            "parameters (ScaleHyperprior, MeanScaleHyperprior); context models are not supported yet")
    _compute_layers(h_s)
    if not installed(model):
        h_s.register_forward_hook(_hook)
        setattr(h_s, _HOOK_ATTR, True)
        coder.build_indexes = _build_indexes.__get__(coder)
    return model


def installed(model: nn.Module) -> bool:
    """Whether :func:`install` hooked ``model``'s ``h_s``."""
    return hasattr(getattr(model, "h_s", None), _HOOK_ATTR)


def uninstall(model: nn.Module) -> nn.Module:
    """Undo :func:`install`."""
    if installed(model):
        hooks = model.h_s._forward_hooks
        for key in [k for k, fn in hooks.items() if fn is _hook]:
            del hooks[key]
        delattr(model.h_s, _HOOK_ATTR)
        del model.gaussian_conditional.build_indexes
    return model

