"""Rounding estimators: exact rounding forward, a chosen surrogate gradient backward.

DynaQuant trains with the Distance-aware Gradient Modulator (DGM): the backward pass multiplies
the incoming gradient by the derivative of a smooth staircase,

    g'(u) = beta / (2 tanh(beta/2)) * sech^2(beta * (frac(u) - 1/2)),   frac(u) = u - floor(u),

so values close to a rounding boundary get a larger gradient than values sitting on a level.
As ``beta -> 0`` it becomes the straight-through estimator (STE), kept here as the baseline.

Each estimator exists as a function (``dgm_round``, ``ste_round``) and as a module that fits a
Brevitas quantizer's ``float_to_int_impl`` slot (``DGMRound``, ``STERound``); modules are looked up
by name with :func:`rounding_estimator`.

Example:
    >>> import torch
    >>> x = torch.tensor([0.2, 0.5, 1.7], requires_grad=True)
    >>> y = dgm_round(x, beta=2.0)
    >>> y.tolist()
    [0.0, 0.0, 2.0]
    >>> y.sum().backward()
    >>> [round(g, 4) for g in x.grad.tolist()]
    [0.9343, 1.313, 1.1235]
"""

from __future__ import annotations

import inspect
import math

import torch
from torch import Tensor, nn

from ..registry import lookup, register_estimator

__all__ = ["dgm_gradient", "dgm_round", "ste_round", "DGMRound", "STERound", "rounding_estimator"]


def _check_beta(beta: float) -> float:
    beta = float(beta)
    if not math.isfinite(beta) or beta <= 0:
        raise ValueError(f"beta must be a finite number > 0 (got {beta}); a small beta approaches STE")
    return beta


def dgm_gradient(x: Tensor, beta: float = 1.0) -> Tensor:
    """The DGM gradient multiplier at ``x``: ``beta/(2 tanh(beta/2)) * sech^2(beta (frac(x) - 1/2))``."""
    return _dgm_multiplier(x, _check_beta(beta))


def _dgm_multiplier(x: Tensor, beta: float) -> Tensor:
    norm = beta / (2.0 * math.tanh(beta / 2.0))
    if torch.is_grad_enabled() and x.requires_grad:  # differentiable, out of place
        # sech^2 = 1 - tanh^2 does not overflow for large beta, unlike 1 / cosh^2.
        return norm * (1.0 - torch.tanh(beta * (x - torch.floor(x) - 0.5)) ** 2)
    # Same operations and results in one buffer updated in place: activation-sized allocations
    # otherwise dominate the backward pass on CPU.
    out = torch.floor(x).neg_().add_(x)  # frac(x)
    return out.sub_(0.5).mul_(beta).tanh_().square_().neg_().add_(1.0).mul_(norm)


class _DGMRoundFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, beta: float) -> Tensor:
        ctx.save_for_backward(x)
        ctx.beta = beta
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        (x,) = ctx.saved_tensors
        if torch.is_grad_enabled():  # double backward (create_graph=True): out of place
            return grad_output * _dgm_multiplier(x, ctx.beta), None
        return _dgm_multiplier(x, ctx.beta).mul_(grad_output), None


class _STERoundFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> Tensor:
        return grad_output


def dgm_round(x: Tensor, beta: float = 1.0) -> Tensor:
    """Round to nearest (ties to even, as ``torch.round``) with the DGM gradient.

    Raises:
        ValueError: if ``beta`` is not a finite number greater than 0.
    """
    return _DGMRoundFunction.apply(x, _check_beta(beta))


def ste_round(x: Tensor) -> Tensor:
    """Round to nearest with the straight-through gradient (identity backward)."""
    return _STERoundFunction.apply(x)


@register_estimator("dgm")
class DGMRound(nn.Module):
    """DGM rounding as a module, for a Brevitas quantizer's ``float_to_int_impl`` slot.

    Brevitas builds it by dependency injection: ``rounding_beta`` is read from the quantizer.

    Example:
        >>> DGMRound(rounding_beta=4.0)(torch.tensor([1.4, -2.6])).tolist()
        [1.0, -3.0]
    """

    def __init__(self, rounding_beta: float = 1.0) -> None:
        super().__init__()
        self.beta = _check_beta(rounding_beta)

    def forward(self, x: Tensor) -> Tensor:
        return _DGMRoundFunction.apply(x, self.beta)

    def grad_multiplier(self, u: Tensor) -> Tensor:
        """The backward multiplier at ``u`` (lets fused quantizers skip the autograd chain)."""
        return dgm_gradient(u, self.beta)

    def extra_repr(self) -> str:
        return f"beta={self.beta}"


@register_estimator("ste")
class STERound(nn.Module):
    """Straight-through rounding as a module (the baseline estimator).

    Example:
        >>> STERound()(torch.tensor([0.5, 1.5])).tolist()
        [0.0, 2.0]
    """

    def __init__(self) -> None:
        super().__init__()

    def forward(self, x: Tensor) -> Tensor:
        return _STERoundFunction.apply(x)

    def grad_multiplier(self, u: Tensor) -> None:
        """Identity backward: no multiplier."""
        return None


def rounding_estimator(name: str, beta: float = 1.0) -> nn.Module:
    """Build the rounding module registered as ``name`` (``"dgm"`` or ``"ste"`` built in).

    ``beta`` goes to classes whose constructor takes ``rounding_beta`` (as Brevitas injects it).

    Example:
        >>> rounding_estimator("dgm", beta=2.0)
        DGMRound(beta=2.0)
    """
    cls = lookup("estimator", name)
    if "rounding_beta" in inspect.signature(cls.__init__).parameters:
        return cls(rounding_beta=beta)
    return cls()
