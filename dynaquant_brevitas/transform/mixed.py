"""Static mixed precision: one (weight, activation) width pair per layer at a budget, from the
layer sensitivities, by an exact integer program (a multiple-choice knapsack, in the spirit of
HAWQ-V3): minimise the summed RD-cost increases subject to the budget.

Budgets read in bits for the whole model, as the reports give them:

* ``"bitops"``: average bits (BitOPs), ``sqrt(sum MACs w a / sum MACs)`` over every compute layer;
* ``"size"``: average weight bits, ``sum params w / sum params``.

Layers not in the sensitivity (float ones) count at 32 bits. Solved with SciPy's ``milp`` (HiGHS).

Example:
    >>> from dynaquant_brevitas.transform.sensitivity import Delta, Sensitivity
    >>> d = lambda c: Delta(0.0, 0.0, c)
    >>> sens = Sensitivity(["a", "b"], [4, 8], 0.01, d(1.0), {"a": {4: d(0.5), 8: d(0.0)}, "b": {4: d(0.01), 8: d(0.0)}},
    ...                    {}, {"a": 100.0, "b": 100.0}, {"a": 10, "b": 10})
    >>> mixed_profile(sens, budget=7.0, cost="bitops", activation_bits=(8,))
    {'a': (8, 8), 'b': (4, 8)}
"""

from __future__ import annotations

import itertools
import math
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .sensitivity import Sensitivity

__all__ = ["multiple_choice_knapsack", "mixed_profile", "profile_cost"]

FLOAT_BITS = 32


def profile_cost(sens: Sensitivity, profile: Mapping[str, Tuple[int, int]], cost: str = "bitops") -> float:
    """The model's average bits (``cost``: ``"bitops"`` or ``"size"``) under ``profile``, the float
    compute layers outside the sensitivity counted at 32 bits."""
    macs = {n: sens.macs[n] for n in profile}
    params = {n: sens.params[n] for n in profile}
    extra = {"float": (sens.extra.get("float_macs", 0.0), sens.extra.get("float_params", 0.0), FLOAT_BITS)}
    if cost == "bitops":
        total = sum(macs[n] * w * a for n, (w, a) in profile.items()) + sum(m * b * b for m, _, b in extra.values())
        return math.sqrt(total / (sum(macs.values()) + sum(m for m, _, _ in extra.values())))
    if cost == "size":
        total = sum(params[n] * w for n, (w, _) in profile.items()) + sum(p * b for _, p, b in extra.values())
        return total / (sum(params.values()) + sum(p for _, p, _ in extra.values()))
    raise ValueError(f"cost must be 'bitops' or 'size', not {cost!r}")


def mixed_profile(
    sens: Sensitivity,
    budget: float,
    cost: str = "bitops",
    weight_bits: Optional[Sequence[int]] = None,
    activation_bits: Optional[Sequence[int]] = None,
    layers: Optional[Sequence[str]] = None,
    fixed: Optional[Mapping[str, Tuple[int, int]]] = None,
) -> Dict[str, Tuple[int, int]]:
    """The per-layer (weight, activation) widths that minimise the summed RD-cost increase with the
    model's average bits (``cost``) at most ``budget``.

    Args:
        sens: the layer sensitivities (:func:`~dynaquant_brevitas.transform.sensitivity.sensitivity`).
        budget: the average bits allowed, read as ``cost`` says, for the whole model.
        cost: ``"bitops"`` or ``"size"`` (see the module docstring).
        weight_bits, activation_bits: the widths to choose from (default: the sensitivity's).
        layers: the layers to choose for (default: all of the sensitivity's); the others keep
            ``fixed``'s widths.
        fixed: widths of layers that are not chosen (default: the largest width, both parts).

    Raises:
        ValueError: if no profile fits the budget.
    """
    if cost not in ("bitops", "size"):
        raise ValueError(f"cost must be 'bitops' or 'size', not {cost!r}")
    weights = sorted(set(weight_bits or sens.widths))
    activations = sorted(set(activation_bits or sens.widths))
    missing = [b for b in weights if any(b not in sens.weight[n] for n in sens.layers)]
    missing += [b for b in activations if any(b not in sens.activation.get(n, {b: None}) for n in sens.layers)]
    if missing:
        raise ValueError(f"the sensitivity has no measurement at width(s) {sorted(set(missing))}")
    chosen = list(layers or sens.layers)
    top = (max(sens.widths), max(sens.widths))
    kept = {n: tuple(fixed.get(n, top)) if fixed else top for n in sens.layers if n not in chosen}
    pairs = list(itertools.product(weights, activations))
    if cost == "bitops":
        unit = {n: sens.macs[n] for n in sens.layers}
        price = lambda n, w, a: unit[n] * w * a  # noqa: E731
        limit = budget**2 * sum(unit.values())
    else:
        unit = {n: float(sens.params[n]) for n in sens.layers}
        price = lambda n, w, a: unit[n] * w  # noqa: E731
        limit = budget * sum(unit.values())
    floats = sens.extra.get("float_macs" if cost == "bitops" else "float_params", 0.0)  # float layers, 32 bits
    limit += (budget**2 * floats - floats * FLOAT_BITS**2) if cost == "bitops" else (budget - FLOAT_BITS) * floats
    limit -= sum(price(n, *kept[n]) for n in kept)
    objective = np.array([[sens.cost(n, *p) for p in pairs] for n in chosen])
    picked = multiple_choice_knapsack(objective, np.array([[price(n, *p) for p in pairs] for n in chosen]), limit)
    if picked is None:
        cheapest = profile_cost(sens, {**kept, **{n: (weights[0], activations[0]) for n in chosen}}, cost)
        raise ValueError(f"no profile fits an average of {budget} bits ({cost}); the cheapest gives {cheapest:.2f}")
    picked = {n: pairs[k] for n, k in zip(chosen, picked)}
    return {n: (picked[n] if n in picked else kept[n]) for n in sens.layers}


def multiple_choice_knapsack(values: np.ndarray, prices: np.ndarray, limit: float) -> Optional[List[int]]:
    """One option per row of ``values`` (rows x options) with the smallest summed value and the
    summed price at most ``limit``: a multiple-choice knapsack, solved exactly with SciPy's
    ``milp`` (HiGHS). ``None`` when no choice fits.

    >>> multiple_choice_knapsack(np.array([[0.0, 1.0], [0.0, 5.0]]), np.array([[2.0, 1.0], [2.0, 1.0]]), 3.0)
    [1, 0]
    """
    from scipy.optimize import Bounds, LinearConstraint, milp

    rows, options = values.shape
    result = milp(
        values.ravel(),
        constraints=[LinearConstraint(np.kron(np.eye(rows), np.ones((1, options))), 1, 1),
                     LinearConstraint(prices.reshape(1, -1), -np.inf, limit)],
        integrality=np.ones(rows * options),
        bounds=Bounds(0, 1),
    )
    if not result.success:
        return None
    return [int(np.argmax(row)) for row in result.x.reshape(rows, options)]
