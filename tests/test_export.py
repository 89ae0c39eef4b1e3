"""QONNX export: zero points folded exactly, qonnx execution equal to PyTorch, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from brevitas.nn import QuantConv2d, QuantConvTranspose2d
from compressai.models import FactorizedPrior, FactorizedPriorReLU, MeanScaleHyperprior
from qonnx.core.modelwrapper import ModelWrapper

from dynaquant_brevitas import calibrate
from dynaquant_brevitas.transform.config import DynaQuantConfig
from dynaquant_brevitas.export import VerificationError, export_qonnx, fold_zero_points, verify_qonnx
from dynaquant_brevitas.export.deconv import conv_transpose_as_conv
from dynaquant_brevitas.export.precheck import FinnUnsupportedError, check_finn, finn_precheck
from dynaquant_brevitas.export.qonnx import run_qonnx
from dynaquant_brevitas.quant import DynaActQuant, DynaWeightQuant
from dynaquant_brevitas.transform import dynaquantize, freeze

MIXED = {"g_a.2": 6, "g_a.4": 4, "g_a.6": 8, "g_s.2": 8, "g_s.4": 4, "g_s.6": 6}


@pytest.fixture(scope="module")
def codec() -> torch.nn.Module:
    """A small FactorizedPriorReLU, dynaquantized with activation offsets (what the zero-point
    folding handles), calibrated on random images, frozen mixed."""
    torch.manual_seed(0)
    model = dynaquantize(FactorizedPriorReLU(6, 8), DynaQuantConfig(candidate_bits=(4, 6, 8), learn_offset=True))
    calibrate(model, [torch.rand(2, 3, 64, 64) for _ in range(2)])
    # an untrained encoder's latents round to almost only zeros: calibrate g_s on spread-out ones
    calibrate(model.g_s, [torch.randn(2, 8, 4, 4) * 3 for _ in range(2)])
    return freeze(model, MIXED)


def _zero_points(path: str) -> list:
    model = ModelWrapper(path)
    return [model.get_initializer(n.input[2]) for n in model.graph.node if n.op_type == "Quant"]


@pytest.mark.parametrize("part, shape", [("g_a", (1, 3, 32, 48)), ("g_s", (1, 8, 3, 2))])
def test_qonnx_export_matches_pytorch(codec, tmp_path, part, shape):
    module = getattr(codec, part)
    path = str(tmp_path / f"{part}.onnx")
    result = export_qonnx(module, path, shape)
    assert result.samples == 4 and result.max_error_steps < 1e-2
    assert all(not np.any(z) for z in _zero_points(path)), "a quantizer kept a nonzero zero point"
    # independent check on a fresh input, outside the default samples
    x = torch.randn(shape) * (1 if part == "g_s" else 0.3) + 0.5
    with torch.no_grad():
        expected = module(x).numpy()
    np.testing.assert_allclose(run_qonnx(ModelWrapper(path), x.numpy()), expected, rtol=0, atol=1e-4)


def _offset_conv(transposed: bool) -> torch.nn.Module:
    """A layer whose input quantizer has fractional, per-channel zero points off any common grid."""
    torch.manual_seed(1)
    kw = dict(weight_quant=DynaWeightQuant, input_quant=DynaActQuant, return_quant_tensor=False)
    if transposed:
        layer = QuantConvTranspose2d(3, 4, 5, stride=2, padding=2, output_padding=1, **kw)
    else:
        layer = QuantConv2d(3, 4, 5, stride=2, padding=2, **kw)
    layer.train()(torch.randn(2, 3, 8, 8) + 2.0)
    tq = layer.input_quant.fused_activation_quant_proxy.tensor_quant
    tq.offset.data = torch.tensor([2.3, -0.71, 5.05])
    return layer.eval()


@pytest.mark.parametrize("transposed", [False, True])
def test_offset_folding_is_exact_and_the_border_map_matters(tmp_path, transposed):
    layer = _offset_conv(transposed)
    path = str(tmp_path / "layer.onnx")
    result = export_qonnx(layer, path, (1, 3, 6, 7))
    assert result.fold.correction_maps == 1
    folded = ModelWrapper(path)
    x = torch.randn(1, 3, 6, 7) * 3 + 2
    with torch.no_grad():
        expected = layer(x).numpy()
    got = run_qonnx(folded, x.numpy())
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    # Without the correction map (offset folded into a constant bias), borders would be wrong.
    add = next(n for n in folded.graph.node if n.name.endswith("_offset_map"))
    correction = folded.get_initializer(add.input[1])
    interior = correction[:, :, correction.shape[2] // 2, correction.shape[3] // 2]
    assert np.abs(correction - interior[:, :, None, None]).max() > 1e-3


def test_relu_outputs_move_to_an_unsigned_grid_without_correction_map(codec, tmp_path):
    """Calibrated on a ReLU output (lower percentile 0), z = -qmax: an unsigned grid, no map."""
    path = str(tmp_path / "g_a.onnx")
    result = export_qonnx(codec.g_a, path, (1, 3, 16, 16), snap=1e-3)
    after_relu = result.fold.folded[1:]
    assert len(after_relu) == 3 and all(not f.signed and f.shift < 0 for f in after_relu)
    assert any(f.channels_off_grid == 0 and f.correction_after == [] for f in after_relu)
    assert result.max_error_steps < 1


def test_verification_fails_loudly_on_a_wrong_graph(codec, tmp_path):
    module = codec.g_s
    path = str(tmp_path / "g_s.onnx")
    export_qonnx(module, path, (1, 8, 2, 2))
    model = ModelWrapper(path)
    first = next(n for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose"))
    bias = model.get_initializer(first.input[2])
    model.set_initializer(first.input[2], bias + 0.5)
    with pytest.raises(VerificationError, match="output steps"):
        verify_qonnx(module, model, [torch.randn(1, 8, 2, 2) * 3], step=1e-3)


@pytest.mark.parametrize("k, s, p, op", [(5, 2, 2, 1), (3, 2, 1, 1), (5, 2, 2, 0), (3, 1, 1, 0), (4, 3, 1, 2)])
def test_conv_transpose_as_zero_insertion_and_conv_is_exact(k, s, p, op):
    generator = torch.Generator().manual_seed(k * 100 + s * 10 + op)
    x = torch.randint(-8, 8, (2, 3, 5, 4), generator=generator).double()
    w = torch.randint(-8, 8, (3, 2, k, k), generator=generator).double()
    expected = F.conv_transpose2d(x, w, stride=s, padding=p, output_padding=op)
    assert torch.equal(conv_transpose_as_conv(x, w, s, p, op), expected)


def test_precheck_names_gdn_with_a_suggestion():
    model = dynaquantize(FactorizedPrior(8, 12), DynaQuantConfig(candidate_bits=(8,)))
    calibrate(model, [torch.rand(1, 3, 32, 32)])
    problems = finn_precheck(model.g_a)
    assert [p.module for p in problems if p.kind == "GDN"] == ["1", "3", "5"]
    with pytest.raises(FinnUnsupportedError) as info:
        check_finn(model.g_s)
    message = str(info.value)
    assert "1 (GDN)" in message and "square root" in message and "FactorizedPriorReLU" in message
    assert len(info.value.problems) == 3


def test_precheck_accepts_the_frozen_relu_codec(codec):
    assert finn_precheck(codec.g_a) == [] and finn_precheck(codec.g_s) == []
    assert [p.kind for p in finn_precheck(FactorizedPriorReLU(4, 6).g_a)] == ["unquantized"] * 4


def test_fold_is_a_noop_without_zero_points(tmp_path):
    torch.manual_seed(2)
    conv = QuantConv2d(2, 2, 3, weight_quant=DynaWeightQuant, return_quant_tensor=False).eval()
    from dynaquant_brevitas.export.qonnx import _brevitas_export

    model, report = fold_zero_points(_brevitas_export(conv, (1, 2, 5, 5)))
    assert report.folded == []


def test_cli_export_writes_verified_qonnx(tmp_path, capsys):
    from dynaquant_brevitas.io.checkpoint import make_checkpoint, save_atomic
    from dynaquant_brevitas.cli import main

    torch.manual_seed(3)
    config = DynaQuantConfig(candidate_bits=(4, 8))
    model = dynaquantize(FactorizedPriorReLU(4, 6), config)
    calibrate(model, [torch.rand(2, 3, 32, 32)])
    checkpoint = tmp_path / "model.pt"
    save_atomic(make_checkpoint(model, "bmshj2018-factorized-relu", {"N": 4, "M": 6}, dynaquant=config.to_dict()),
                checkpoint)
    out = tmp_path / "export"
    status = main(["export", "--checkpoint", str(checkpoint), "--profile", "g_a.2=4,g_a.4=8,g_a.6=4,g_s.2=8,"
                   "g_s.4=4,g_s.6=8", "--size", "32x32", "-o", str(out)])
    assert status == 0
    assert (out / "g_a.onnx").is_file() and (out / "g_s.onnx").is_file()
    printed = capsys.readouterr().out
    assert "'g_a.4': 8" in printed and printed.count("output steps") == 2
    assert main(["export", "--checkpoint", str(checkpoint), "--profile", "g_a.2=5", "-o", str(out)]) == 2


def test_export_refuses_a_part_that_still_follows_the_selector(tmp_path):
    torch.manual_seed(4)
    model = dynaquantize(FactorizedPriorReLU(4, 6), DynaQuantConfig(candidate_bits=(4, 8)))
    calibrate(model, [torch.rand(2, 3, 32, 32)])
    with torch.no_grad():
        model.eval()(torch.rand(2, 3, 32, 32))  # the selector sets a per-sample choice
    with pytest.raises(ValueError, match="freeze"):
        export_qonnx(model.g_a, str(tmp_path / "g_a.onnx"), (1, 3, 32, 32))
    result = export_qonnx(freeze(model, "min").g_a, str(tmp_path / "g_a.onnx"), (1, 3, 32, 32))
    assert result.max_error_steps < 1


@pytest.mark.parametrize("image_range", ["per-image", "per-image-adaptive"])
def test_per_image_ranges_code_real_bitstreams_and_refuse_export(tmp_path, image_range):
    """Per-image activation grids need no side information: the decoder derives them from what it
    decoded, so decompress() gives what the quantized forward pass gives; ONNX export is refused."""
    torch.manual_seed(5)
    model = dynaquantize(MeanScaleHyperprior(8, 12), DynaQuantConfig(candidate_bits=(8,), activation_range=image_range))
    calibrate(model, [torch.rand(2, 3, 128, 128)])
    model.eval().update(force=True)
    x = 0.3 * torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        coded = model.compress(x)
        decoded = model.decompress(coded["strings"], coded["shape"])["x_hat"]
        expected = model(x)["x_hat"].clamp(0, 1)  # decompress() clamps to the pixel range
    assert torch.allclose(decoded, expected, atol=1e-4)
    with pytest.raises(ValueError, match="activation_range='static'"):
        export_qonnx(model.g_a, str(tmp_path / "g_a.onnx"), (1, 3, 64, 64))


def test_border_bias_keeps_only_channel_biases_and_stays_close_on_the_encoder(codec, tmp_path):
    path = str(tmp_path / "g_a.onnx")
    result = export_qonnx(codec.g_a, path, (1, 3, 32, 48), step=1.0, border="bias", snap=1e-3)
    model = ModelWrapper(path)
    corrections = [model.get_initializer(n.input[1]) for n in model.graph.node if n.name.endswith("_offset_map")]
    assert corrections and all(c.shape[2:] == (1, 1) for c in corrections)
    assert result.max_error_steps < 0.05  # latents are rounded to integers: a 20th of a step
