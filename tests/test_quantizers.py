"""Content-aware DynaQuant quantizers inside real Brevitas layers: levels, learning, bit widths, I/O."""

import io

import numpy as np
import pytest
import torch
from brevitas.function.ops import tensor_clamp
import torch.nn.functional as F
from brevitas.nn import QuantConv2d, QuantIdentity, QuantReLU
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from dynaquant_brevitas import (
    BitChoice,
    DynaQuantConfig,
    DynaActQuant,
    DynaUintActQuant,
    DynaWeightQuant,
    Int8WeightPerChannelOffsetDGM,
    QuantizerNotCalibratedError,
)
from dynaquant_brevitas.quant.rounding import dgm_round
from dynaquant_brevitas.quant import ADAPTIVE_QUANTILE, int_range


def weight_tq(layer):
    return layer.weight_quant.tensor_quant


def act_tq(proxy):
    return proxy.fused_activation_quant_proxy.tensor_quant


def calibrated_act(quant=DynaActQuant, bits=8, channels=3, x=None, **kwargs):
    """A QuantIdentity with ``quant`` that has seen one calibration batch, in eval mode."""
    layer = QuantIdentity(act_quant=quant, bit_width=bits, calibration_batches=1, **kwargs)
    layer.train()(torch.randn(4, channels, 8, 8) if x is None else x)
    return layer.eval()


def per_channel_distinct(t: torch.Tensor, dim: int) -> list:
    t = t.detach().transpose(0, dim).reshape(t.shape[dim], -1)
    return [int(torch.unique(row).numel()) for row in t]


def assert_on_grid(x_hat, scale, zero_point, bits, signed, narrow):
    """``x_hat`` is ``scale * (q - zero_point)`` for integers ``q`` inside the ``bits`` grid."""
    q = x_hat / scale + zero_point
    assert torch.allclose(q, torch.round(q), atol=1e-3), (q - torch.round(q)).abs().max()
    qmin, qmax = int_range(bits, signed, narrow)
    assert int(torch.round(q).min()) >= qmin and int(torch.round(q).max()) <= qmax


def small_net(seed: int = 0, calibration_batches: int = 2) -> nn.Sequential:
    torch.manual_seed(seed)
    common = dict(weight_quant=DynaWeightQuant, input_quant=DynaActQuant, input_calibration_batches=calibration_batches)
    return nn.Sequential(
        QuantConv2d(3, 8, 3, padding=1, **common),
        nn.ReLU(),
        QuantConv2d(8, 2, 3, padding=1, **common),
    )


# -- number of levels -------------------------------------------------------------------------------


@settings(deadline=None, max_examples=12)
@given(bits=st.integers(2, 10), out_channels=st.integers(1, 6))
def test_weights_take_at_most_2_pow_b_values_per_channel(bits, out_channels):
    conv = QuantConv2d(48, out_channels, 3, weight_quant=DynaWeightQuant, weight_bit_width=bits)
    qw = conv.quant_weight()
    distinct = per_channel_distinct(qw.value, 0)
    assert max(distinct) <= 2**bits - 1  # signed narrow range: 2^b - 1 levels
    if bits <= 5:  # 432 Gaussian weights per channel fill most of a small grid
        assert min(distinct) > 2 ** (bits - 1)
    assert float(qw.bit_width) == bits
    assert_on_grid(qw.value, qw.scale, qw.zero_point, bits, signed=True, narrow=True)


@settings(deadline=None, max_examples=12)
@given(bits=st.integers(2, 10), unsigned=st.booleans(), channels=st.integers(1, 4))
def test_activations_take_at_most_2_pow_b_values_per_channel(bits, unsigned, channels):
    quant = DynaUintActQuant if unsigned else DynaActQuant
    layer = calibrated_act(quant, bits, channels)
    x = 3 * torch.randn(4, channels, 16, 16)  # wider than calibration: the clamp is exercised
    tq = act_tq(layer.act_quant)
    x_hat, scale, zero_point, bit_width = tq(x)
    assert torch.equal(layer(x), x_hat)
    distinct = per_channel_distinct(x_hat, 1)
    assert max(distinct) <= (2**bits if unsigned else 2**bits - 1)
    if bits <= 5:
        assert min(distinct) > 2 ** (bits - 1)
    assert float(bit_width) == bits
    assert scale.shape == zero_point.shape == (1, channels, 1, 1)
    assert_on_grid(x_hat, scale, zero_point, bits, signed=not unsigned, narrow=not unsigned)


def test_unsigned_outputs_are_at_least_the_offset():
    x = torch.randn(4, 5, 8, 8) - 0.5
    layer = calibrated_act(DynaUintActQuant, bits=4, channels=5, x=x)
    out = layer(2 * x)
    offset = act_tq(layer.act_quant).offset.detach().view(1, -1, 1, 1)
    assert bool((offset < 0).all())  # the grid starts at a learned, here negative, offset
    assert bool((out >= offset - 1e-6).all())
    # values below the offset are clamped onto it
    assert torch.allclose(out.amin(dim=(0, 2, 3)), offset.flatten(), atol=1e-6)


def test_quant_relu_with_unsigned_quantizer_is_non_negative():
    relu = QuantReLU(act_quant=DynaUintActQuant, bit_width=3, calibration_batches=1)
    relu.train()(torch.randn(2, 3, 6, 6))
    out = relu.eval()(torch.randn(2, 3, 6, 6))
    assert bool((out >= 0).all()) and max(per_channel_distinct(out, 1)) <= 8


# -- per-channel learned parameters -----------------------------------------------------------------


def test_range_and_offset_are_per_channel_and_receive_gradients():
    conv = QuantConv2d(
        5, 7, 3, weight_quant=Int8WeightPerChannelOffsetDGM, input_quant=DynaActQuant, input_calibration_batches=1
    )
    x = torch.randn(4, 5, 10, 10)
    conv.train()(x)  # calibration batch
    w, a = weight_tq(conv), act_tq(conv.input_quant)
    assert w.range.shape == w.offset.shape == (7,)
    assert a.range.shape == a.offset.shape == (5,)
    for p in (w.range, w.offset, a.range, a.offset):
        p.grad = None
    conv(x).pow(2).mean().backward()
    for name, p in [("w.range", w.range), ("w.offset", w.offset), ("a.range", a.range), ("a.offset", a.offset)]:
        assert p.requires_grad and p.grad is not None, name
        assert p.grad.shape == p.shape and bool((p.grad != 0).all()), (name, p.grad)
    assert {id(p) for p in (w.range, w.offset, a.range, a.offset)} <= {id(p) for p in conv.parameters()}


def test_integer_zero_points_put_zero_on_the_grid_and_keep_the_offset_learning():
    torch.manual_seed(0)
    x = torch.rand(4, 3, 8, 8) * 5 + 0.3  # positive, so the calibrated offset is far from zero
    x[:, :, :2] = 0.0  # the zeros a latent is full of
    outputs = {}
    for integer in (False, True):
        quant = QuantIdentity(act_quant=DynaActQuant, integer_zero_point=integer, calibration_batches=1,
                              return_quant_tensor=False).train()
        quant(x)  # calibration
        tq = quant.act_quant.fused_activation_quant_proxy.tensor_quant
        outputs[integer] = quant(x)
        zero_point = -tq.offset / (tq.range / 127)
        assert bool((zero_point != torch.round(zero_point)).any())  # the learned offsets are fractional
        if integer:
            tq.offset.grad = None
            outputs[integer].sum().backward()
            assert tq.offset.grad is not None and bool((tq.offset.grad != 0).all())
    assert bool((outputs[False][:, :, :2] != 0).any())  # a fractional zero point misses zero ...
    assert bool((outputs[True][:, :, :2] == 0).all())  # ... an integer one hits it exactly
    assert torch.allclose(outputs[True], outputs[False], atol=5 * 5.3 / 127)


def test_default_weight_quantizer_has_a_fixed_zero_offset():
    tq = weight_tq(QuantConv2d(3, 4, 3, weight_quant=DynaWeightQuant))
    assert not tq.offset.requires_grad and torch.equal(tq.offset, torch.zeros(4))
    assert tq.range.shape == (4,) and tq.range.requires_grad


def test_weight_range_is_initialised_from_the_per_channel_max():
    conv = QuantConv2d(3, 4, 3, weight_quant=DynaWeightQuant)
    assert torch.allclose(weight_tq(conv).range, conv.weight.detach().abs().amax(dim=(1, 2, 3)))


# -- run-time bit width -----------------------------------------------------------------------------


def test_changing_weight_bit_width_changes_levels_without_recalibration():
    conv = QuantConv2d(32, 4, 3, weight_quant=DynaWeightQuant)
    tq = weight_tq(conv)
    range_, offset, seen = tq.range.detach().clone(), tq.offset.detach().clone(), int(tq.observed_batches)
    at8 = conv.quant_weight().value.detach().clone()
    for bits in (2, 4, 6):
        tq.set_bit_width(bits)
        qw = conv.quant_weight()
        assert float(qw.bit_width) == bits
        assert max(per_channel_distinct(qw.value, 0)) <= 2**bits - 1
        assert torch.allclose(qw.scale.flatten(), range_ / (2 ** (bits - 1) - 1))
        assert torch.equal(tq.range, range_) and torch.equal(tq.offset, offset)
        assert int(tq.observed_batches) == seen
    tq.set_bit_width(8)
    assert max(per_channel_distinct(conv.quant_weight().value, 0)) > 2**6
    assert torch.equal(conv.quant_weight().value, at8)


def test_changing_activation_bit_width_changes_levels_without_recalibration():
    layer = calibrated_act(DynaActQuant, bits=8, channels=3)
    tq = act_tq(layer.act_quant)
    range_, offset = tq.range.detach().clone(), tq.offset.detach().clone()
    x = torch.randn(4, 3, 16, 16)
    at8 = layer(x)
    for bits in (3, 5):
        tq.set_bit_width(bits)
        out = layer.train()(x)  # training mode too: no re-calibration once calibrated
        assert max(per_channel_distinct(out, 1)) <= 2**bits - 1
        assert torch.equal(tq.range, range_) and torch.equal(tq.offset, offset)
        layer.eval()
    tq.set_bit_width(8)
    assert torch.equal(layer(x), at8)


def test_set_bit_width_rejects_bad_values():
    tq = weight_tq(QuantConv2d(2, 2, 1, weight_quant=DynaWeightQuant))
    for bad in (1, 17, 4.5):
        with pytest.raises(ValueError, match="bit width"):
            tq.set_bit_width(bad)


# -- calibration ------------------------------------------------------------------------------------


def test_eval_before_calibration_raises_a_clear_error():
    conv = QuantConv2d(3, 4, 3, weight_quant=DynaWeightQuant, input_quant=DynaActQuant).eval()
    with pytest.raises(QuantizerNotCalibratedError, match="calibrat"):
        conv(torch.randn(1, 3, 8, 8))
    assert issubclass(QuantizerNotCalibratedError, RuntimeError)
    # weights need no calibration
    assert QuantConv2d(3, 4, 3, weight_quant=DynaWeightQuant).eval()(torch.randn(1, 3, 8, 8)).shape == (1, 4, 6, 6)


def test_calibration_stops_after_the_configured_number_of_batches():
    layer = QuantIdentity(act_quant=DynaActQuant, calibration_batches=2).train()
    tq = act_tq(layer.act_quant)
    layer(torch.randn(8, 2, 8, 8))
    layer(3 * torch.randn(8, 2, 8, 8))
    after_two = tq.range.detach().clone()
    layer(100 * torch.randn(8, 2, 8, 8))
    assert int(tq.observed_batches) == 2 and torch.equal(tq.range, after_two)


@pytest.mark.parametrize("learn_offset", [False, True])
def test_headroom_widens_the_calibrated_union_once(learn_offset):
    """The headroom multiplies the union of the batches' ranges; it does not compound per batch."""
    batches = [torch.randn(8, 2, 8, 8), 3 * torch.randn(8, 2, 8, 8), torch.randn(8, 2, 8, 8)]
    ranges = {}
    for headroom in (1.0, 1.5):
        layer = QuantIdentity(act_quant=DynaActQuant, calibration_batches=3, stats_headroom=headroom,
                              learn_offset=learn_offset).train()
        for x in batches:
            layer(x)
        ranges[headroom] = act_tq(layer.act_quant).range.detach()
    assert torch.allclose(ranges[1.5], 1.5 * ranges[1.0])


def test_headroom_outside_its_bounds_is_refused():
    with pytest.raises(ValueError, match="headroom"):
        DynaQuantConfig(activation_headroom=0.5)
    with pytest.raises(ValueError, match="headroom"):
        QuantIdentity(act_quant=DynaActQuant, stats_headroom=100.0)


# -- per-image activation ranges ----------------------------------------------------------------------


def _calibrated_identity(image_range, signed=True):
    quant = DynaActQuant if signed else DynaUintActQuant
    layer = QuantIdentity(act_quant=quant, calibration_batches=1, learn_offset=False, image_range=image_range).train()
    calibration = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    layer(4 * calibration.abs())  # calibration: ranges of about 4 * 3.9 per channel
    return layer.eval()


@pytest.mark.parametrize("signed", [True, False])
def test_per_image_range_spans_each_sample_and_channel_exactly(signed):
    """Each sample's grid ends at its own largest value per channel: the extremes come back exactly,
    and a quiet image gets a step far finer than the calibrated one."""
    layer = _calibrated_identity("per-image", signed)
    quiet = 0.01 * torch.rand(1, 3, 8, 8)
    loud = 2 * torch.rand(1, 3, 8, 8)
    x = torch.cat([quiet, loud])
    x_hat = layer(x).detach()
    peak = x.amax(dim=(2, 3))
    assert torch.allclose(x_hat.amax(dim=(2, 3)), peak, rtol=1e-5)
    qmax = 127 if signed else 255
    assert float((x_hat - x).abs().amax(dim=(1, 2, 3))[0]) <= 0.5 * float(peak[0].max()) / qmax * 1.001
    static = _calibrated_identity("static", signed)
    static_error = float((static(quiet).detach() - quiet).abs().mean())
    assert static_error > 20 * float((x_hat[:1] - quiet).abs().mean())


def test_capped_per_image_range_still_clips_at_the_learned_range():
    capped, free = _calibrated_identity("per-image-capped"), _calibrated_identity("per-image")
    limit = float(act_tq(capped.act_quant).range.max())
    x = torch.full((1, 3, 4, 4), 0.5)
    x[0, :, 0, 0] = 10 * limit
    assert float(capped(x).max()) <= limit * 1.001 < float(free(x).max())
    quiet = 0.01 * torch.rand(1, 3, 8, 8)
    assert torch.equal(capped(quiet), free(quiet))


def test_adaptive_per_image_range_clips_isolated_values_but_widens_for_a_loud_image():
    """One far value per channel is clipped at the learned range, as capped ranges do; an image
    whose every value lies beyond it gets a grid reaching its own quantile instead."""
    adaptive, capped = _calibrated_identity("per-image-adaptive"), _calibrated_identity("per-image-capped")
    limit = float(act_tq(adaptive.act_quant).range.max())
    spike = torch.full((1, 3, 40, 40), 0.5)
    spike[0, :, 0, 0] = 10 * limit
    assert torch.equal(adaptive(spike), capped(spike))
    loud = torch.linspace(2 * limit, 3 * limit, 3 * 40 * 40).reshape(1, 3, 40, 40)
    reach = torch.quantile(loud.flatten(2), ADAPTIVE_QUANTILE, dim=-1, interpolation="higher")
    assert torch.allclose(adaptive(loud).amax(dim=(2, 3)), reach, rtol=1e-5)
    assert float(capped(loud).max()) <= limit * 1.001
    quiet = 0.01 * torch.rand(2, 3, 8, 8)
    assert torch.equal(adaptive(quiet), capped(quiet))
    assert adaptive(torch.empty(0, 3, 8, 8)).shape == (0, 3, 8, 8)  # an empty batch, as static grids allow


def test_per_image_ranges_have_no_static_scale_to_export():
    layer = _calibrated_identity("per-image")
    with pytest.raises(ValueError, match="per image"):
        act_tq(layer.act_quant).qparams()
    with pytest.raises(ValueError, match="activation_range"):
        DynaQuantConfig(activation_range="per-batch")
    with pytest.raises(ValueError, match="integer_entropy_path"):
        DynaQuantConfig(activation_range="per-image", integer_entropy_path=True)


# -- LSQ gradient scaling ---------------------------------------------------------------------------


def manual_unscaled_grads(x, range_, offset, bits, signed, channel_dim, beta=1.0):
    """Gradients of ``sum(upstream * x_hat)`` w.r.t. range and offset with no gradient scaling."""
    r = range_.detach().clone().double().requires_grad_(True)
    o = offset.detach().clone().double().requires_grad_(True)
    shape = [1] * x.dim()
    shape[channel_dim] = -1
    qmin, qmax = int_range(bits, signed, narrow_range=signed)
    one = torch.ones((), dtype=torch.double)
    step = r.view(shape) / qmax
    zero = -o.view(shape) / step
    # Brevitas's clamp: values that round onto qmin/qmax are not clipped, so gradient passes
    q = tensor_clamp(dgm_round(x.double() / step + zero, beta), qmin * one, qmax * one)
    return r, o, (q - zero) * step


@pytest.mark.parametrize("bits", [3, 8])
def test_lsq_gradient_scaling_on_weights(bits):
    conv = QuantConv2d(6, 4, 3, weight_quant=Int8WeightPerChannelOffsetDGM, weight_bit_width=bits)
    tq = weight_tq(conv)
    x_hat, *_ = tq(conv.weight.detach())
    upstream = torch.randn_like(x_hat)
    (x_hat * upstream).sum().backward()
    r, o, ref = manual_unscaled_grads(conv.weight.detach(), tq.range, tq.offset, bits, True, 0)
    assert torch.allclose(ref.float(), x_hat, atol=1e-6)
    (ref * upstream.double()).sum().backward()
    factor = 1.0 / np.sqrt(6 * 3 * 3 * (2 ** (bits - 1) - 1))
    assert bool((r.grad != 0).all()) and bool((o.grad != 0).all())
    torch.testing.assert_close(tq.range.grad.double(), r.grad * factor, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(tq.offset.grad.double(), o.grad * factor, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("bits, unsigned", [(4, False), (8, True)])
def test_lsq_gradient_scaling_on_activations(bits, unsigned):
    layer = calibrated_act(DynaUintActQuant if unsigned else DynaActQuant, bits=bits, channels=3)
    tq = act_tq(layer.act_quant)
    x = 2 * torch.randn(2, 3, 5, 7)
    x_hat, *_ = tq(x)
    upstream = torch.randn_like(x_hat)
    (x_hat * upstream).sum().backward()
    r, o, ref = manual_unscaled_grads(x, tq.range, tq.offset, bits, not unsigned, 1)
    assert torch.allclose(ref.float(), x_hat, atol=1e-5)
    (ref * upstream.double()).sum().backward()
    qmax = int_range(bits, not unsigned, not unsigned)[1]
    factor = 1.0 / np.sqrt(2 * 5 * 7 * qmax)
    torch.testing.assert_close(tq.range.grad.double(), r.grad * factor, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(tq.offset.grad.double(), o.grad * factor, rtol=1e-4, atol=1e-7)


def test_input_gradient_is_the_dgm_gradient_inside_the_grid():
    layer = calibrated_act(DynaActQuant, bits=8, channels=2, rounding_beta=3.0)
    tq = act_tq(layer.act_quant)
    x = (0.5 * torch.randn(2, 2, 6, 6)).requires_grad_(True)  # well inside the calibrated range
    x_hat, scale, zero_point, _ = tq(x)
    x_hat.sum().backward()
    u = (x.detach() / scale + zero_point).double()
    frac = u - torch.floor(u)
    expected = 3.0 / (2 * np.tanh(1.5)) / torch.cosh(3.0 * (frac - 0.5)) ** 2
    torch.testing.assert_close(x.grad.double(), expected, rtol=1e-4, atol=1e-5)


# -- per-sample bit widths --------------------------------------------------------------------------

CANDIDATES = (4, 6, 8)


def straight_through_choice(index):
    """One-hot selection weights (values) carrying the softmax gradient, as a Gumbel-softmax gives."""
    logits = torch.randn(len(index), len(CANDIDATES)).requires_grad_(True)
    soft = logits.softmax(dim=1)
    hard = F.one_hot(torch.tensor(index), len(CANDIDATES)).float()
    weights = hard - soft.detach() + soft
    weights.retain_grad()
    return logits, weights


def single_width_outputs(tq, x):
    outputs = {}
    for bits in CANDIDATES:
        tq.set_bit_width(bits)
        outputs[bits] = tq(x)[0].detach()
    tq.set_bit_width(8)
    return outputs


@pytest.mark.parametrize("kind", ["activation", "weight"])
def test_bit_choice_mixes_per_sample_exactly_with_gradients_to_every_candidate(kind):
    index = [0, 2, 1, 2]
    if kind == "activation":
        tq = act_tq(calibrated_act(DynaActQuant, channels=3).act_quant)
        x = 2 * torch.randn(len(index), 3, 6, 6)
    else:
        conv = QuantConv2d(3, 5, 3, weight_quant=DynaWeightQuant)
        tq, x = weight_tq(conv), conv.weight.detach()
    reference = single_width_outputs(tq, x)
    assert not torch.equal(reference[4], reference[8])
    logits, weights = straight_through_choice(index)
    tq.bit_choice = BitChoice(CANDIDATES, weights)
    x_hat, scale, zero_point, bit_width = tq(x)
    assert x_hat.shape[0] == len(index)
    assert bit_width.tolist() == [float(CANDIDATES[k]) for k in index]
    for n, k in enumerate(index):
        expected = reference[CANDIDATES[k]]
        assert torch.equal(x_hat[n], expected[n] if kind == "activation" else expected)
    upstream = torch.randn_like(x_hat)
    (x_hat * upstream).sum().backward()
    # every candidate of every sample gets a gradient
    assert weights.grad is not None and bool(torch.isfinite(weights.grad).all())
    assert bool((weights.grad != 0).all()), weights.grad
    assert bool((logits.grad != 0).all())
    assert tq.range.grad is not None and bool((tq.range.grad != 0).all())
    # the gradient of the mixture sum_k w_nk Q_k(.): d/dw_nk = <upstream_n, Q_k(.)_n>
    for n in range(len(index)):
        for k, bits in enumerate(CANDIDATES):
            own = reference[bits][n] if kind == "activation" else reference[bits]
            expected = (upstream[n] * own).sum().item()
            assert weights.grad[n, k].item() == pytest.approx(expected, rel=1e-4, abs=1e-4)


def test_uniform_bit_choice_without_gradient_is_the_single_width_path():
    tq = act_tq(calibrated_act(DynaActQuant, channels=2).act_quant)
    x = torch.randn(3, 2, 5, 5)
    reference = single_width_outputs(tq, x)
    tq.bit_choice = BitChoice(CANDIDATES, F.one_hot(torch.tensor([1, 1, 1]), 3).float())
    with torch.no_grad():
        x_hat, _, _, bit_width = tq(x)
    assert torch.equal(x_hat, reference[6]) and float(bit_width) == 6.0


# -- training, persistence, export ------------------------------------------------------------------


def test_small_quantized_network_fits_a_toy_regression():
    teacher = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 2, 3, padding=1))
    teacher.requires_grad_(False)
    student = small_net(seed=1)
    x = torch.randn(64, 3, 12, 12)
    y = teacher(x)
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-2)
    first = None
    for step in range(250):
        batch = torch.randint(0, len(x), (16,))
        loss = F.mse_loss(student(x[batch]), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        first = loss.item() if first is None else first
    with torch.no_grad():
        final = F.mse_loss(student.eval()(x), y).item()
    assert final * 10 <= first, (first, final)


def trained_net() -> nn.Sequential:
    net = small_net(seed=2).train()
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-2)
    for _ in range(3):
        loss = net(torch.randn(4, 3, 10, 10)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    weight_tq(net[2]).set_bit_width(5)
    act_tq(net[2].input_quant).set_bit_width(6)
    return net.eval()


def test_state_dict_round_trip_restores_lazily_created_parameters():
    net = trained_net()
    buffer = io.BytesIO()
    torch.save(net.state_dict(), buffer)
    buffer.seek(0)
    fresh = small_net(seed=3)
    assert act_tq(fresh[0].input_quant).range.numel() == 0  # not created yet
    fresh.load_state_dict(torch.load(buffer), strict=True)
    fresh.eval()
    for old, new in zip(net.modules(), fresh.modules()):
        if isinstance(old, QuantConv2d):
            for a, b in ((act_tq(old.input_quant), act_tq(new.input_quant)), (weight_tq(old), weight_tq(new))):
                assert a.range.shape == b.range.shape and torch.equal(a.range, b.range)
                assert torch.equal(a.offset, b.offset) and int(a.static_bit_width) == int(b.static_bit_width)
                assert isinstance(b.range, nn.Parameter) and b.range.requires_grad
    x = torch.randn(2, 3, 10, 10)
    with torch.no_grad():
        assert torch.equal(net(x), fresh(x))
        # calibration counters were restored too: training mode does not re-calibrate
        before = act_tq(fresh[0].input_quant).range.detach().clone()
        fresh.train()(5 * x)
        assert torch.equal(act_tq(fresh[0].input_quant).range, before)


def test_loading_without_reinit_keeps_the_module_dtype(monkeypatch):
    """With Brevitas's re-init on load switched off, loading fills the existing parameters in place."""
    import brevitas.config

    monkeypatch.setattr(brevitas.config, "REINIT_ON_STATE_DICT_LOAD", False)
    net = trained_net()
    fresh = small_net(seed=3).double()
    tqs = [act_tq(fresh[0].input_quant), weight_tq(fresh[0])]
    fresh.load_state_dict(net.state_dict())
    assert tqs == [act_tq(fresh[0].input_quant), weight_tq(fresh[0])]  # same modules, not rebuilt
    for tq in tqs:
        assert tq.range.dtype == tq.offset.dtype == torch.float64
    expected = act_tq(net[0].input_quant).range.double()
    assert torch.equal(tqs[0].range, expected)
    with torch.no_grad():
        assert fresh.eval()(torch.randn(2, 3, 10, 10, dtype=torch.float64)).dtype == torch.float64


@pytest.mark.parametrize("act_quant", [DynaActQuant, DynaUintActQuant])
def test_qonnx_export_runs_in_the_qonnx_executor(tmp_path, act_quant):
    from brevitas.export import export_qonnx
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.transformation.infer_shapes import InferShapes

    conv = QuantConv2d(3, 4, 3, padding=1, weight_quant=DynaWeightQuant, input_quant=act_quant, input_calibration_batches=1)
    conv.train()(torch.randn(4, 3, 8, 8).abs())
    weight_tq(conv).set_bit_width(4)
    conv.eval()
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        expected = conv(x).numpy()
    path = tmp_path / "conv.onnx"
    export_qonnx(conv, x, export_path=str(path), dynamo=False)
    model = ModelWrapper(str(path)).transform(InferShapes())
    quant_nodes = [n for n in model.graph.node if n.op_type == "Quant"]
    assert len(quant_nodes) == 2
    assert sorted(float(model.get_initializer(n.input[3])) for n in quant_nodes) == [4.0, 8.0]
    got = execute_onnx(model, {model.graph.input[0].name: x.numpy()})[model.graph.output[0].name]
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() < 1e-5


def test_dead_channel_gets_a_small_zero_point_and_keeps_its_value():
    layer = QuantIdentity(act_quant=DynaActQuant, return_quant_tensor=False).train()
    x = torch.randn(4, 3, 6, 6)
    x[:, 1] = 2.5  # a constant channel
    x[:, 2] = 0.0  # an all-zero channel
    layer(x)
    tq = act_tq(layer.act_quant)
    _, scale, zero_point, _ = tq(x)
    assert zero_point.abs().max() < 1e3
    layer.eval()
    out = layer(x)
    torch.testing.assert_close(out[:, 1], x[:, 1], rtol=0, atol=1e-6)
    torch.testing.assert_close(out[:, 2], x[:, 2], rtol=0, atol=1e-6)
