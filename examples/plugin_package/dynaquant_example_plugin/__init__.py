"""An example dynaquant plugin: the ``triangle`` rounding estimator and a ``ScaledConv2d`` handler.

dynaquant finds this module through the entry point ``example`` in the group ``dynaquant``
(see ``pyproject.toml``) and calls the functions marked with ``hookimpl``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from dynaquant_brevitas.nn import DynaQuantConv2d
from dynaquant_brevitas.registry import hookimpl

__version__ = "0.1.0"


def triangle_multiplier(u: Tensor) -> Tensor:
    """``1.5 - 2 |frac(u) - 1/2|``: 1.5 at a rounding boundary, 0.5 on a level, mean 1."""
    return 1.5 - 2.0 * (u - torch.floor(u) - 0.5).abs()


class TriangleRound(nn.Module):
    """Round to nearest; the gradient is scaled by :func:`triangle_multiplier`.

    Fits a Brevitas quantizer's ``float_to_int_impl`` slot (explicit no-argument ``__init__``).
    ``grad_multiplier`` lets DynaQuant's fused quantizer use the same gradient without autograd.
    """

    def __init__(self) -> None:
        super().__init__()

    def forward(self, x: Tensor) -> Tensor:
        # value round(x); gradient triangle_multiplier(x) (the second term is zero in value)
        return torch.round(x).detach() + (x - x.detach()) * triangle_multiplier(x).detach()

    def grad_multiplier(self, u: Tensor) -> Tensor:
        return triangle_multiplier(u)


class ScaledConv2d(nn.Conv2d):
    """A convolution followed by a learned per-channel gain (a layer of the plugin's own)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gain = nn.Parameter(torch.ones(self.out_channels, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x) * self.gain


class DynaQuantScaledConv2d(DynaQuantConv2d):
    """DynaQuant version of :class:`ScaledConv2d`: quantized convolution, float gain."""

    float_class = ScaledConv2d

    @classmethod
    def from_float(cls, module: ScaledConv2d, bits: int = 8, **options: Any) -> "DynaQuantScaledConv2d":
        layer = super().from_float(module, bits, **options)
        layer.gain = nn.Parameter(module.gain.detach().clone())
        return layer

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x) * self.gain


@hookimpl
def dynaquant_rounding_estimators():
    return {"triangle": TriangleRound}


@hookimpl
def dynaquant_layer_handlers():
    return {ScaledConv2d: DynaQuantScaledConv2d}
