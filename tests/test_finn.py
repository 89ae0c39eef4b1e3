"""FINN's front end on DynaQuant exports: every layer mapped, Python execution equal to PyTorch."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from compressai.models import FactorizedPrior, FactorizedPriorReLU
from onnx import TensorProto, helper

pytest.importorskip("finn", reason="finn-plus is installed by `make setup`")

from qonnx.core.datatype import DataType  # noqa: E402
from qonnx.core.modelwrapper import ModelWrapper  # noqa: E402
from qonnx.transformation.infer_shapes import InferShapes  # noqa: E402

from dynaquant_brevitas import calibrate  # noqa: E402
from dynaquant_brevitas.transform.config import DynaQuantConfig  # noqa: E402
from dynaquant_brevitas.export.deconv import LowerConvTransposeToPixelPadding  # noqa: E402
from dynaquant_brevitas.export.finn import export_finn, run_finn  # noqa: E402
from dynaquant_brevitas.export.precheck import FinnUnsupportedError  # noqa: E402
from dynaquant_brevitas.transform import dynaquantize, freeze  # noqa: E402

MIXED = {"g_a.2": 6, "g_a.4": 4, "g_a.6": 8, "g_s.2": 8, "g_s.4": 4, "g_s.6": 6}


@pytest.fixture(autouse=True)
def finn_build_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("FINN_BUILD_DIR", str(tmp_path / "finn_build"))


@pytest.fixture(scope="module")
def codec() -> torch.nn.Module:
    torch.manual_seed(0)
    model = dynaquantize(FactorizedPriorReLU(4, 6), DynaQuantConfig(candidate_bits=(4, 6, 8), learn_offset=True))
    calibrate(model, [torch.rand(2, 3, 64, 64) for _ in range(2)])
    calibrate(model.g_s, [torch.randn(2, 6, 4, 4) * 3 for _ in range(2)])
    return freeze(model, MIXED)


def _assert_verified(build) -> None:
    """FINN's graph equals the integer QONNX graph; that graph stays near PyTorch (see below)."""
    assert build.max_error_steps < 1e-2
    assert 0 < build.approximation_mean_steps < 0.5 and build.approximation_max_steps < 2


def _assert_all_hardware(partition) -> None:
    assert all(n.domain.startswith("finn.custom_op.fpgadataflow") for n in partition.graph.node)


def test_encoder_through_finn(codec, tmp_path):
    build = export_finn(codec.g_a, str(tmp_path / "g_a.onnx"), (1, 3, 32, 32), verify_shape=(1, 3, 16, 16))
    _assert_verified(build)
    _assert_all_hardware(build.partition)
    mvaus = [row for row in build.layers if row["op"].startswith("MVAU")]
    assert len(mvaus) == 4
    # inputs of the dynamic layers carry the profile's bit widths (unsigned after a ReLU)
    assert [row["inputDataType"] for row in mvaus] == ["UINT8", "UINT6", "UINT4", "UINT8"]
    assert build.estimate["max_cycles"] > 0 and build.estimate["fps"] > 0
    assert set(build.estimate["cycles_per_layer"]) == {n.name for n in build.partition.graph.node}


def test_decoder_through_finn(codec, tmp_path):
    build = export_finn(codec.g_s, str(tmp_path / "g_s.onnx"), (1, 6, 4, 4), verify_shape=(1, 6, 2, 3))
    _assert_verified(build)
    _assert_all_hardware(build.partition)
    ops = [n.op_type for n in build.partition.graph.node]
    assert sum(op.startswith("FMPadding_Pixel") for op in ops) == 4
    assert sum(op.startswith("MVAU") for op in ops) == 4
    hw = build.hw_model
    x = np.random.default_rng(3).normal(0, 3, (1, 6, 4, 4)).astype(np.float32)
    assert run_finn(hw, x).shape == (1, 3, 64, 64)


def test_export_finn_refuses_gdn_before_exporting(tmp_path):
    model = dynaquantize(FactorizedPrior(4, 6), DynaQuantConfig(candidate_bits=(8,)))
    calibrate(model, [torch.rand(1, 3, 32, 32)])
    with pytest.raises(FinnUnsupportedError, match=r"1 \(GDN\)"):
        export_finn(model.g_a, str(tmp_path / "gdn.onnx"), (1, 3, 32, 32))
    assert not (tmp_path / "gdn.onnx").exists()


@pytest.mark.parametrize("k, s, p, op", [(5, 2, 2, 1), (3, 2, 1, 1), (3, 1, 1, 0)])
def test_conv_transpose_lowering_is_exact_in_finn(k, s, p, op):
    """FMPadding_Pixel + Im2Col + MatMul computes what ONNX ConvTranspose computes, bit for bit."""
    rng = np.random.default_rng(k + op)
    x = rng.integers(0, 16, (1, 3, 4, 5)).astype(np.float32)
    w = rng.integers(-8, 8, (3, 2, k, k)).astype(np.float32)
    node = helper.make_node("ConvTranspose", ["x", "w"], ["y"], kernel_shape=[k, k], strides=[s, s],
                            pads=[p, p, p, p], output_padding=[op, op])
    out_hw = [(n - 1) * s - 2 * p + k + op for n in (4, 5)]
    graph = helper.make_graph(
        [node], "deconv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2] + out_hw)],
        [onnx.numpy_helper.from_array(w, "w")],
    )
    model = ModelWrapper(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    model.set_tensor_datatype("x", DataType["UINT4"])
    model.set_tensor_datatype("w", DataType["INT4"])
    model = model.transform(InferShapes())
    expected = run_finn(model, x)
    lowered = model.transform(LowerConvTransposeToPixelPadding())
    assert "ConvTranspose" not in [n.op_type for n in lowered.graph.node]
    assert np.array_equal(run_finn(lowered, x), expected)


@pytest.mark.parametrize("part, shape", [("g_a", (1, 3, 16, 16)), ("g_s", (1, 6, 2, 3))])
def test_integer_weights_approach_pytorch_with_more_bits(codec, tmp_path, part, shape):
    """The one approximation of the FINN path shrinks as the re-quantized weights get wider."""
    from dynaquant_brevitas.export import export_qonnx
    from dynaquant_brevitas.export.finn import prepare_qonnx
    from dynaquant_brevitas.export.qonnx import default_samples, run_qonnx

    module = getattr(codec, part)
    result = export_qonnx(module, str(tmp_path / "m.onnx"), shape, snap=1e-3)
    model = ModelWrapper(str(tmp_path / "m.onnx"))
    samples = default_samples(model, shape, count=2)

    def mean_error(extra_bits: int) -> float:
        integer = prepare_qonnx(model, extra_bits)
        with torch.no_grad():
            errors = [np.abs(run_qonnx(integer, x.numpy()) - module(x).numpy()).mean() for x in samples]
        return float(np.mean(errors)) / result.output_step

    coarse, fine = mean_error(2), mean_error(8)
    assert fine < coarse and fine < 1e-2


@pytest.mark.parametrize("part, shape, verify", [("g_a", (1, 3, 32, 32), (1, 3, 16, 16)), ("g_s", (1, 6, 4, 4), (1, 6, 2, 3))])
def test_per_tensor_activations_make_finn_equal_pytorch(tmp_path, part, shape, verify):
    """With one activation step per tensor nothing is re-quantized: FINN computes what PyTorch does."""
    torch.manual_seed(1)
    config = DynaQuantConfig(candidate_bits=(4, 6, 8), activation_per_channel=False)
    model = dynaquantize(FactorizedPriorReLU(4, 6), config)
    calibrate(model, [torch.rand(2, 3, 64, 64) for _ in range(2)])
    calibrate(model.g_s, [torch.randn(2, 6, 4, 4) * 3 for _ in range(2)])
    module = getattr(freeze(model, MIXED), part)
    build = export_finn(module, str(tmp_path / f"{part}.onnx"), shape, verify_shape=verify,
                        approximation_tolerance_steps=1e-2)
    assert build.max_error_steps < 1e-2 and build.approximation_max_steps < 1e-2
    _assert_all_hardware(build.partition)
