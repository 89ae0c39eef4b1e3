"""The rate-distortion(-bits) loss and the controller that steers the bit-loss weight to a target.

Example:
    >>> x = torch.rand(1, 3, 8, 8)
    >>> out = {"x_hat": x, "likelihoods": {"y": torch.full((1, 4, 2, 2), 0.5)}}
    >>> float(rd_loss(out, x, lmbda=0.01)["bpp"])   # 16 symbols of 1 bit over 64 pixels
    0.25
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from pytorch_msssim import ms_ssim

from ..transform import bit_cost as cost_of_choices
from ..transform import bit_loss

__all__ = ["GammaController", "bpp_of", "choice_information", "distortion", "rd_loss"]


def bpp_of(out: Mapping[str, Any], num_pixels: int) -> torch.Tensor:
    """Estimated bits per pixel from CompressAI's ``out["likelihoods"]``."""
    return sum(torch.log2(lik).sum() for lik in out["likelihoods"].values()) / -num_pixels


def rd_loss(
    out: Mapping[str, Any],
    x: torch.Tensor,
    lmbda: float,
    metric: str = "mse",
    gamma: float = 0.0,
    bit_cost: str = "layers",
    diversity: float = 0.0,
) -> dict[str, torch.Tensor]:
    """Rate-distortion(-bits) loss terms; ``loss`` is the one to minimise.

    With dynamic layers, ``bits`` is the bit loss under ``bit_cost`` (``"layers"``, ``"bitops"`` or
    ``"size"``, see :mod:`~dynaquant_brevitas.transform.cost`) and ``chosen_bits`` what the
    choices made cost under the same definition (what a bit target is measured against).
    ``information`` is the mutual information between image and choice (:func:`choice_information`);
    ``diversity`` weighs it as a reward.

    >>> x = torch.rand(1, 3, 8, 8)
    >>> out = {"x_hat": x, "likelihoods": {"y": torch.full((1, 4, 2, 2), 0.5)}}
    >>> float(rd_loss(out, x, lmbda=0.01)["bpp"])   # 16 symbols of 1 bit over 64 pixels
    0.25
    """
    n, _, h, w = x.shape
    terms = {"bpp": bpp_of(out, n * h * w), "mse": torch.mean((out["x_hat"] - x) ** 2)}
    measured = distortion(out["x_hat"], x, metric)
    if metric == "ms-ssim":
        terms["ms_ssim"] = 1 - measured
    terms["loss"] = terms["bpp"] + lmbda * measured
    record = out.get("bits")
    if isinstance(record, Mapping) and record.get("layers"):
        terms["bits"] = bit_loss(out, bit_cost)
        terms["chosen_bits"] = cost_of_choices(record, bit_cost, hard=True).mean()
        terms["information"] = choice_information(record["probs"])
        terms["loss"] = terms["loss"] + gamma * terms["bits"] - diversity * terms["information"]
    return terms


def distortion(x_hat: torch.Tensor, x: torch.Tensor, metric: str = "mse") -> torch.Tensor:
    """The distortion term's measure: ``255^2 * MSE`` or ``1 - MS-SSIM`` (images in [0, 1]).

    >>> float(distortion(torch.full((1, 3, 4, 4), 0.5), torch.zeros(1, 3, 4, 4)))
    16256.25
    """
    if metric == "ms-ssim":
        return 1 - ms_ssim(x_hat, x, data_range=1.0)
    return 255**2 * torch.mean((x_hat - x) ** 2)


def choice_information(probs: torch.Tensor) -> torch.Tensor:
    """Mutual information in bits between the image and the choice, averaged over layers:
    ``H(mean_n p_n) - mean_n H(p_n)`` for ``probs`` (N, L, K). 0 when every image gets the same
    distribution; high when each image is confident and the images differ.

    >>> round(float(choice_information(torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]]))), 3)
    1.0
    """
    def entropy(p: torch.Tensor) -> torch.Tensor:
        return -(p * torch.log2(p.clamp_min(1e-12))).sum(-1)

    return (entropy(probs.mean(0)) - entropy(probs).mean(0)).mean()


class GammaController:
    """Proportional-integral control of ``gamma`` so the average bit width settles at ``target``.

    ``gamma = max(0, gamma0 + kp * e + ki * sum(e))`` with ``e`` the moving average of chosen bits
    minus the target: too many bits raise the bit penalty.

    >>> c = GammaController(target=6.0, gamma0=0.0, kp=0.1, ki=0.01)
    >>> c.update(8.0) > 0
    True
    """

    def __init__(self, target: float, gamma0: float, kp: float, ki: float, ema: float = 0.9) -> None:
        self.target, self.gamma0, self.kp, self.ki, self.ema = target, gamma0, kp, ki, ema
        self.integral = 0.0
        self.avg_bits: float | None = None
        self.gamma = gamma0

    def update(self, bits: float) -> float:
        """Feed the latest batch's average chosen bits; returns the new ``gamma``."""
        self.avg_bits = bits if self.avg_bits is None else self.ema * self.avg_bits + (1 - self.ema) * bits
        error = self.avg_bits - self.target
        integral = self.integral + error
        # Anti-windup: stop integrating downwards while gamma is pinned at 0.
        if self.gamma0 + self.kp * error + self.ki * integral >= 0 or error > 0:
            self.integral = integral
        self.gamma = max(0.0, self.gamma0 + self.kp * error + self.ki * self.integral)
        return self.gamma

    def state_dict(self) -> dict[str, Any]:
        return {"integral": self.integral, "avg_bits": self.avg_bits, "gamma": self.gamma}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.integral, self.avg_bits, self.gamma = state["integral"], state["avg_bits"], state["gamma"]
