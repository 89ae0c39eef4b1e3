"""The oracle bound: the most per-image adaptation could gain on a model.

Given a set of static profiles (each a width pair per dynamic layer), every image is coded with
every profile (estimated rate from the likelihoods, distortion as MSE); then

* the *best single profile*: the one profile, of those whose cost is within the budget, with the
  lowest mean RD cost ``bpp + lambda * 255^2 * MSE`` over all images;
* the *oracle*: each image gets the profile that suits it, the average cost over the images at
  most the single profile's own cost, so that both spend the same bits (a multiple-choice
  knapsack over images, solved exactly with SciPy's ``milp``).

The oracle gain (mean RD cost of the single profile over the oracle's, in percent) bounds what a
selector that reads the image could win at that budget with these profiles.

Example:
    >>> rd = [[1.0, 0.7, 0.5], [1.0, 1.05, 1.0]]  # two images, three profiles
    >>> costs = [5.0, 6.0, 7.0]
    >>> result = oracle_choice(rd, costs, budget=6.0)
    >>> result["single"], result["oracle"]  # the detailed image gets 7 bits, the flat one 5
    (1, [2, 0])
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..transform import freeze
from ..transform.cost import average_bits, layer_macs
from ..transform.mixed import multiple_choice_knapsack

__all__ = ["oracle_bound", "oracle_choice"]


def oracle_choice(rd: Sequence[Sequence[float]], costs: Sequence[float], budget: float) -> Dict[str, Any]:
    """Best single profile within ``budget`` and the per-image oracle at that profile's cost, for an
    ``rd[image][profile]`` table and per-profile ``costs`` (average bits).

    Raises:
        ValueError: if no profile is within the budget.
    """
    table = np.asarray(rd, dtype=float)
    costs = np.asarray(costs, dtype=float)
    allowed = np.flatnonzero(costs <= budget + 1e-9)
    if allowed.size == 0:
        raise ValueError(f"no profile costs at most {budget} bits (the cheapest: {costs.min():.3f})")
    single = int(allowed[np.argmin(table[:, allowed].mean(axis=0))])
    images = table.shape[0]
    oracle = multiple_choice_knapsack(table, np.tile(costs / images, (images, 1)), costs[single] + 1e-9)
    return {"single": single, "oracle": oracle}


@torch.no_grad()
def _rd_per_image(model: nn.Module, images: Sequence[Tensor], lmbda: float) -> List[Dict[str, float]]:
    out = []
    for x in images:
        x = x if x.dim() == 4 else x.unsqueeze(0)
        result = model(x)
        pixels = x.shape[2] * x.shape[3]
        bpp = float(sum(torch.log2(lik).sum() for lik in result["likelihoods"].values())) / -pixels
        mse = float(torch.mean((result["x_hat"].clamp(0, 1) - x) ** 2))
        out.append({"bpp": bpp, "mse": mse, "rd": bpp + lmbda * 255**2 * mse})
    return out


def oracle_bound(
    model: nn.Module,
    images: Sequence[Tensor],
    profiles: Sequence[Mapping[str, Any]],
    lmbda: float,
    budget: float,
    cost: str = "bits_bitops",
) -> Dict[str, Any]:
    """Code every image with every profile of a dynaquantized ``model`` and compare the best single
    profile within ``budget`` with the per-image oracle at that profile's cost (see the module
    docstring).

    Args:
        model: a dynaquantized model (its weights; its selectors are not used).
        images: images ``(3, H, W)`` or ``(1, 3, H, W)`` in [0, 1], sides multiples of 64.
        profiles: static profiles (``freeze`` mappings of the dynamic layers).
        lmbda: the RD trade-off.
        budget: the average bits allowed, in ``cost`` (``"bits_bitops"`` or ``"bits_per_param"``).
    """
    macs = layer_macs(model, (1, 3, 64, 64))
    costs, rd = [], []
    for profile in profiles:
        frozen = freeze(model, profile).eval()
        costs.append(average_bits(frozen, macs)[cost])
        rd.append(_rd_per_image(frozen, images, lmbda))
    table = [[rd[p][i]["rd"] for p in range(len(profiles))] for i in range(len(images))]
    choice = oracle_choice(table, costs, budget)
    single = [rd[choice["single"]][i] for i in range(len(images))]
    oracle = [rd[p][i] for i, p in enumerate(choice["oracle"])]
    mean = lambda rows, key: float(np.mean([r[key] for r in rows]))  # noqa: E731
    return {
        "budget": budget,
        "cost": cost,
        "profile_costs": costs,
        "single_profile": choice["single"],
        "single": {key: mean(single, key) for key in ("bpp", "mse", "rd")},
        "single_cost": costs[choice["single"]],
        "oracle_profiles": choice["oracle"],
        "oracle": {key: mean(oracle, key) for key in ("bpp", "mse", "rd")},
        "oracle_cost": float(np.mean([costs[p] for p in choice["oracle"]])),
        "oracle_gain_pct": 100.0 * (mean(single, "rd") - mean(oracle, "rd")) / mean(single, "rd"),
        "images_off_single": sum(p != choice["single"] for p in choice["oracle"]) / len(images),
        "per_image_rd": table,
    }
