"""Per-image selection: the diagnostics (histograms, entropy, diversity) and the oracle bound."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from compressai.models import ScaleHyperprior

from dynaquant_brevitas import DynaQuantConfig, calibrate, dynaquantize
from dynaquant_brevitas.evaluation.oracle import oracle_bound, oracle_choice
from dynaquant_brevitas.transform.report import bit_report, choice_entropy, diversity


def test_diversity_and_entropy_by_hand():
    assert diversity([(8,), (8,), (8,)]) == 0.0
    assert diversity([(4,), (8,), (6,), (8,)]) == 0.5
    assert choice_entropy({"4": 1, "8": 1, "6": 2}) == pytest.approx(1.5)


def test_oracle_choice_is_the_brute_force_optimum():
    rng = np.random.default_rng(0)
    for _ in range(5):
        rd = rng.uniform(1, 2, size=(4, 3))
        costs = rng.uniform(4, 8, size=3)
        budget = float(np.sort(costs)[1])
        got = oracle_choice(rd, costs, budget)
        allowed = [p for p in range(3) if costs[p] <= budget + 1e-9]
        assert got["single"] == min(allowed, key=lambda p: rd[:, p].mean())
        spend = costs[got["single"]]  # the oracle spends no more than the single profile
        feasible = [c for c in itertools.product(range(3), repeat=4) if np.mean(costs[list(c)]) <= spend + 1e-9]
        best = min(feasible, key=lambda c: rd[np.arange(4), list(c)].sum())
        assert rd[np.arange(4), got["oracle"]].sum() == pytest.approx(rd[np.arange(4), list(best)].sum())
    with pytest.raises(ValueError, match="no profile"):
        oracle_choice([[1.0]], [9.0], 8.0)


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    model = dynaquantize(ScaleHyperprior(8, 12), DynaQuantConfig(weight_bits=(4, 8), activation_bits=(8,)))
    calibrate(model, [torch.rand(2, 3, 64, 64)])
    return model.eval()


def test_oracle_bound_on_a_tiny_model_is_never_worse_than_one_profile(tiny):
    names = tiny.dynaquant.layer_names["encoder"] + tiny.dynaquant.layer_names["decoder"]
    profiles = [{n: [w, 8] for n in names} for w in (4, 8)] + [{n: [4 if i % 2 else 8, 8] for i, n in enumerate(names)}]
    images = [torch.rand(1, 3, 64, 64) for _ in range(3)]
    result = oracle_bound(tiny, images, profiles, lmbda=0.013, budget=7.0)
    assert result["oracle"]["rd"] <= result["single"]["rd"] + 1e-9 and result["oracle_gain_pct"] >= 0
    assert result["oracle_cost"] <= result["single_cost"] + 1e-9 <= 7.0 + 2e-9 and result["profile_costs"][0] < result["profile_costs"][1]
    assert len(result["oracle_profiles"]) == 3 and 0 <= result["images_off_single"] <= 1


def test_report_counts_weight_and_activation_pairs(tiny):
    report = bit_report(tiny, [torch.rand(3, 64, 64) for _ in range(4)])
    for name in report.layers:
        assert set(report.histograms[name]) <= {"4/8", "8"} and sum(report.histograms[name].values()) == 4
        assert report.mean_bits[name][1] == 8.0
    assert report.sides["encoder"] == ["g_a.2", "g_a.4", "g_a.6"]
    assert report.avg_activation_bits == pytest.approx(8.0)
