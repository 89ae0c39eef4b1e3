"""Rounding estimators: DGM and STE, as functions, modules, by name and inside Brevitas quantizers."""

import math

import numpy as np
import pytest
import torch
from brevitas.inject.enum import ScalingImplType
from brevitas.nn import QuantConv2d
from brevitas.quant import Int8WeightPerTensorFloat
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from dynaquant_brevitas import DynaWeightQuant
from dynaquant_brevitas.quant.rounding import DGMRound, STERound, dgm_gradient, dgm_round, rounding_estimator, ste_round
from dynaquant_brevitas.registry import lookup, register_estimator, registrations

BETAS = [0.01, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0]
BAD_BETAS = [0.0, -1.0, -1e-9, float("nan"), float("inf"), float("-inf")]


def reference_dgm_gradient(x: np.ndarray, beta: float) -> np.ndarray:
    """``beta / (2 tanh(beta/2)) * sech^2(beta (frac(x) - 1/2))`` in float64, from numpy alone."""
    x = np.asarray(x, dtype=np.float64)
    frac = x - np.floor(x)
    return beta / (2.0 * np.tanh(beta / 2.0)) / np.cosh(beta * (frac - 0.5)) ** 2


def grad_of(fn, x: torch.Tensor, upstream: torch.Tensor = None) -> torch.Tensor:
    x = x.detach().clone().requires_grad_(True)
    y = fn(x)
    y.backward(torch.ones_like(y) if upstream is None else upstream)
    return x.grad


# -- forward ----------------------------------------------------------------------------------------

finite_floats = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, width=32)


@settings(deadline=None, max_examples=60)
@given(
    values=arrays(np.float32, st.integers(1, 64), elements=finite_floats),
    beta=st.floats(min_value=1e-3, max_value=50.0),
)
def test_dgm_forward_is_exactly_torch_round(values, beta):
    x = torch.from_numpy(values)
    assert torch.equal(dgm_round(x, beta), torch.round(x))
    assert torch.equal(DGMRound(rounding_beta=beta)(x), torch.round(x))
    assert torch.equal(ste_round(x), torch.round(x))


def test_forward_rounds_ties_to_even_like_torch():
    x = torch.tensor([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 3.5])
    expected = torch.tensor([-2.0, -2.0, -0.0, 0.0, 2.0, 2.0, 4.0])
    assert torch.equal(dgm_round(x, 1.0), expected)
    assert torch.equal(STERound()(x), expected)


# -- backward ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("beta", BETAS)
def test_dgm_backward_matches_float64_reference_on_dense_grid(beta):
    grid = torch.linspace(-4.0, 4.0, 80_001, dtype=torch.float64)
    reference = reference_dgm_gradient(grid.numpy(), beta)
    got = grad_of(lambda t: dgm_round(t, beta), grid).numpy()
    np.testing.assert_allclose(got, reference, rtol=0, atol=1e-6)
    # float32 inputs: same formula, tolerance relative to the peak value of the multiplier.
    grid32 = grid.float()
    reference32 = reference_dgm_gradient(grid32.double().numpy(), beta)
    got32 = grad_of(lambda t: dgm_round(t, beta), grid32).double().numpy()
    peak = beta / (2.0 * math.tanh(beta / 2.0))
    np.testing.assert_allclose(got32, reference32, rtol=0, atol=1e-6 * peak)


@settings(deadline=None, max_examples=40)
@given(
    values=arrays(np.float64, st.integers(1, 32), elements=st.floats(-100, 100)),
    upstream=st.floats(-10, 10),
    beta=st.sampled_from(BETAS),
)
def test_dgm_backward_scales_the_upstream_gradient(values, upstream, beta):
    x = torch.from_numpy(values)
    g = torch.full_like(x, upstream)
    got = grad_of(lambda t: DGMRound(rounding_beta=beta)(t), x, g).numpy()
    np.testing.assert_allclose(got, upstream * reference_dgm_gradient(values, beta), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(dgm_gradient(x, beta).numpy(), reference_dgm_gradient(values, beta), rtol=1e-9, atol=1e-12)


def test_dgm_gradient_fast_and_differentiable_paths_agree_bitwise():
    x = torch.linspace(-5.0, 5.0, 10_001)
    fast = dgm_gradient(x, 3.0)
    tracked = x.clone().requires_grad_(True)
    slow = dgm_gradient(tracked, 3.0)
    assert slow.requires_grad and torch.equal(fast, slow.detach())
    # second-order use: create_graph=True runs the backward out of place and stays differentiable
    (first,) = torch.autograd.grad(dgm_round(tracked, 3.0).sum(), tracked, create_graph=True)
    assert torch.equal(first.detach(), fast)
    (second,) = torch.autograd.grad(first.sum(), tracked)
    assert torch.isfinite(second).all() and (second != 0).any()


@pytest.mark.parametrize("beta", [0.5, 2.0, 10.0])
def test_dgm_gradient_is_largest_at_rounding_boundaries(beta):
    on_level = dgm_gradient(torch.tensor([-2.0, 0.0, 3.0], dtype=torch.float64), beta)
    on_boundary = dgm_gradient(torch.tensor([-1.5, 0.5, 3.5], dtype=torch.float64), beta)
    assert bool((on_boundary > on_level).all())
    assert on_boundary[0].item() == pytest.approx(beta / (2.0 * math.tanh(beta / 2.0)), rel=1e-12)


@settings(deadline=None, max_examples=30)
@given(beta=st.floats(min_value=1e-2, max_value=40.0))
def test_dgm_gradient_averages_to_one_over_a_period(beta):
    # g(u) rises by exactly 1 per unit interval, so the mean of g' over a period is 1 (like STE).
    u = (torch.arange(200_000, dtype=torch.float64) + 0.5) / 200_000
    assert dgm_gradient(u, beta).mean().item() == pytest.approx(1.0, abs=1e-6)


def test_small_beta_approaches_straight_through():
    x = torch.linspace(-3.0, 3.0, 6001, dtype=torch.float64)
    ste = grad_of(ste_round, x)
    assert torch.equal(ste, torch.ones_like(x))
    distances = [(grad_of(lambda t: dgm_round(t, b), x) - ste).abs().max().item() for b in (1.0, 0.1, 1e-2, 1e-3)]
    assert all(a > b for a, b in zip(distances, distances[1:])), distances
    assert distances[0] > 0.05  # beta = 1 is clearly not STE
    assert distances[-1] < 1e-6


# -- invalid beta -----------------------------------------------------------------------------------


@pytest.mark.parametrize("beta", BAD_BETAS)
def test_invalid_beta_is_refused(beta):
    x = torch.tensor([0.3, 1.7])
    for build in (
        lambda: dgm_round(x, beta),
        lambda: dgm_gradient(x, beta),
        lambda: DGMRound(rounding_beta=beta),
        lambda: rounding_estimator("dgm", beta=beta),
    ):
        with pytest.raises(ValueError, match="beta"):
            build()


def test_invalid_beta_is_refused_from_a_brevitas_quantizer():
    with pytest.raises(ValueError, match="beta"):
        QuantConv2d(2, 2, 1, weight_quant=DynaWeightQuant, weight_rounding_beta=-1.0)


# -- selection by name ------------------------------------------------------------------------------


def test_selection_by_name():
    dgm = rounding_estimator("dgm", beta=3.0)
    assert type(dgm) is DGMRound and dgm.beta == 3.0
    assert type(rounding_estimator("ste")) is STERound
    assert rounding_estimator("dgm").beta == 1.0
    assert {"dgm", "ste"} <= set(registrations("estimator"))


def test_unknown_name_gives_clear_error():
    with pytest.raises(ValueError) as info:
        rounding_estimator("stochastic")
    message = str(info.value)
    assert "'stochastic'" in message and "dgm" in message and "ste" in message


def test_registering_another_class_under_a_taken_name_is_refused():
    class Other(torch.nn.Module):
        def forward(self, x):
            return torch.floor(x)

    with pytest.raises(ValueError, match="already registered"):
        register_estimator("dgm")(Other)
    assert lookup("estimator", "dgm") is DGMRound
    assert register_estimator("dgm")(DGMRound) is DGMRound  # same class again is fine


# -- inside Brevitas --------------------------------------------------------------------------------


def test_modules_fill_the_float_to_int_impl_slot_of_our_quantizers():
    conv = QuantConv2d(2, 3, 3, weight_quant=DynaWeightQuant, weight_rounding_beta=2.5)
    impl = conv.weight_quant.tensor_quant.float_to_int_impl
    assert type(impl) is DGMRound and impl.beta == 2.5
    conv = QuantConv2d(2, 3, 3, weight_quant=DynaWeightQuant, weight_rounding="ste")
    assert type(conv.weight_quant.tensor_quant.float_to_int_impl) is STERound
    with pytest.raises(ValueError, match="unknown rounding estimator"):
        QuantConv2d(2, 3, 3, weight_quant=DynaWeightQuant, weight_rounding="nearest-ish")


class _ConstScaleInt8(Int8WeightPerTensorFloat):
    scaling_impl_type = ScalingImplType.CONST
    scaling_const = 6.35  # the threshold: scale = 6.35 / 127 = 0.05


class _ConstScaleInt8DGM(_ConstScaleInt8):
    float_to_int_impl = DGMRound
    rounding_beta = 4.0


class _ConstScaleInt8STE(_ConstScaleInt8):
    float_to_int_impl = STERound


@pytest.mark.parametrize("quant, beta", [(_ConstScaleInt8DGM, 4.0), (_ConstScaleInt8STE, None)])
def test_modules_work_inside_a_stock_brevitas_quantizer(quant, beta):
    """Brevitas's own RescalingIntQuant rounds with our module: same values, our gradient."""
    conv = QuantConv2d(4, 4, 3, bias=False, weight_quant=quant)
    stock = QuantConv2d(4, 4, 3, bias=False, weight_quant=_ConstScaleInt8)
    impl = conv.weight_quant.tensor_quant.int_quant.float_to_int_impl
    assert type(impl) is (DGMRound if beta else STERound)
    with torch.no_grad():
        conv.weight.copy_(torch.randn_like(conv.weight) * 0.5)  # well inside the clamp at 6.35
        stock.weight.copy_(conv.weight)
    quant_weight = conv.quant_weight()
    assert quant_weight.scale.item() == pytest.approx(0.05)
    w_hat = quant_weight.value
    assert torch.equal(w_hat, stock.quant_weight().value)
    upstream = torch.randn_like(w_hat)
    (w_hat * upstream).sum().backward()
    u = (conv.weight.detach() / quant_weight.scale.detach()).double().numpy()
    expected = upstream.double().numpy() * (reference_dgm_gradient(u, beta) if beta else 1.0)
    np.testing.assert_allclose(conv.weight.grad.double().numpy(), expected, rtol=1e-4, atol=1e-5)
