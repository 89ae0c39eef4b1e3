"""dynaquantize on every CompressAI image model, the codec API, freeze, state dicts, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from compressai.layers import MaskedConv2d
from compressai.models import CompressionModel, FactorizedPrior, ScaleHyperprior
from compressai.registry import MODELS
from torch import nn

from dynaquant_brevitas import (
    DynaQuantConfig,
    UnsupportedModuleError,
    bit_loss,
    calibrate,
    dynaquant_layers,
    dynaquantize,
    freeze,
    plan_quantization,
)
from dynaquant_brevitas.nn.layers import (
    DynaQuantConv2d,
    DynaQuantConvTranspose2d,
    DynaQuantLinear,
    DynaQuantMaskedConv2d,
)
from dynaquant_brevitas.quant import BitChoice

GROUPS = dict(N=8, M=40, groups=[4, 4, 8, 8, 16])
SMALL_MODELS = {
    "bmshj2018-factorized": dict(N=8, M=12),
    "bmshj2018-factorized-relu": dict(N=8, M=12),
    "bmshj2018-hyperprior": dict(N=8, M=12),
    "mbt2018-mean": dict(N=8, M=12),
    "mbt2018": dict(N=8, M=12),
    "cheng2020-anchor": dict(N=8),
    "cheng2020-attn": dict(N=8),
    "cheng2020-anchor-checkerboard": dict(N=8),
    "elic2022-official": GROUPS,
    "elic2022-chandelier": GROUPS,
    "bmshj2018-hyperprior-vbr": dict(N=8, M=12),
    "mbt2018-mean-vbr": dict(N=8, M=12),
    "mbt2018-vbr": dict(N=8, M=12),
}
# Autoregressive coders whose float forward rounds without the means, so decode != forward.
FORWARD_DIFFERS_FROM_DECODE = {"cheng2020-anchor", "cheng2020-attn"}


def _rd_loss(out, x):
    pixels = x.shape[0] * x.shape[2] * x.shape[3]
    bpp = sum(-l.log2().sum() for l in out["likelihoods"].values()) / pixels
    return bpp + 100 * F.mse_loss(out["x_hat"], x) + 0.01 * bit_loss(out)


def _pad64(x):
    h, w = x.shape[-2:]
    return F.pad(x, (0, (-w) % 64, 0, (-h) % 64))


def test_registry_is_covered():
    image_models = {n for n in MODELS if "pcc" not in n and n != "ssf2020"}
    assert image_models == set(SMALL_MODELS)


@pytest.mark.parametrize("name", sorted(SMALL_MODELS))
def test_every_registry_model(name):
    torch.manual_seed(0)
    model = dynaquantize(MODELS[name](**SMALL_MODELS[name]))
    assert model.dynaquant.selectors, "dynamic layers expected on both sides"
    x = torch.rand(2, 3, 64, 64)
    calibrate(model, [x])

    model.train()
    out = model(x)
    assert set(out) >= {"x_hat", "likelihoods", "bits"}
    _rd_loss(out, x).backward()
    selector_grads = [p.grad for p in model.dynaquant.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in selector_grads)

    model.eval()
    model.update(force=True)
    image = torch.rand(1, 3, 40, 56)  # sides not multiples of 64, padded as CompressAI's eval
    padded = _pad64(image)
    with torch.no_grad():
        first = model.compress(padded)
        second = model.compress(padded)
        decoded = model.decompress(first["strings"], first["shape"])["x_hat"]
        again = model.decompress(first["strings"], first["shape"])["x_hat"]
        forward = model(padded)["x_hat"]
    assert first["strings"] == second["strings"], "encoding must be deterministic"
    assert torch.equal(decoded, again), "decoding must be deterministic"
    assert decoded.shape == padded.shape
    if name not in FORWARD_DIFFERS_FROM_DECODE:
        assert torch.equal(decoded.clamp(0, 1), forward.clamp(0, 1))


def test_plan_keeps_first_modules_and_hyper_transforms_fixed():
    plan = plan_quantization(ScaleHyperprior(8, 12))
    assert plan.taps == {"encoder": "g_a.0", "decoder": "g_s.0"}
    assert plan.dynamic == {"encoder": ["g_a.2", "g_a.4", "g_a.6"], "decoder": ["g_s.2", "g_s.4", "g_s.6"]}
    assert set(plan.fixed) == {"g_a.0", "g_s.0", "h_a.0", "h_a.2", "h_a.4", "h_s.0", "h_s.2", "h_s.4"}
    assert "g_a.1" in plan.float and "entropy_bottleneck" in plan.float


def test_fixed_layers_use_fixed_bits_and_dynamic_layers_follow_the_selector():
    model = dynaquantize(ScaleHyperprior(8, 12), DynaQuantConfig(candidate_bits=(4, 6), fixed_bits=7))
    layers = dict(dynaquant_layers(model))
    assert layers["h_a.0"].bit_width == 7 and layers["g_a.0"].bit_width == 7
    x = torch.rand(3, 3, 64, 64)
    calibrate(model, [x])
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert set(out["bits"]["bits"].unique().tolist()) <= {4.0, 6.0}
    assert out["bits"]["layers"] == ["g_a.2", "g_a.4", "g_a.6", "g_s.2", "g_s.4", "g_s.6"]


def test_mbt2018_context_model_keeps_its_mask_and_stays_float():
    model = dynaquantize(MODELS["mbt2018"](N=8, M=12))
    assert type(model.context_prediction) is MaskedConv2d
    assert model.context_prediction.mask.sum() < model.context_prediction.mask.numel()


def test_masked_conv_in_a_transform_keeps_its_mask():
    conv = MaskedConv2d(4, 4, 5, padding=2)
    layer = DynaQuantMaskedConv2d.from_float(conv, bits=6)
    masked_out = layer.mask == 0
    assert torch.all(layer.quant_weight().value[masked_out.expand_as(layer.weight)] == 0)
    x = torch.randn(2, 4, 8, 8)
    layer.train()(x)
    with torch.no_grad():
        layer.weight.add_(1.0)  # an update that would leak through the mask
    layer.eval()
    layer(x)
    assert torch.all(layer.weight[masked_out.expand_as(layer.weight)] == 0)


LAYER_CASES = [
    (lambda: nn.Conv2d(4, 6, 3, padding=1, stride=2), (3, 4, 9, 9)),
    (lambda: nn.Conv2d(4, 6, 3, padding=1, groups=2), (3, 4, 8, 8)),
    (lambda: nn.ConvTranspose2d(4, 6, 5, stride=2, padding=2, output_padding=1), (3, 4, 5, 5)),
    (lambda: nn.Linear(4, 6), (3, 7, 4)),
    (lambda: MaskedConv2d(4, 6, 5, padding=2), (3, 4, 8, 8)),
]
HANDLERS = {
    nn.Conv2d: DynaQuantConv2d,
    nn.ConvTranspose2d: DynaQuantConvTranspose2d,
    nn.Linear: DynaQuantLinear,
    MaskedConv2d: DynaQuantMaskedConv2d,
}


@pytest.mark.parametrize("make, shape", LAYER_CASES)
def test_mixed_batch_equals_per_sample_runs(make, shape):
    torch.manual_seed(1)
    float_layer = make()
    layer = HANDLERS[type(float_layer)].from_float(float_layer, bits=8)
    x = torch.randn(*shape)
    calibrate(layer, [x])
    layer.train()
    logits = torch.tensor([[3.0, 0, 0], [0, 3.0, 0], [0, 0, 3.0]], requires_grad=True)
    weights = F.gumbel_softmax(logits, tau=1.0, hard=True)
    layer.set_bit_choice(BitChoice((4, 6, 8), weights))
    mixed = layer(x)
    mixed.square().sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    chosen = weights.argmax(1).tolist()
    with torch.no_grad():
        singles = []
        for n, k in enumerate(chosen):
            layer.set_bit_choice(None)
            layer.set_bit_width((4, 6, 8)[k])
            singles.append(layer(x[n : n + 1]))
    torch.testing.assert_close(mixed.detach(), torch.cat(singles), rtol=0, atol=1e-5)


def _flat_and_textured(size=32):
    flat = torch.full((1, 3, size, size), 0.5)
    textured = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(3))
    return flat, textured


def test_selector_learns_to_tell_flat_from_textured():
    torch.manual_seed(0)
    model = dynaquantize(FactorizedPrior(8, 12), DynaQuantConfig(candidate_bits=(4, 8), selector_dropout=0.0))
    flat, textured = _flat_and_textured()
    batch = torch.cat([flat, textured])
    calibrate(model, [batch])
    params = list(model.dynaquant.parameters())
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(params, lr=1e-2)
    push = torch.tensor([1.0, -1.0])  # toy objective: fewer bits for flat, more for textured
    model.train()
    for _ in range(40):
        model(batch)
        loss = 0
        for selection in model.dynaquant.last.values():
            table = torch.tensor([w for w, _ in selection.candidates], dtype=torch.float32)
            hard_bits = (selection.weights * table).sum(-1).mean(-1)  # straight-through
            loss = loss + (push * hard_bits).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        bits = model(batch)["bits"]["bits"]
    assert bits[0].mean() < bits[1].mean()


def test_freeze_gives_fixed_bits_without_selectors():
    model = dynaquantize(ScaleHyperprior(8, 12), DynaQuantConfig(candidate_bits=(4, 6, 8)))
    x = torch.rand(2, 3, 64, 64)
    calibrate(model, [x])
    frozen = freeze(model, "max")
    assert not hasattr(frozen, "dynaquant") and hasattr(model, "dynaquant")
    assert set(frozen.dynaquant_profile[n] for n in ("g_a.2", "g_s.6")) == {8}
    frozen.eval()
    with torch.no_grad():
        out = frozen(x)
    assert "bits" not in out
    profile = {n: 4 for n in model.dynaquant.layer_names["encoder"] + model.dynaquant.layer_names["decoder"]}
    low = freeze(model, profile)
    assert {low.dynaquant_profile[n] for n in profile} == {4}
    mode = freeze(model, "mode", images=[x[0], x[1]])
    assert set(mode.dynaquant_profile) >= set(profile)
    with pytest.raises(ValueError, match="missing"):
        freeze(model, {"g_a.2": 4})
    with pytest.raises(ValueError, match="candidates"):
        freeze(model, {**profile, "g_a.2": 5})


def test_state_dict_round_trip_gives_identical_outputs_and_bitstreams():
    config = DynaQuantConfig(candidate_bits=(4, 6, 8))
    torch.manual_seed(0)
    source = dynaquantize(ScaleHyperprior(8, 12), config)
    x = torch.rand(2, 3, 64, 64)
    calibrate(source, [x])
    source.train()
    _rd_loss(source(x), x).backward()
    source.eval()
    source.update(force=True)
    torch.manual_seed(1)
    target = dynaquantize(ScaleHyperprior(8, 12), config)
    target.load_state_dict(source.state_dict())
    target.eval()
    image = _pad64(torch.rand(1, 3, 50, 60))
    with torch.no_grad():
        a, b = source(image), target(image)
        assert torch.equal(a["x_hat"], b["x_hat"]) and torch.equal(a["bits"]["bits"], b["bits"]["bits"])
        assert source.compress(image)["strings"] == target.compress(image)["strings"]


class _Scale(nn.Module):
    def __init__(self):
        super().__init__()
        self.gain = nn.Parameter(torch.ones(1))

    def forward(self, x):
        return x * self.gain


class _CustomModel(CompressionModel):
    def __init__(self):
        super().__init__()
        self.g_a = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), _Scale())
        self.g_s = nn.Sequential(nn.ConvTranspose2d(4, 4, 3, stride=2, padding=1, output_padding=1), nn.Conv2d(4, 3, 3, padding=1))

    def forward(self, x):
        return {"x_hat": self.g_s(self.g_a(x)), "likelihoods": {}}


def test_unsupported_layer_error_names_path_and_type():
    with pytest.raises(UnsupportedModuleError, match=r"'g_a\.3'.*_Scale"):
        dynaquantize(_CustomModel())


def test_unsupported_layer_can_be_skipped_with_a_warning():
    with pytest.warns(UserWarning, match="g_a.3"):
        model = dynaquantize(_CustomModel(), DynaQuantConfig(unsupported="skip"))
    assert isinstance(model.g_a[3], _Scale) and isinstance(model.g_a[2], DynaQuantConv2d)
    calibrate(model, [torch.rand(1, 3, 16, 16)])
    assert model.eval()(torch.rand(1, 3, 16, 16))["x_hat"].shape == (1, 3, 16, 16)


def test_missing_transform_gives_clear_error():
    with pytest.raises(ValueError, match="no module 'g_a'"):
        dynaquantize(nn.Sequential(nn.Conv2d(3, 3, 1)))


def test_already_dynaquantized_is_refused():
    model = dynaquantize(FactorizedPrior(8, 12))
    with pytest.raises(ValueError, match="already"):
        dynaquantize(model)


def test_uncalibrated_model_in_eval_says_what_to_do():
    model = dynaquantize(FactorizedPrior(8, 12)).eval()
    with pytest.raises(RuntimeError, match="calibrate"):
        model(torch.rand(1, 3, 64, 64))


def test_static_config_has_no_selector():
    model = dynaquantize(FactorizedPrior(8, 12), DynaQuantConfig(candidate_bits=(6,)))
    assert not model.dynaquant.selectors
    assert {layer.bit_width for name, layer in dynaquant_layers(model) if name in ("g_a.2", "g_s.6")} == {6}
    calibrate(model, [torch.rand(1, 3, 64, 64)])
    assert float(bit_loss(model(torch.rand(1, 3, 64, 64)))) == 0.0


def test_freeze_after_a_training_forward():
    model = dynaquantize(FactorizedPrior(8, 12))
    calibrate(model, [torch.rand(2, 3, 64, 64)])
    model.train()(torch.rand(2, 3, 64, 64))  # leaves a selection that carries a training graph
    frozen = freeze(model, "max")
    assert not hasattr(frozen, "dynaquant") and model.dynaquant.last  # the original keeps its state
    assert model.g_a[2].bit_choice is not None and frozen.g_a[2].bit_choice is None
