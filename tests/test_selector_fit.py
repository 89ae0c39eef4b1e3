"""Refitting the selectors to a per-image choice table: the table, the knapsack, the fit, the CLI."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from compressai.models import ScaleHyperprior

from dynaquant_brevitas import DynaQuantConfig, calibrate, dynaquantize, freeze
from dynaquant_brevitas.cli import main
from dynaquant_brevitas.io.checkpoint import load_model, save_model
from dynaquant_brevitas.io.images import write_image
from dynaquant_brevitas.training.selector_fit import ChoiceTable, choice_table, fit_selectors
from dynaquant_brevitas.transform.mixed import multiple_choice_knapsack
from dynaquant_brevitas.transform.sensitivity import per_image_rd


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    model = dynaquantize(ScaleHyperprior(8, 12), DynaQuantConfig(weight_bits=(4, 8), activation_bits=(8,)))
    calibrate(model, [torch.rand(4, 3, 64, 64)])
    return model.eval()


def test_knapsack_is_the_brute_force_optimum():
    rng = np.random.default_rng(1)
    for _ in range(5):
        values, prices = rng.uniform(0, 1, (3, 3)), rng.uniform(1, 4, (3, 3))
        limit = float(np.sort(prices.sum(0))[1])
        got = multiple_choice_knapsack(values, prices, limit)
        feasible = [c for c in itertools.product(range(3), repeat=3) if prices[range(3), c].sum() <= limit + 1e-9]
        best = min(feasible, key=lambda c: values[range(3), c].sum())
        assert values[range(3), got].sum() == pytest.approx(values[range(3), best].sum())
    assert multiple_choice_knapsack(np.zeros((2, 2)), np.ones((2, 2)), 1.0) is None


def test_choice_table_measures_one_layer_moves_from_the_base(tiny):
    crops = torch.rand(4, 3, 64, 64)
    table = choice_table(tiny, crops, lmbda=0.013, batch_size=3)
    assert table.delta.shape == (4, 6, 2) and set(table.statistics) == {"encoder", "decoder"}
    assert all(t.shape[0] == 4 for side in table.statistics.values() for t in side)
    name = table.layers[2]
    k = 1 - table.candidates.index(table.base[name])
    assert torch.all(table.delta[:, 2, 1 - k] == 0)
    moved = {**table.base, name: table.candidates[k]}
    expected = per_image_rd(freeze(tiny, moved).eval(), crops, 0.013) - per_image_rd(freeze(tiny, table.base).eval(),
                                                                                      crops, 0.013)
    assert torch.allclose(table.delta[:, 2, k], expected, atol=1e-6)
    # the selectors read the crops with every layer at the base, whatever they would choose themselves
    with torch.no_grad():
        for p in tiny.dynaquant.selectors.parameters():
            p.add_(torch.randn_like(p) * 10)
    again = choice_table(tiny, crops, lmbda=0.013, base=table.base, batch_size=3)
    for side in table.statistics:
        assert all(torch.allclose(a, b) for a, b in zip(table.statistics[side], again.statistics[side]))


def _content_table(model, count: int = 64) -> ChoiceTable:
    """A table whose best width depends on the image: the first statistic's sign says which
    candidate of every layer lowers the RD cost."""
    state = model.dynaquant
    statistics, sign = {}, torch.randn(count).sign()
    for side, selector in state.selectors.items():
        channels = (selector.features_dim - selector.pool**2) // 2
        mean = torch.randn(count, channels)
        mean[:, 0] = 5 * sign
        statistics[side] = (mean, torch.rand(count, channels), torch.rand(count, selector.pool**2))
    layers = state.layer_names["encoder"] + state.layer_names["decoder"]
    delta = torch.zeros(count, len(layers), 2, dtype=torch.float64)
    delta[:, :, 0] = sign[:, None].double()  # candidate 0 (4 bits) helps when the sign is negative
    return ChoiceTable(layers, ((4, 8), (8, 8)), {n: (8, 8) for n in layers}, delta, statistics)


def test_fit_learns_a_content_dependent_choice_and_beats_one_profile(tiny):
    table = _content_table(tiny)
    report = fit_selectors(tiny, table, budget=8.0, cost="layers", steps=150, lr=1e-2)
    assert report["mu"] == 0.0
    assert report["dynamic"]["delta_rd"] < report["static"]["delta_rd"] - 0.3
    assert report["dynamic"]["delta_rd"] == pytest.approx(report["oracle"]["delta_rd"], abs=0.15)
    assert report["dynamic"]["diversity_encoder"] > 0.2 and report["dynamic"]["diversity_decoder"] > 0.2


def test_fit_keeps_the_budget_and_installs_the_selectors(tiny):
    table = _content_table(tiny)
    before = {k: v.clone() for k, v in tiny.dynaquant.selectors["encoder"].state_dict().items()}
    report = fit_selectors(tiny, table, budget=6.5, cost="layers", steps=60, lr=1e-2)
    assert report["mu"] > 0 and report["train"]["cost"] <= 6.5 + 1e-9
    assert report["oracle"]["delta_rd"] <= report["static"]["delta_rd"] + 1e-9
    after = tiny.dynaquant.selectors["encoder"].state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(ValueError, match="no choice"):
        fit_selectors(tiny, table, budget=4.0, cost="layers", steps=5)


def test_fit_selector_command(tiny, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        write_image(torch.rand(3, 80, 96), images / f"{i}.png")
    checkpoint = save_model(tiny, tmp_path / "dyn.pt")
    out = tmp_path / "fitted.pt"
    args = ["fit-selector", "--checkpoint", str(checkpoint), "--images", str(images), "--budget", "7.5",
            "--cost", "layers", "--crops", "6", "--crop-size", "64", "--lmbda", "0.013"]
    assert main(args + ["-o", str(out)]) == 0
    assert "per-image oracle" in capsys.readouterr().out
    assert out.exists() and (tmp_path / "fitted.fit.json").exists()
    assert hasattr(load_model(out), "dynaquant")
    assert main(args + ["-o", str(checkpoint)]) == 2
    static = save_model(freeze(tiny, "max"), tmp_path / "static.pt")
    assert main(["fit-selector", "--checkpoint", str(static), "--images", str(images), "--budget", "7", "-o",
                 str(tmp_path / "x.pt"), "--lmbda", "0.013"]) == 2
    assert "no bit-width selectors" in capsys.readouterr().err


def test_unfreeze_keeps_the_static_model_at_its_profile(tiny):
    from dynaquant_brevitas.transform import average_bits, layer_macs, unfreeze

    float_model = ScaleHyperprior(8, 12)
    names = tiny.dynaquant.layer_names["encoder"] + tiny.dynaquant.layer_names["decoder"]
    frozen = freeze(tiny, {**{n: [4, 8] for n in names[::2]}, **{n: 8 for n in names[1::2]}, "h_s.0": [5, 6]}).eval()
    dynamic = unfreeze(frozen, float_model).eval()
    again = freeze(dynamic, frozen.dynaquant_profile).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(frozen(x)["x_hat"], again(x)["x_hat"])
    macs = layer_macs(float_model, (1, 3, 64, 64))
    assert average_bits(again, macs) == pytest.approx(average_bits(frozen, macs))
    table = choice_table(dynamic, x, lmbda=0.013, base=frozen.dynaquant_profile)
    assert table.base == {n: tuple(frozen.dynaquant_profile[n]) if isinstance(frozen.dynaquant_profile[n], list)
                          else (frozen.dynaquant_profile[n],) * 2 for n in names}
    with pytest.raises(ValueError, match="frozen model"):
        unfreeze(float_model, float_model)
    with pytest.raises(ValueError, match="not among the candidates"):
        unfreeze(frozen, float_model, DynaQuantConfig(weight_bits=(6, 8), activation_bits=(8,)))
    widened = unfreeze(frozen, float_model, DynaQuantConfig(weight_bits=(6, 8), activation_bits=(8,)), widen=True)
    assert widened.dynaquant.config.pairs == ((4, 8), (6, 8), (8, 8))
    with torch.no_grad():
        assert torch.equal(freeze(widened.eval(), frozen.dynaquant_profile).eval()(x)["x_hat"], again(x)["x_hat"])
