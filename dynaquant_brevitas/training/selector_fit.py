"""Fit the bit-width selectors to measured per-image costs, the codec held fixed.

Trained jointly with the codec through the Gumbel-softmax, the selectors settle on one profile
for every image (benchmarks/selector_study.py): the bit loss moves every image's logits the same
way, and a few hundred steps teach the MLP its bias long before its weights. Here they learn
from a table instead:

* :func:`choice_table`: on training crops, the change of the RD cost (estimated bpp
  ``+ lambda 255^2 MSE``) when one dynamic layer moves from a base profile to each candidate,
  the others kept (a per-image layer sensitivity), and the statistics each selector reads;
* :func:`fit_selectors`: the selectors' MLPs minimise the expected change plus ``mu`` times the
  expected bit cost, a cost-sensitive classifier; ``mu`` is found by bisection so that the
  choices on the crops average at most the budget. The report compares, on held-out crops and
  under the same additive model, the fitted selectors with the best single profile (an exact
  multiple-choice knapsack) and with the per-image oracle at the same average cost.

Example:
    >>> import torch
    >>> from compressai.models import ScaleHyperprior
    >>> from dynaquant_brevitas import DynaQuantConfig, calibrate, dynaquantize
    >>> model = dynaquantize(ScaleHyperprior(8, 12), DynaQuantConfig(weight_bits=(4, 8), activation_bits=(8,)))
    >>> crops = torch.rand(8, 3, 64, 64)
    >>> calibrate(model, [crops])
    >>> table = choice_table(model, crops, lmbda=0.013)
    >>> table.delta.shape  # crops x dynamic layers x candidates
    torch.Size([8, 6, 2])
    >>> report = fit_selectors(model, table, budget=7.0, cost="layers", steps=20)
    >>> report["dynamic"]["cost"] <= 7.0 + 1e-6
    True
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn import Selection, as_pair
from ..transform import DECODER, ENCODER, bit_cost, dynaquant_state, freeze, resolve_profile
from ..transform.mixed import multiple_choice_knapsack
from ..transform.sensitivity import per_image_rd

__all__ = ["ChoiceTable", "choice_table", "choices_at_price", "fit_selectors", "score_choices", "split_rows"]


@dataclass
class ChoiceTable:
    """Per training crop, what each dynamic layer's candidates change in RD cost.

    Attributes:
        layers: the dynamic layers, encoder side first (selector order).
        candidates: the (weight, activation) candidates.
        base: the profile the changes are measured from.
        delta: ``(crops, layers, candidates)`` RD-cost change of moving that one layer to that
            candidate (0 at the base's own candidate).
        statistics: per side, the ``(mean, spread, energy)`` the selector read on each crop.
        reference: ``(crops,)`` RD cost of each crop at the base profile.
    """

    layers: List[str]
    candidates: Tuple
    base: Dict[str, Tuple[int, int]]
    delta: Tensor
    statistics: Dict[str, Tuple[Tensor, Tensor, Tensor]]
    reference: Optional[Tensor] = None


def _statistics(model: nn.Module, crops: Tensor, base: Mapping[str, Tuple[int, int]]
                ) -> Dict[str, Tuple[Tensor, Tensor, Tensor]]:
    """What each selector reads on ``crops`` with every dynamic layer at ``base`` (the decoder's
    features depend on the encoder's widths)."""
    state = dynaquant_state(model)
    pairs = [as_pair(c) for c in state.config.pairs]
    seen: Dict[str, Tuple[Tensor, ...]] = {}

    def read(side: str):
        def record(selector: nn.Module, inputs: tuple) -> None:
            seen[side] = tuple(t.detach().clone() for t in selector.statistics(inputs[0]))
        return record

    def at_base(side: str):
        index = torch.tensor([pairs.index(tuple(base[n])) for n in state.layer_names[side]])

        def choose(selector: nn.Module, inputs: tuple, selection: Selection) -> Selection:
            onehot = F.one_hot(index, len(pairs)).to(selection.probs.dtype).expand(inputs[0].shape[0], -1, -1)
            return Selection(probs=onehot, weights=onehot, candidates=selection.candidates)
        return choose

    handles = []
    for side, selector in state.selectors.items():
        handles += [selector.register_forward_pre_hook(read(side)), selector.register_forward_hook(at_base(side))]
    try:
        model(crops)
    finally:
        for handle in handles:
            handle.remove()
    return seen


@torch.no_grad()
def choice_table(
    model: nn.Module,
    crops: Tensor,
    lmbda: float,
    base: Optional[Mapping[str, Any]] = None,
    batch_size: int = 32,
) -> ChoiceTable:
    """Measure a :class:`ChoiceTable` of a dynaquantized model on ``crops`` ``(N, 3, H, W)``.

    ``base`` is a profile (default: each layer's most frequent choice on the crops). Runs
    ``1 + layers (candidates - 1)`` forward passes over the crops.
    """
    state = dynaquant_state(model)
    if not state.selectors:
        raise ValueError("the model has no dynamic layers: nothing to select")
    was_training = model.training
    model.eval()
    try:
        batches = list(crops.split(batch_size))
        base = resolve_profile(model, "mode" if base is None else base, images=batches)
        layers = [n for side in (ENCODER, DECODER) for n in state.layer_names[side]]
        pairs = tuple(as_pair(c) for c in state.config.pairs)

        def rd(profile: Mapping[str, Tuple[int, int]]) -> Tensor:
            frozen = freeze(model, profile).eval()
            return torch.cat([per_image_rd(frozen, x, lmbda) for x in batches])

        reference = rd(base)
        delta = torch.zeros(len(crops), len(layers), len(pairs), dtype=torch.float64)
        for l, name in enumerate(layers):
            for k, pair in enumerate(pairs):
                if pair != tuple(base[name]):
                    delta[:, l, k] = rd({**base, name: pair}) - reference
        parts = [_statistics(model, x, base) for x in batches]
        statistics = {side: tuple(torch.cat([p[side][i] for p in parts]) for i in range(3)) for side in parts[0]}
    finally:
        model.train(was_training)
    return ChoiceTable(layers, pairs, {n: tuple(base[n]) for n in layers}, delta, statistics, reference)


def _cost(model: nn.Module, probs: Tensor, cost: str) -> Tensor:
    """Per image, the bits ``probs`` ``(N, L, K)`` (soft or one-hot) cost under ``cost``."""
    state = dynaquant_state(model)
    record = {"probs": probs, "weights": probs, "candidates": state.config.pairs, "costs": state.costs}
    return bit_cost(record, cost).to(probs.dtype)


def _train(model: nn.Module, table: ChoiceTable, rows: Tensor, mu: float, cost: str, steps: int, lr: float,
           weight_decay: float, seed: int) -> Dict[str, nn.Module]:
    """Selectors (copies) trained on ``rows`` of ``table`` at the bit price ``mu``."""
    torch.manual_seed(seed)
    state = dynaquant_state(model)
    selectors = {side: copy.deepcopy(state.selectors[side]).train() for side in (ENCODER, DECODER)
                 if side in state.selectors}
    params = [p for s in selectors.values() for p in s.parameters()]
    optimiser = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    delta = table.delta[rows].float()
    for _ in range(steps):
        probs = _probs(selectors, table, rows)
        loss = (probs * delta).sum((1, 2)).mean() + mu * _cost(model, probs, cost).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    for selector in selectors.values():
        selector.eval()
    return selectors


def _probs(selectors: Mapping[str, nn.Module], table: ChoiceTable, rows: Tensor) -> Tensor:
    parts = [selectors[side].logits(selectors[side].embed(*(t[rows] for t in table.statistics[side])))
             for side in (ENCODER, DECODER) if side in selectors]
    return torch.cat(parts, dim=1).softmax(-1)


def _choices(selectors: Mapping[str, nn.Module], table: ChoiceTable, rows: Tensor) -> Tensor:
    with torch.no_grad():
        return _probs(selectors, table, rows).argmax(-1)


def _outcome(model: nn.Module, table: ChoiceTable, rows: Tensor, choices: Tensor, cost: str, layers_of: Dict[str, slice]
             ) -> Dict[str, Any]:
    """Mean RD-cost change (additive model), mean bits and per-side diversity of ``choices`` (N, L)."""
    onehot = torch.nn.functional.one_hot(choices, len(table.candidates)).to(torch.float64)
    out: Dict[str, Any] = {
        "delta_rd": float((onehot * table.delta[rows]).sum((1, 2)).mean()),
        "cost": float(_cost(model, onehot, cost).mean()),
    }
    for side, part in layers_of.items():
        side_choices = choices[:, part]
        mode = side_choices.mode(0).values
        out[f"diversity_{side}"] = float((side_choices != mode).any(1).double().mean())
    return out


def _prices(model: nn.Module, pairs: Sequence[Tuple[int, int]], cost: str, budget: float) -> Tuple[Tensor, float]:
    """``(layers, candidates)`` prices and the limit that make ``cost <= budget`` linear."""
    costs = dynaquant_state(model).costs
    w = torch.tensor([p[0] for p in pairs], dtype=torch.float64)
    a = torch.tensor([p[1] for p in pairs], dtype=torch.float64)
    if cost == "bitops":
        return costs.macs[:, None] * (w * a)[None], budget**2 * (costs.fixed_macs + float(costs.macs.sum())) - costs.fixed_bitops
    if cost == "size":
        return costs.params[:, None] * w[None], budget * (costs.fixed_params + float(costs.params.sum())) - costs.fixed_weight_bits
    layers = len(costs.macs)
    return (w * a).sqrt()[None].expand(layers, -1) / layers, float(budget)


def _static_and_oracle(model: nn.Module, table: ChoiceTable, rows: Tensor, budget: float, cost: str
                       ) -> Tuple[Tensor, Tensor]:
    """The best single profile for all ``rows`` and the best profile per row, both at an average
    of at most ``budget`` (exact multiple-choice knapsacks under the additive model)."""
    prices, limit = _prices(model, table.candidates, cost, budget)
    delta = table.delta[rows]
    single = torch.tensor(multiple_choice_knapsack(delta.mean(0).numpy(), prices.numpy(), limit))
    n = len(rows)
    per_row = multiple_choice_knapsack(delta.reshape(n * len(table.layers), -1).numpy(),
                               (prices.repeat(n, 1) / n).numpy(), limit)
    return single.expand(n, -1), torch.tensor(per_row).view(n, -1)


def fit_selectors(
    model: nn.Module,
    table: ChoiceTable,
    budget: float,
    cost: str = "bitops",
    steps: int = 300,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    holdout: float = 0.25,
    seed: int = 0,
    iterations: int = 12,
) -> Dict[str, Any]:
    """Train the selectors of ``model`` on ``table`` at an average of ``budget`` bits and install them.

    Args:
        model: the dynaquantized model the table was measured on (its selectors are replaced).
        table: from :func:`choice_table`.
        budget: the average bits the choices may cost on the training crops, in ``cost``
            (``"bitops"``, ``"size"`` or ``"layers"``; see :mod:`~dynaquant_brevitas.transform.cost`).
        steps, lr, weight_decay: Adam on the selectors' parameters, for each trial price.
        holdout: the share of crops kept out of the fit for the report.
        iterations: bisection steps on the bit price ``mu``.

    Returns:
        ``{"base_rd", "mu", "budget", "cost", "dynamic", "static", "oracle", "train"}``: on the
        held-out crops, the mean RD cost at the base profile (``base_rd``) and
        the mean RD-cost change from the base, the mean bits and the diversity per side of the
        fitted selectors, of the best single profile and of the per-image oracle (both at the
        selectors' own held-out cost); ``train``: the fitted selectors on the training crops.

    Raises:
        ValueError: if even the cheapest choices exceed the budget.
    """
    train_rows, test_rows = split_rows(table.delta.shape[0], holdout, seed)
    layers_of = _layers_of(model)

    def trial(mu: float) -> Tuple[Dict[str, nn.Module], float]:
        selectors = _train(model, table, train_rows, mu, cost, steps, lr, weight_decay, seed)
        return selectors, _outcome(model, table, train_rows, _choices(selectors, table, train_rows), cost, layers_of)["cost"]

    mu, (best, spent) = 0.0, trial(0.0)
    if spent > budget:
        low, mu = 0.0, 1e-3
        best, spent = trial(mu)
        while spent > budget:
            if mu > 1e6:
                raise ValueError(f"no choice of the selectors averages {budget} bits ({cost}) or fewer on these crops")
            low, mu = mu, mu * 4
            best, spent = trial(mu)
        for _ in range(iterations):
            selectors, mid_spent = trial((low + mu) / 2)
            if mid_spent <= budget:
                mu, best = (low + mu) / 2, selectors
            else:
                low = (low + mu) / 2
    for side, selector in best.items():
        dynaquant_state(model).selectors[side].load_state_dict(selector.state_dict())
    base_rd = float(table.reference[test_rows].mean()) if table.reference is not None else None
    return {
        "base_rd": base_rd,
        "mu": mu,
        "budget": budget,
        "cost": cost,
        "crops": {"train": len(train_rows), "held_out": 0 if test_rows is train_rows else len(test_rows)},
        **score_choices(model, table, test_rows, _choices(best, table, test_rows), cost),
        "train": _outcome(model, table, train_rows, _choices(best, table, train_rows), cost, layers_of),
    }


def split_rows(count: int, holdout: float = 0.25, seed: int = 0) -> Tuple[Tensor, Tensor]:
    """``(train, held_out)`` row indices of a table of ``count`` crops, as :func:`fit_selectors`
    splits them (both all rows when nothing is held out).

    >>> train, held_out = split_rows(8, holdout=0.25)
    >>> len(train), len(held_out)
    (6, 2)
    """
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    held = max(1, int(round(holdout * count))) if count > 1 and holdout > 0 else 0
    return (order[held:], order[:held]) if held else (order, order)


def score_choices(model: nn.Module, table: ChoiceTable, rows: Tensor, choices: Tensor, cost: str = "bitops"
                  ) -> Dict[str, Any]:
    """Per-crop ``choices`` ``(len(rows), layers)`` (candidate indices) on ``rows`` of ``table``
    against the best single profile and the per-crop oracle at the same average cost.

    Returns ``{"dynamic", "static", "oracle"}``, each with the mean RD-cost change from the base
    (``delta_rd``, additive model), the mean bits under ``cost`` and the diversity per side;
    ``static`` also names its ``profile``.
    """
    layers_of = _layers_of(model)
    dynamic = _outcome(model, table, rows, choices, cost, layers_of)
    single, oracle = _static_and_oracle(model, table, rows, dynamic["cost"], cost)
    return {
        "dynamic": dynamic,
        "static": dict(_outcome(model, table, rows, single, cost, layers_of),
                       profile={n: list(table.candidates[k]) for n, k in zip(table.layers, single[0].tolist())}),
        "oracle": _outcome(model, table, rows, oracle, cost, layers_of),
    }


def choices_at_price(model: nn.Module, table: ChoiceTable, delta: Tensor, price: float, cost: str = "bitops") -> Tensor:
    """Per crop and layer, the candidate with the least ``delta`` (``(crops, layers, candidates)``,
    e.g. predicted RD-cost changes) plus ``price`` times its bit cost under ``cost`` (scaled so that
    the dearest candidate of any layer costs 1)."""
    prices, _ = _prices(model, table.candidates, cost, 1.0)
    return (delta + price * prices / prices.abs().max()).argmin(-1)


def _layers_of(model: nn.Module) -> Dict[str, slice]:
    """Each selector side's slice of the table's layers (encoder side first)."""
    state = dynaquant_state(model)
    layers_of, start = {}, 0
    for side in (ENCODER, DECODER):
        if side in state.selectors:
            size = len(state.layer_names[side])
            layers_of[side], start = slice(start, start + size), start + size
    return layers_of
