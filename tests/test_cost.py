"""Bit loss (three costs), MACs, BitOPs with unequal weight and activation widths, packed size,
bit reports and their diversity figures."""

from __future__ import annotations

import math

import pytest
import torch
from compressai.models import FactorizedPrior, ScaleHyperprior
from torch import nn

from dynaquant_brevitas import DynaQuantConfig, bit_loss, bit_report, calibrate, dynaquantize, layer_macs, model_size_bytes
from dynaquant_brevitas.transform.cost import average_bits


def test_layer_macs_match_hand_counts():
    model = nn.Sequential(nn.Conv2d(3, 8, 5, stride=2, padding=2), nn.ConvTranspose2d(8, 4, 4, stride=2, padding=1))
    macs = layer_macs(model, (1, 3, 32, 32))
    assert macs["0"] == 16 * 16 * 8 * 3 * 25  # output pixels x out channels x in channels x kernel
    assert macs["1"] == 16 * 16 * 8 * 4 * 16  # input pixels x in channels x out channels x kernel


def test_bit_loss_is_the_expected_average_bit_width():
    probs = torch.tensor([[[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]], requires_grad=True)
    loss = bit_loss({"bits": {"probs": probs, "candidates": ((4, 4), (6, 6), (8, 8))}})
    assert loss.item() == pytest.approx((5.0 + 8.0) / 2)
    loss.backward()
    assert probs.grad is not None
    assert bit_loss({"x_hat": torch.zeros(1)}).item() == 0.0


def test_size_and_averages_follow_the_bit_widths():
    float_model = FactorizedPrior(8, 12)
    float_bytes = 4 * sum(p.numel() for p in float_model.parameters())
    model = dynaquantize(FactorizedPrior(8, 12), DynaQuantConfig(candidate_bits=(4,), fixed_bits=4))
    macs = layer_macs(model, (1, 3, 64, 64))
    averages = average_bits(model, macs)
    assert averages["bits_per_param"] == pytest.approx(4.0)
    assert averages["bits_bitops"] == pytest.approx(4.0)
    assert averages["bitops_ratio"] == pytest.approx(16 / 1024)
    weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)))
    others = sum(p.numel() for p in model.parameters()) - weights
    assert model_size_bytes(model) == math.ceil(weights * 4 / 8) + 4 * others
    assert model_size_bytes(model) < float_bytes


def test_bit_report_counts_choices_per_layer():
    torch.manual_seed(0)
    model = dynaquantize(ScaleHyperprior(8, 12), DynaQuantConfig(candidate_bits=(4, 8)))
    images = [torch.rand(3, 64, 64) for _ in range(3)]
    calibrate(model, [torch.stack(images)])
    report = bit_report(model, images)
    assert report.layers == ["g_a.2", "g_a.4", "g_a.6", "g_s.2", "g_s.4", "g_s.6"]
    assert len(report.per_image) == 3 and all(len(row) == 6 for row in report.per_image)
    for name in report.layers:
        assert sum(report.histograms[name].values()) == 3
        assert set(report.histograms[name]) <= {"4", "8"}
        assert 4 <= report.mean_bits[name][0] == report.mean_bits[name][1] <= 8
    assert set(report.diversity) == {"encoder", "decoder"} and all(0 <= d <= 2 / 3 for d in report.diversity.values())
    assert all(0 <= e <= 1 for e in report.entropy.values())
    assert 4 <= report.bits_per_param <= 8 and report.size_bytes > 0
    assert report.to_dict()["layers"] == report.layers


def test_unequal_widths_are_counted_apart():
    model = dynaquantize(FactorizedPrior(8, 12), DynaQuantConfig(weight_bits=(4,), activation_bits=(8,), fixed_bits=8))
    macs = layer_macs(model, (1, 3, 64, 64))
    layers = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))}
    fixed = {"g_a.0", "g_s.0"}  # the taps, at 8/8
    widths = {n: (8, 8) if n in fixed else (4, 8) for n in layers}
    params = {n: m.weight.numel() for n, m in layers.items()}
    averages = average_bits(model, macs)
    assert averages["bits_per_param"] == pytest.approx(sum(params[n] * widths[n][0] for n in layers) / sum(params.values()))
    assert averages["avg_activation_bits"] == pytest.approx(8.0)
    bitops = sum(macs[n] * widths[n][0] * widths[n][1] for n in layers)
    assert averages["bits_bitops"] == pytest.approx(math.sqrt(bitops / sum(macs[n] for n in layers)))
    packed = sum(math.ceil(params[n] * widths[n][0]) for n in layers) / 8
    others = sum(p.numel() for p in model.parameters()) - sum(params.values())
    assert model_size_bytes(model) == math.ceil(packed) + 4 * others


def test_profiles_take_weight_and_activation_pairs():
    from dynaquant_brevitas import freeze

    torch.manual_seed(0)
    model = dynaquantize(ScaleHyperprior(8, 12), DynaQuantConfig(weight_bits=(4, 8), activation_bits=(8,)))
    calibrate(model, [torch.rand(2, 3, 64, 64)])
    names = model.dynaquant.layer_names["encoder"] + model.dynaquant.layer_names["decoder"]
    static = freeze(model, {n: [4, 8] for n in names})
    assert all(static.dynaquant_profile[n] == [4, 8] for n in names) and static.dynaquant_profile["g_a.0"] == 8
    assert static.get_submodule("g_a.2").widths == (4, 8)
    with pytest.raises(ValueError, match="not among the candidates"):
        freeze(model, {n: [6, 8] for n in names})


@pytest.mark.parametrize("cost", ["layers", "bitops", "size"])
def test_bit_costs_read_in_bits_and_follow_the_choice(cost):
    from dynaquant_brevitas.transform import bit_cost

    torch.manual_seed(0)
    model = dynaquantize(ScaleHyperprior(8, 12), DynaQuantConfig(weight_bits=(4, 8), activation_bits=(8,)))
    calibrate(model, [torch.rand(2, 3, 64, 64)])
    record = model.train()(torch.rand(2, 3, 64, 64))["bits"]
    low, high = (dict(record, probs=torch.zeros_like(record["probs"]).index_fill_(-1, torch.tensor([k]), 1.0)) for k in (0, 1))
    cheap, dear = bit_cost(low, cost), bit_cost(high, cost)
    assert bool((cheap < dear).all())
    if cost == "layers":
        assert torch.allclose(cheap, torch.tensor(32.0).sqrt()) and torch.allclose(dear, torch.tensor(8.0))
    if cost == "size":  # every layer at 8 bits: the model's average weight bits
        assert torch.allclose(dear, torch.tensor(8.0, dtype=dear.dtype))
    loss = bit_loss({"bits": record}, cost)
    loss.backward()
    assert any(p.grad is not None for p in model.dynaquant.parameters())


def test_mixed_profile_is_the_brute_force_optimum():
    import itertools

    from dynaquant_brevitas.transform.mixed import mixed_profile, profile_cost
    from dynaquant_brevitas.transform.sensitivity import Delta, Sensitivity

    generator = torch.Generator().manual_seed(0)
    layers, widths = ["a", "b", "c"], [2, 4, 8]
    rand = lambda: float(torch.rand((), generator=generator))  # noqa: E731
    part = lambda: {n: {b: Delta(0.0, 0.0, rand() * 10 / b) for b in widths} for n in layers}  # noqa: E731
    sens = Sensitivity(layers, widths, 0.01, Delta(0, 0, 1), part(), part(), {n: 10 + 90 * rand() for n in layers},
                       {n: int(10 + 90 * rand()) for n in layers})
    for cost, budget in (("bitops", 4.5), ("bitops", 6.0), ("size", 3.5)):
        best = min(
            (dict(zip(layers, choice)) for choice in itertools.product(itertools.product(widths, widths), repeat=3)
             if profile_cost(sens, dict(zip(layers, choice)), cost) <= budget + 1e-9),
            key=lambda p: sum(sens.cost(n, *p[n]) for n in layers),
        )
        found = mixed_profile(sens, budget, cost)
        assert profile_cost(sens, found, cost) <= budget + 1e-6
        assert sum(sens.cost(n, *found[n]) for n in layers) == pytest.approx(sum(sens.cost(n, *best[n]) for n in layers))
    with pytest.raises(ValueError, match="no profile fits"):
        mixed_profile(sens, 1.0, "bitops")


def test_sensitivity_orders_widths_on_a_trained_model():
    from pathlib import Path

    from dynaquant_brevitas import load_model
    from dynaquant_brevitas.io.images import ImageFolderCrops
    from dynaquant_brevitas.transform.sensitivity import Sensitivity, sensitivity

    repo = Path(__file__).resolve().parents[1]
    model = load_model(repo / "checkpoints/reference/bmshj2018-factorized-relu-N64-M96-q4.pt")
    torch.manual_seed(0)
    crops = ImageFolderCrops(repo / ".." / "shared" / "data" / "train", 64)
    sens = sensitivity(model, [torch.stack([crops[0], crops[1]])], widths=(2, 8), lmbda=0.013, progress=False)
    assert sens.layers == ["g_a.0", "g_a.2", "g_a.4", "g_a.6", "g_s.0", "g_s.2", "g_s.4", "g_s.6"]
    for part in (sens.weight, sens.activation):  # 2 bits hurts far more than 8 everywhere
        assert all(part[n][2].cost > part[n][8].cost + 0.01 * sens.base.cost for n in sens.layers)
    assert Sensitivity.from_dict(sens.to_dict()).to_dict() == sens.to_dict()


def test_sensitivity_measures_activations_with_the_configured_ranges():
    """Weight deltas do not depend on the activation grid; activation deltas do (per-image ranges
    follow each crop, static ones come from calibration)."""
    from pathlib import Path

    from dynaquant_brevitas import load_model
    from dynaquant_brevitas.io.images import ImageFolderCrops
    from dynaquant_brevitas.transform.sensitivity import sensitivity

    repo = Path(__file__).resolve().parents[1]
    model = load_model(repo / "checkpoints/reference/bmshj2018-factorized-relu-N64-M96-q4.pt")
    crops = ImageFolderCrops(repo / ".." / "shared" / "data" / "train", 64)
    torch.manual_seed(0)
    batch = [torch.stack([crops[0], crops[1]])]
    static, capped = (sensitivity(model, batch, widths=(4,), lmbda=0.013, progress=False,
                                  config=DynaQuantConfig(activation_range=mode))
                      for mode in ("static", "per-image-capped"))
    for name in static.layers:
        assert capped.weight[name][4].cost == pytest.approx(static.weight[name][4].cost, rel=1e-5, abs=1e-9)
    assert any(abs(capped.activation[n][4].cost - static.activation[n][4].cost) > 1e-4 * static.base.cost
               for n in static.layers)
