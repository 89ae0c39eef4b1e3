"""Packed model files: integers round-trip exactly, weights dequantize to what the layers compute."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from brevitas.nn import QuantConv2d, QuantConvTranspose2d
from brevitas.quant import Int8ActPerTensorFloat, Int8WeightPerChannelFloat
from compressai.models import ScaleHyperprior

from dynaquant_brevitas import DynaQuantConfig, calibrate, dynaquantize, freeze
from dynaquant_brevitas.transform.cost import model_size_bytes
from dynaquant_brevitas.export.packing import integer_weight, pack_ints, pack_model, unpack_ints, unpack_model


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 16])
@pytest.mark.parametrize("signed", [True, False])
def test_pack_ints_round_trips_exactly(bits, signed):
    rng = np.random.default_rng(bits)
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    for count in (0, 1, 7, 8, 1001):
        values = rng.integers(lo, hi + 1, size=count)
        if count > 2:
            values[:2] = [lo, hi]  # both ends of the range
        data = pack_ints(values, bits, signed)
        assert len(data) == -(-count * bits // 8)  # no padding beyond the last byte
        assert np.array_equal(unpack_ints(data, bits, count, signed), values)


def test_pack_ints_refuses_values_that_do_not_fit():
    with pytest.raises(ValueError, match="do not fit"):
        pack_ints([8], 4, signed=True)
    with pytest.raises(ValueError, match="do not fit"):
        pack_ints([-1], 4, signed=False)


def _dynamic_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = dynaquantize(ScaleHyperprior(8, 12), DynaQuantConfig(candidate_bits=(4, 6, 8)))
    calibrate(model, [torch.rand(2, 3, 64, 64)])
    return model.eval()


def test_packed_dynaquant_model_dequantizes_to_the_layers_weights(tmp_path):
    model = _dynamic_model()
    profile = {"g_a.2": 4, "g_a.4": 6, "g_a.6": 8, "g_s.2": 6, "g_s.4": 4, "g_s.6": 8}
    frozen = freeze(model, profile)
    report = pack_model(frozen, tmp_path / "m.dqpk")
    assert report.size_bytes == (tmp_path / "m.dqpk").stat().st_size
    assert report.size_bytes == report.header_bytes + report.int_bytes + report.float_bytes
    unpacked = unpack_model(tmp_path / "m.dqpk")
    layers = dict(frozen.named_modules())
    for name, bits in report.layers.items():
        (b,) = bits
        assert b == profile.get(name, 8)
        expected = layers[name].quant_weight().value.detach().numpy()
        assert np.array_equal(unpacked["dequantized"][name][b], expected), name  # bit-exact
        iw = integer_weight(layers[name])
        assert np.array_equal(unpacked["tensors"][f"{name}.weight@{b}"], iw["q"].numpy())
    # every parameter the packed file does not replace by integers is stored once, as float32
    stored = set(unpacked["tensors"])
    for name, param in frozen.named_parameters():
        layer = name.split(".weight")[0]
        if param.numel() and layer not in report.layers:
            assert name in stored, name
    # the estimate counts the same things without the header
    estimate = model_size_bytes(frozen)
    assert abs(report.int_bytes + report.float_bytes - estimate) / estimate < 0.05


def test_dynamic_model_packs_every_candidate(tmp_path):
    model = _dynamic_model()
    dynamic = model.dynaquant.layer_names["encoder"] + model.dynaquant.layer_names["decoder"]
    report = pack_model(model, tmp_path / "all.dqpk", {name: (4, 6, 8) for name in dynamic})
    single = pack_model(freeze(model, "max"), tmp_path / "max.dqpk")
    assert all(report.layers[name] == [4, 6, 8] for name in dynamic)
    assert report.int_bytes > single.int_bytes
    unpacked = unpack_model(tmp_path / "all.dqpk")
    layer = dict(model.named_modules())[dynamic[0]]
    for bits in (4, 6, 8):
        layer.set_bit_width(bits)
        assert np.array_equal(unpacked["dequantized"][dynamic[0]][bits], layer.quant_weight().value.detach().numpy())


def test_brevitas_stock_layers_pack_too(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        QuantConv2d(3, 4, 3, weight_quant=Int8WeightPerChannelFloat, input_quant=Int8ActPerTensorFloat),
        QuantConvTranspose2d(4, 5, 3, stride=2, weight_quant=Int8WeightPerChannelFloat),
    ).eval()
    report = pack_model(model, tmp_path / "b.dqpk")
    assert report.layers == {"0": [8], "1": [8]}
    unpacked = unpack_model(tmp_path / "b.dqpk")
    for name, layer in model.named_children():
        assert np.array_equal(unpacked["dequantized"][name][8], layer.quant_weight().value.detach().numpy())


def test_compact_checkpoints_store_integers_and_rebuild_the_same_model(tmp_path):
    """Frozen mixed precision (2- to 8-bit weights): integers on disk, the same quantized weights
    and outputs after loading; a dynamic model keeps its float weights."""
    import torch
    from compressai.models import ScaleHyperprior

    from dynaquant_brevitas import DynaQuantConfig, calibrate, dynaquantize, freeze, load_model, save_model
    from dynaquant_brevitas.io.checkpoint import load_checkpoint

    torch.manual_seed(0)
    model = dynaquantize(ScaleHyperprior(8, 12), DynaQuantConfig(weight_bits=(2, 4, 8), activation_bits=(8,)))
    calibrate(model, [torch.rand(2, 3, 64, 64)])
    frozen = freeze(model, "min").eval()
    small = save_model(frozen, tmp_path / "frozen.pt", compact=True)
    ckpt = load_checkpoint(small)
    assert all(ckpt["state_dict"][k].dtype == torch.int8 for k in ckpt["integer_weights"])
    assert sorted(set(ckpt["integer_weights"].values())) == [2, 8]  # the dynamic layers at min, fixed at 8
    again = load_model(small).eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(again(x)["x_hat"], frozen(x)["x_hat"])
    assert small.stat().st_size < 0.7 * save_model(frozen, tmp_path / "full.pt").stat().st_size
    dynamic = load_checkpoint(save_model(model, tmp_path / "dynamic.pt", compact=True))
    assert dynamic["integer_weights"] == {}


def test_a_compact_checkpoint_naming_a_wrong_layer_is_refused(tmp_path):
    import pytest
    import torch
    from compressai.models import ScaleHyperprior

    from dynaquant_brevitas import DynaQuantConfig, calibrate, dynaquantize, load_model, save_model
    from dynaquant_brevitas.io.checkpoint import CheckpointError, load_checkpoint, save_atomic

    model = dynaquantize(ScaleHyperprior(8, 12), DynaQuantConfig(candidate_bits=(8,)))
    calibrate(model, [torch.rand(1, 3, 64, 64)])
    ckpt = load_checkpoint(save_model(model, tmp_path / "m.pt", compact=True))
    ckpt["integer_weights"]["g_a.1.beta"] = 8
    save_atomic(ckpt, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="g_a.1.beta"):
        load_model(tmp_path / "bad.pt")
