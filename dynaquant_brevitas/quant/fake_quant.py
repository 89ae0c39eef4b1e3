"""Fused fake quantization: one autograd node instead of a chain of elementwise ones.

Same arithmetic, in the same order, as Brevitas's integer quantizer and QONNX's ``Quant`` node,
``y = s * (clamp(round(x / s + z), qmin, qmax) - z)``, with the rounding estimator's gradient
multiplier ``g(u)`` at ``u = x / s + z`` (DGM's ``beta/(2 tanh(beta/2)) sech^2(beta (frac(u) -
1/2))``, or 1 for the straight-through estimator):

* ``dy/dx = g(u)`` inside the grid, 0 where clamped;
* ``dy/ds = round(u) - z - g(u) (u - z)`` inside, ``q - z`` outside (as in LSQ);
* ``dy/dz = s (g(u) - 1)`` inside, ``-s`` outside.

The backward recomputes ``u`` instead of storing it, so a quantized layer keeps the activation
memory of the float layer. ``s``, ``z``, ``qmin`` and ``qmax`` broadcast against ``x``.

Two implementations of the kernels: eager PyTorch (default), and the same functions compiled
with ``torch.compile`` into single fused loops, about five times faster on CPU after a one-off
compilation of roughly half a minute. Turn them on with :func:`use_compiled_kernels` or the
environment variable ``DYNAQUANT_COMPILE=1``; ``dynaquant train`` does so by default.

Example:
    >>> import torch
    >>> x = torch.tensor([-1.2, 0.26, 3.0], requires_grad=True)
    >>> fake_quantize(x, torch.tensor(0.5), torch.tensor(0.0), torch.tensor(-3.0), torch.tensor(3.0)).tolist()
    [-1.0, 0.5, 1.5]
"""

from __future__ import annotations

import math
import os
from typing import Callable, Optional, Sequence, Tuple

import torch
from torch import Tensor

__all__ = ["compiled_kernels_enabled", "fake_quantize", "mixture_gradient", "use_compiled_kernels"]

GradMultiplier = Callable[[Tensor], Optional[Tensor]]


def _sum_to_shape(t: Tensor, shape: Sequence[int]) -> Tensor:
    """Sum ``t`` over the dimensions that ``shape`` broadcasts."""
    extra = t.dim() - len(shape)
    if extra > 0:
        t = t.sum(dim=tuple(range(extra)))
    dims = tuple(i for i, size in enumerate(shape) if size == 1 and t.shape[i] != 1)
    if dims:
        t = t.sum(dim=dims, keepdim=True)
    return t.reshape(shape)


def _forward(x: Tensor, scale: Tensor, zero_point: Tensor, qmin: Tensor, qmax: Tensor) -> Tensor:
    q = torch.div(x, scale).add_(zero_point).round_().clamp_(qmin, qmax)
    return q.sub_(zero_point).mul_(scale)


def _backward(
    x: Tensor, scale: Tensor, zero_point: Tensor, qmin: Tensor, qmax: Tensor, grad: Tensor, beta: float
) -> Tuple[Tensor, Tensor, Tensor]:
    """``(grad_x, grad_scale, grad_zero_point)`` for DGM (``beta > 0``) or STE (``beta == 0``)."""
    u = x / scale + zero_point
    rounded = torch.round(u)
    inside = (rounded >= qmin) & (rounded <= qmax)
    if beta > 0:
        g = (beta / (2.0 * math.tanh(beta / 2.0))) * (1.0 - torch.tanh(beta * (u - torch.floor(u) - 0.5)) ** 2)
    else:
        g = torch.ones_like(u)
    grad_x = torch.where(inside, grad * g, 0.0)
    ds = torch.where(inside, rounded - zero_point - g * (u - zero_point), torch.clamp(rounded, qmin, qmax) - zero_point)
    grad_scale = _sum_to_shape(ds * grad, scale.shape)
    grad_zero_point = _sum_to_shape(grad_x - grad, zero_point.shape) * scale
    return grad_x, grad_scale, grad_zero_point


def _backward_with_multiplier(x, scale, zero_point, qmin, qmax, grad, multiplier: GradMultiplier):
    """Same as :func:`_backward` with an arbitrary rounding module's multiplier (eager only)."""
    u = torch.div(x, scale).add_(zero_point)
    rounded = torch.round(u)
    inside = (rounded >= qmin).logical_and_(rounded <= qmax)
    g = multiplier(u)
    grad_x = torch.where(inside, grad, 0.0)
    if g is not None:
        grad_x.mul_(g)
    centred = u.sub_(zero_point)
    if g is not None:
        centred.mul_(g)
    ds = torch.where(inside, rounded - centred, rounded.clamp_(qmin, qmax)).sub_(zero_point)
    grad_scale = _sum_to_shape(ds.mul_(grad), scale.shape)
    grad_zero_point = _sum_to_shape(grad_x - grad, zero_point.shape) * scale
    return grad_x, grad_scale, grad_zero_point


def _mixture_gradient(x: Tensor, grad: Tensor, scale: Tensor, zero_point: Tensor, qmin: Tensor, qmax: Tensor) -> Tensor:
    """``(N,)``: per sample, the dot product of ``grad`` with the quantized ``x``."""
    return torch.linalg.vecdot(grad.flatten(1), _forward(x, scale, zero_point, qmin, qmax).flatten(1))


def _pure_mixture_gradient(x, grad, scale, zero_point, qmin, qmax):
    return (grad * _pure_forward(x, scale, zero_point, qmin, qmax)).flatten(1).sum(1)


_kernels = {"forward": _forward, "backward": _backward, "mixture": _mixture_gradient}
_compiled: dict = {}
_RECOMPILE_LIMIT = 64


def use_compiled_kernels(enabled: bool = True) -> None:
    """Run the DGM/STE fake-quantization kernels compiled with ``torch.compile`` (or not)."""
    if enabled:
        # one compiled variant per layout (per-tensor / per-channel / per-sample steps, ranks,
        # size-1 dimensions): a codec needs more than dynamo's default of 8 per function
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, _RECOMPILE_LIMIT)
        if not _compiled:
            _compiled["forward"] = torch.compile(_pure_forward, dynamic=True)
            _compiled["backward"] = torch.compile(_backward, dynamic=True)
            _compiled["mixture"] = torch.compile(_pure_mixture_gradient, dynamic=True)
        _kernels.update(_compiled)
    else:
        _kernels.update(forward=_forward, backward=_backward, mixture=_mixture_gradient)


def compiled_kernels_enabled() -> bool:
    return _kernels["forward"] is not _forward


def _pure_forward(x: Tensor, scale: Tensor, zero_point: Tensor, qmin: Tensor, qmax: Tensor) -> Tensor:
    return (torch.clamp(torch.round(x / scale + zero_point), qmin, qmax) - zero_point) * scale


def mixture_gradient(x: Tensor, grad: Tensor, scale: Tensor, zero_point: Tensor, qmin: Tensor, qmax: Tensor) -> Tensor:
    """``(N,)`` gradient of one candidate's selection weight in ``sum_k w_nk Q_k(x)``:
    ``<grad_n, Q_k(x)_n>``, one fused pass with the compiled kernels."""
    with torch.no_grad():
        return _kernels["mixture"](*_plain(x, grad, scale, zero_point, qmin, qmax))


def _plain(*tensors: Tensor) -> Tuple[Tensor, ...]:
    """Detached, with 0-d bounds made rank-1: fewer variants for ``torch.compile`` to specialise on."""
    return tuple(t.detach().reshape(1) if t.dim() == 0 else t.detach() for t in tensors)


class _FakeQuantize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale, zero_point, qmin, qmax, beta, multiplier):
        ctx.save_for_backward(x, scale, zero_point, qmin, qmax)
        ctx.beta, ctx.multiplier = beta, multiplier
        return _kernels["forward"](*_plain(x, scale, zero_point, qmin, qmax))

    @staticmethod
    def backward(ctx, grad):
        saved = _plain(*ctx.saved_tensors)
        if ctx.multiplier is not None:
            grads = _backward_with_multiplier(*saved, grad, ctx.multiplier)
        else:
            grads = _kernels["backward"](*saved, grad.contiguous(), ctx.beta)
        return (*grads, None, None, None, None)


def fake_quantize(
    x: Tensor,
    scale: Tensor,
    zero_point: Tensor,
    qmin: Tensor,
    qmax: Tensor,
    beta: float = 0.0,
    multiplier: Optional[GradMultiplier] = None,
) -> Tensor:
    """Quantize-dequantize ``x`` with a float zero point (see the module docstring).

    Args:
        beta: DGM sharpness; 0 selects the straight-through estimator.
        multiplier: a rounding module's ``grad_multiplier`` to use instead of ``beta``.
    """
    return _FakeQuantize.apply(x, scale, zero_point, qmin, qmax, float(beta), multiplier)


if os.environ.get("DYNAQUANT_COMPILE", "") not in ("", "0"):
    use_compiled_kernels(True)
