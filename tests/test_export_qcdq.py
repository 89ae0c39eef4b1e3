"""``dynaquant export --format qcdq``: QCDQ graphs run by real onnxruntime, checked against PyTorch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from compressai.models import FactorizedPrior

pytest.importorskip("onnxruntime")

from dynaquant_brevitas import calibrate  # noqa: E402
from dynaquant_brevitas.io.checkpoint import make_checkpoint, save_atomic  # noqa: E402
from dynaquant_brevitas.cli import main  # noqa: E402
from dynaquant_brevitas.transform.config import DynaQuantConfig  # noqa: E402
from dynaquant_brevitas.export.ort import ort_session  # noqa: E402
from dynaquant_brevitas.transform import dynaquantize, freeze  # noqa: E402
from workflow_helpers import write_images  # noqa: E402

PROFILE = "g_a.2=6,g_a.4=10,g_a.6=8,g_s.2=10,g_s.4=6,g_s.6=8"
SIZE = (48, 32)  # WIDTHxHEIGHT


def _checkpoint(folder: Path, per_channel: bool) -> Path:
    """A tiny FactorizedPrior (GDN), dynaquantized with candidates 6/8/10 and calibrated."""
    torch.manual_seed(0)
    config = DynaQuantConfig(candidate_bits=(6, 8, 10), activation_per_channel=per_channel)
    model = dynaquantize(FactorizedPrior(4, 6), config)
    calibrate(model, [torch.rand(2, 3, 32, 32)])
    calibrate(model.g_s, [torch.randn(2, 6, 2, 2) * 3])  # untrained latents are all near zero
    path = folder / "model.pt"
    save_atomic(make_checkpoint(model, "bmshj2018-factorized", {"N": 4, "M": 6}, dynaquant=config.to_dict()), path)
    return path


@pytest.fixture(scope="module")
def per_channel(tmp_path_factory) -> Path:
    return _checkpoint(tmp_path_factory.mktemp("per_channel"), per_channel=True)


@pytest.fixture(scope="module")
def per_tensor(tmp_path_factory) -> Path:
    return _checkpoint(tmp_path_factory.mktemp("per_tensor"), per_channel=False)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return write_images(tmp_path_factory.mktemp("calibration"), sizes=((40, 56), (72, 64)))


def _export(checkpoint: Path, out: Path, *extra: str) -> int:
    return main(["export", "--checkpoint", str(checkpoint), "--profile", PROFILE, "--format", "qcdq",
                 "--size", "x".join(map(str, SIZE)), "-o", str(out), *extra])


def test_qcdq_graphs_match_pytorch_in_onnxruntime(per_channel, tmp_path, capsys):
    out = tmp_path / "export"
    assert _export(per_channel, out) == 0
    report = json.loads((out / "export.json").read_text())
    assert report["format"] == "qcdq" and report["profile"]["g_a.4"] == 10
    assert sorted(Path(f).name for f in report["files"]) == ["g_a.qcdq.onnx", "g_s.qcdq.onnx"]
    assert report["export_notes"]["bits_capped_to_8"] == {"g_a.4": 10, "g_s.2": 10}
    assert any("cannot be exported in 8-bit" in note for note in report["notes"])
    # the graph computes the model with the capped layers at 8 bits: check that independently
    model = freeze(_load(per_channel), dict(_pairs(PROFILE), **{"g_a.4": 8, "g_s.2": 8}))
    x = torch.rand(1, 3, SIZE[1], SIZE[0], generator=torch.Generator().manual_seed(0))
    inputs = {"g_a": x, "g_s": torch.round(model.g_a(x)).detach()}
    for part, inp in inputs.items():
        facts = report[part]["qcdq"]
        path = out / f"{part}.qcdq.onnx"
        assert facts["file"] == str(path) and path.is_file()
        assert facts["int_kernels"] == 0 and facts["ops"]["QuantizeLinear"] > 0
        assert facts["ops"]["Conv"] == (7 if part == "g_a" else 3)  # with GDN's 1x1 convolutions
        session, _ = ort_session(path)
        got = session.run(None, {session.get_inputs()[0].name: inp.numpy()})[0]
        with torch.no_grad():
            expected = getattr(model, part)(inp).numpy()
        peak = np.abs(expected).max()
        assert peak > 0 and np.abs(got - expected).max() <= 0.01 * peak
        assert facts["max_abs_error"] <= 0.01 * facts["output_max_abs"]
    assert "g_a qcdq" in capsys.readouterr().out


def test_per_tensor_activations_run_integer_kernels(per_tensor, tmp_path, images):
    out = tmp_path / "export"
    assert _export(per_tensor, out, "--int8-kernels", "s8s8", "--calibration", str(images)) == 0
    report = json.loads((out / "export.json").read_text())
    assert report["calibration_images"] == 2
    for part in ("g_a", "g_s"):
        facts = report[part]["int8_s8s8"]
        assert Path(facts["file"]).name == f"{part}.int8_s8s8.onnx" and Path(facts["file"]).is_file()
        assert facts["ops"].get("QLinearConv", 0) == facts["int_kernels"] == facts["prepared"] == 4
        assert facts["relative_error"] <= report["tolerance"]
    assert any("s8s8 keeps the exported integers" in note for note in report["notes"])
    assert not any("per-channel" in note for note in report["notes"])


def test_per_channel_activations_are_reported_as_not_fusing(per_channel, tmp_path, images):
    out = tmp_path / "export"
    assert _export(per_channel, out, "--part", "g_a", "--int8-kernels", "u8s8", "--calibration", str(images)) == 0
    report = json.loads((out / "export.json").read_text())
    assert "g_s" not in report and report["g_a"]["int8_u8s8"]["int_kernels"] == 0
    assert any("train with activation_per_channel=False" in note for note in report["notes"])


def test_bad_options_are_clear_errors(per_channel, tmp_path, capsys):
    out = tmp_path / "export"
    assert _export(per_channel, out, "--int8-kernels", "s8s8") == 2
    assert "--int8-kernels s8s8 needs --calibration DIR" in capsys.readouterr().err
    assert main(["export", "--checkpoint", str(per_channel), "--int8-kernels", "u8s8", "-o", str(out)]) == 2
    assert "apply to --format qcdq" in capsys.readouterr().err
    assert _export(per_channel, out, "--int8-kernels", "s8s8", "--calibration", str(tmp_path / "missing")) == 2
    assert "missing" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        _export(per_channel, out, "--int8-kernels", "s4s4")
    assert exit_info.value.code == 2 and "invalid choice: 's4s4'" in capsys.readouterr().err
    assert not out.exists()


def test_errors_beyond_the_tolerance_are_refused(per_tensor, tmp_path, images, capsys):
    # 8-bit convolution outputs and 7-bit weights cannot stay within 0.1 % of the output
    assert _export(per_tensor, tmp_path / "export", "--part", "g_s", "--int8-kernels", "u8s8",
                   "--calibration", str(images), "--ort-tolerance", "0.001") == 2
    err = capsys.readouterr().err
    assert "onnxruntime differs from PyTorch beyond the tolerance 0.001" in err and "g_s/int8_u8s8" in err
    assert "g_s/qcdq" not in err  # the QCDQ graph itself is within it
    assert not (tmp_path / "export" / "export.json").exists()


def _load(checkpoint: Path) -> torch.nn.Module:
    from dynaquant_brevitas.io.checkpoint import load_model

    return load_model(checkpoint)


def _pairs(text: str) -> dict:
    return {name: int(bits) for name, bits in (item.split("=") for item in text.split(","))}
