"""Integer kernels in onnxruntime for QCDQ graphs (dynaquant_brevitas.export.ort_int8), with real onnxruntime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("onnxruntime")
pytest.importorskip("brevitas")

from dynaquant_brevitas.export.ort import OrtModule, int8_session  # noqa: E402
from dynaquant_brevitas.export.ort_int8 import _polyphase_weight, quantize_conv_outputs  # noqa: E402


class Tiny(nn.Module):
    """Conv -> GDN -> ConvTranspose, Brevitas's stock int8 quantizers (per-tensor inputs)."""

    def __init__(self, per_channel: bool = False) -> None:
        from brevitas.nn import QuantConv2d, QuantConvTranspose2d
        from brevitas.quant import Int8ActPerTensorFloat, Int8WeightPerChannelFloat
        from compressai.layers import GDN

        super().__init__()
        quant = dict(weight_quant=Int8WeightPerChannelFloat, input_quant=Int8ActPerTensorFloat,
                     return_quant_tensor=False)

        def inputs(channels: int) -> dict:  # Brevitas's per-channel activation scale, by keyword
            return dict(input_scaling_per_output_channel=True, input_scaling_stats_permute_dims=(1, 0, 2, 3),
                        input_per_channel_broadcastable_shape=(1, channels, 1, 1)) if per_channel else {}

        self.conv = QuantConv2d(3, 16, 5, stride=2, padding=2, **quant, **inputs(3))
        self.gdn = GDN(16)
        self.deconv = QuantConvTranspose2d(16, 3, 5, stride=2, padding=2, output_padding=1, **quant, **inputs(16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.deconv(self.gdn(self.conv(x)))


def _exported(tmp_path: Path, per_channel: bool = False) -> tuple:
    from brevitas.export import export_onnx_qcdq
    from brevitas.graph.calibrate import calibration_mode

    torch.manual_seed(0)
    model = Tiny(per_channel)
    images = [torch.rand(2, 3, 64, 64) for _ in range(3)]
    with torch.no_grad(), calibration_mode(model):
        for x in images:
            model(x)
    model.eval()
    x = torch.rand(1, 3, 64, 64)
    path = tmp_path / "qcdq.onnx"
    with torch.no_grad():
        export_onnx_qcdq(model, x, str(path), dynamo=False, opset_version=13)
        expected = model(x).numpy()
    return path, [b.numpy() for b in images], x.numpy(), expected


@pytest.fixture(scope="module")
def per_tensor(tmp_path_factory):
    return _exported(tmp_path_factory.mktemp("per_tensor"))


@pytest.mark.parametrize("kernel, tolerance", [("s8s8", 0.02), ("u8s8", 0.04)])
def test_convolutions_run_as_qlinearconv(per_tensor, tmp_path, kernel, tolerance):
    path, calibration, x, expected = per_tensor
    report = quantize_conv_outputs(path, calibration, tmp_path / "int8.onnx", kernel=kernel)
    assert len(report.quantized) == 2 and report.polyphase == ["/deconv/ConvTranspose"]
    assert set(report.skipped.values()) == {"input is not quantized"}  # GDN's own 1x1 convolution
    session, ops = int8_session(report.path)
    assert ops.get("QLinearConv") == 2, ops
    assert "ConvTranspose" not in ops and ops.get("Conv") == 1, ops  # only GDN's stays float
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    assert got.shape == expected.shape
    # 8-bit conv outputs (and, for u8s8, 7-bit weights): a few output steps of the [0, 1]-ish image
    assert np.abs(got - expected).max() < tolerance * max(1.0, np.abs(expected).max())


def test_s8s8_fused_matches_unfused_graph(per_tensor, tmp_path):
    import onnxruntime as ort

    path, calibration, x, _ = per_tensor
    report = quantize_conv_outputs(path, calibration, tmp_path / "int8.onnx", kernel="s8s8")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    unfused = ort.InferenceSession(str(report.path), options, providers=["CPUExecutionProvider"])
    fused, _ = int8_session(report.path)
    name = fused.get_inputs()[0].name
    a, b = unfused.run(None, {name: x})[0], fused.run(None, {name: x})[0]
    assert np.abs(a - b).max() <= 1e-5 + 0.01 * np.abs(a).max()


def test_ort_module_is_a_torch_module(per_tensor, tmp_path):
    path, calibration, x, expected = per_tensor
    session, _ = int8_session(quantize_conv_outputs(path, calibration, tmp_path / "int8.onnx").path)
    out = OrtModule(session)(torch.from_numpy(x))
    assert isinstance(out, torch.Tensor) and out.shape == expected.shape


def test_per_channel_inputs_do_not_fuse(tmp_path):
    path, calibration, _, _ = _exported(tmp_path, per_channel=True)
    report = quantize_conv_outputs(path, calibration, tmp_path / "int8.onnx")
    assert not report.quantized
    assert any("per channel" in reason for reason in report.skipped.values()), report.skipped
    _, ops = int8_session(report.path)
    assert "QLinearConv" not in ops


@pytest.mark.parametrize("kernel_size, stride, padding, output_padding", [(5, 2, 2, 1), (3, 1, 1, 0), (4, 2, 1, 0)])
def test_polyphase_equals_conv_transpose(kernel_size, stride, padding, output_padding):
    from onnx import helper

    torch.manual_seed(0)
    x, w = torch.randn(1, 4, 7, 9), torch.randn(4, 3, kernel_size, kernel_size)
    node = helper.make_node("ConvTranspose", ["x", "w"], ["y"], strides=[stride] * 2, pads=[padding] * 4,
                            output_padding=[output_padding] * 2)
    weight, pads, s = _polyphase_weight(w.numpy(), node)
    phases = F.conv2d(F.pad(x, (pads[1], pads[3], pads[0], pads[2])), torch.from_numpy(weight))
    expected = F.conv_transpose2d(x, w, stride=stride, padding=padding, output_padding=output_padding)
    torch.testing.assert_close(F.pixel_shuffle(phases, s), expected, atol=1e-4, rtol=1e-4)


def test_clear_errors(per_tensor, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    path, calibration, _, _ = per_tensor
    with pytest.raises(FileNotFoundError, match="no ONNX file"):
        quantize_conv_outputs(tmp_path / "missing.onnx", calibration)
    with pytest.raises(ValueError, match="kernel must be one of"):
        quantize_conv_outputs(path, calibration, kernel="u8u8")
    with pytest.raises(ValueError, match="no calibration inputs"):
        quantize_conv_outputs(path, [], tmp_path / "int8.onnx")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])
    plain = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])), str(plain))
    with pytest.raises(ValueError, match="no Conv or ConvTranspose"):
        quantize_conv_outputs(plain, calibration)


def test_per_tensor_shift_folds_into_bias(tmp_path):
    """``Add(c) -> Q -> DQ -> Add(-c) -> Conv`` (qcdq.add_zero_point_shifts's pattern):
    the unshift moves into the bias, so the convolution fuses; the result differs only at the border."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    c, scale = np.float32(0.03), np.float32(0.05)
    consts = {"c": np.full((1, 1, 1, 1), c, np.float32), "minus_c": np.full((1, 1, 1, 1), -c, np.float32),
              "s": np.array(scale, np.float32), "z": np.array(3, np.int8),
              "w": rng.integers(-127, 128, (8, 4, 3, 3)).astype(np.int8), "ws": np.full(8, 0.01, np.float32),
              "wz": np.zeros(8, np.int8), "b": rng.standard_normal(8).astype(np.float32)}
    nodes = [helper.make_node("Add", ["x", "c"], ["shifted"]),
             helper.make_node("QuantizeLinear", ["shifted", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"]),
             helper.make_node("Add", ["dq", "minus_c"], ["restored"]),
             helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wdq"], axis=0),
             helper.make_node("Conv", ["restored", "wdq", "b"], ["y"], pads=[1, 1, 1, 1], name="conv")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 16, 16])],
                              [numpy_helper.from_array(v, k) for k, v in consts.items()])
    path = tmp_path / "shifted.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    calibration = [rng.standard_normal((1, 4, 16, 16)).astype(np.float32) for _ in range(3)]
    report = quantize_conv_outputs(path, calibration, tmp_path / "int8.onnx")
    assert report.shifts_folded == 1 and list(report.quantized) == ["conv"]
    session, ops = int8_session(report.path)
    assert ops.get("QLinearConv") == 1 and "Add" in ops  # the shift before QuantizeLinear stays
    reference, _ = int8_session(path)
    x = calibration[0]
    got, expected = session.run(None, {"x": x})[0], reference.run(None, {"x": x})[0]
    lo, hi = report.quantized["conv"]
    step = (hi - lo) / 255
    assert np.abs(got - expected)[..., 1:-1, 1:-1].max() <= 1.01 * step  # inside: one output step
    assert np.abs(got - expected).max() <= step + abs(c) * 9 * 4 * 127 * 0.01  # border: padding stands for c
