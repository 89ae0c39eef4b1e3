"""Post-training quantization: ``ptq`` beats percentile calibration, the ``dynaquant quantize`` round
trip (eval, encode, decode, export), and its refusals."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from compressai.models import Cheng2020AnchorCheckerboard, MeanScaleHyperprior, ScaleHyperprior
from torch import nn
from workflow_helpers import float_run, write_images  # noqa: F401  (float_run is a fixture)

from dynaquant_brevitas import DynaQuantConfig, calibrate, dynaquantize
from dynaquant_brevitas.cli import main
from dynaquant_brevitas.io.checkpoint import load_model, save_model
from dynaquant_brevitas.io.images import list_images, read_image
from dynaquant_brevitas.transform import ptq
from dynaquant_brevitas.transform.ptq import PTQ_CONFIG, calibration_crops

TRAIN_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "train"
SMALL = dict(crops=8, crop_size=64, progress=False)


@pytest.fixture(scope="module")
def photos() -> list:
    """A few training photos as uint8 tensors (calibration), and held-out crops of others."""
    from dynaquant_brevitas.io.images import read_image_uint8

    files = list_images(TRAIN_DIR)
    return [read_image_uint8(p) for p in files[:6]], [read_image(p) for p in files[6:10]]


@torch.no_grad()
def _output_error(model: nn.Module, reference: nn.Module, crops: torch.Tensor) -> float:
    """Mean squared difference of the reconstructions plus that of the latents (scaled to pixels)."""
    model.eval()
    x_hat = model(crops)["x_hat"]
    y, y_ref = model.g_a(crops), reference.g_a(crops)
    return float(((x_hat - reference(crops)["x_hat"]) ** 2).mean() + ((y - y_ref) ** 2).mean() / 255**2)


def test_ptq_beats_percentile_calibration(float_run: Path, photos) -> None:  # noqa: F811
    torch.manual_seed(0)
    calibration, held_out = photos
    float_model = load_model(float_run / "final.pt").eval()
    test = torch.cat(calibration_crops(held_out, 8, 64, torch.Generator().manual_seed(1)))
    percentile = dynaquantize(load_model(float_run / "final.pt"), DynaQuantConfig(candidate_bits=(6,)))
    calibrate(percentile, [torch.cat(calibration_crops(calibration, 8, 64, torch.Generator().manual_seed(0)))])
    searched = ptq(load_model(float_run / "final.pt"), calibration, PTQ_CONFIG.replace(candidate_bits=(6,)), seed=0, **SMALL)
    baseline, ours = _output_error(percentile, float_model, test), _output_error(searched, float_model, test)
    assert ours < 0.85 * baseline, (ours, baseline)


def test_ptq_is_deterministic_and_leaves_an_ordinary_model(float_run: Path, photos, tmp_path: Path) -> None:  # noqa: F811
    calibration, _ = photos
    first = ptq(load_model(float_run / "final.pt"), calibration, seed=3, **SMALL)
    second = ptq(load_model(float_run / "final.pt"), calibration, seed=3, **SMALL)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
    reloaded = load_model(save_model(first, tmp_path / "q.pt"))
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(reloaded(x)["x_hat"], first.eval()(x)["x_hat"])
    assert first.dynaquant.config.candidate_bits == (8,) and not first.dynaquant.config.dynamic


@pytest.mark.parametrize("rounding", ["nearest", "adaround"])
def test_other_roundings_and_ablations_run(rounding: str) -> None:
    images = [torch.rand(3, 80, 80) for _ in range(2)]
    model = ptq(ScaleHyperprior(8, 12), images, rounding=rounding, rounding_iters=5, **SMALL)
    assert model(torch.rand(1, 3, 64, 64))["x_hat"].shape == (1, 3, 64, 64)
    plain = ptq(ScaleHyperprior(8, 12), images, search=False, bias_correction=False, rounding="nearest", **SMALL)
    assert all(report == {} for report in plain.dynaquant.ptq_report)


@pytest.mark.parametrize("build", [lambda: MeanScaleHyperprior(8, 12), lambda: Cheng2020AnchorCheckerboard(8)])
def test_other_registry_models(build) -> None:
    images = [torch.rand(3, 64, 64)]
    model = ptq(build(), images, crops=2, crop_size=64, progress=False)
    model.update(force=True)
    coded = model.compress(torch.rand(1, 3, 64, 64))
    assert model.decompress(coded["strings"], coded["shape"])["x_hat"].shape == (1, 3, 64, 64)


def test_a_skipped_unsupported_module_stays_float() -> None:
    class Gain(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gain = nn.Parameter(torch.ones(1, 12, 1, 1))

        def forward(self, x):
            return x * self.gain

    model = ScaleHyperprior(8, 12)
    model.g_a = nn.Sequential(*model.g_a, Gain())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = ptq(model, [torch.rand(3, 64, 64)], PTQ_CONFIG.replace(unsupported="skip"), crops=2, crop_size=64, progress=False)
    assert isinstance(model.g_a[7], Gain) and model(torch.rand(1, 3, 64, 64))["x_hat"].shape == (1, 3, 64, 64)


def test_refusals() -> None:
    images = [torch.rand(3, 64, 64)]
    with pytest.raises(ValueError, match="static configuration"):
        ptq(ScaleHyperprior(8, 12), images, DynaQuantConfig(candidate_bits=(4, 8)), **SMALL)
    quantized = dynaquantize(ScaleHyperprior(8, 12), DynaQuantConfig(candidate_bits=(8,)))
    with pytest.raises(ValueError, match="already quantized"):
        ptq(quantized, images, **SMALL)
    with pytest.raises(ValueError, match="no images"):
        ptq(ScaleHyperprior(8, 12), [], **SMALL)
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        ptq(ScaleHyperprior(8, 12), [torch.rand(64, 64)], **SMALL)
    with pytest.raises(ValueError, match="multiple of 64"):
        ptq(ScaleHyperprior(8, 12), images, crops=2, crop_size=48, progress=False)
    with pytest.raises(ValueError, match=r"needs about .* GiB, .* GiB are available"):  # before allocating
        ptq(ScaleHyperprior(8, 12), images, crops=10**8, crop_size=256, progress=False)


# -- the command ----------------------------------------------------------------------------------------


def _quantize(*args: str) -> int:
    return main(["quantize", "--crops", "4", "--crop-size", "64", "--no-progress", *map(str, args)])


def test_cli_round_trip(float_run: Path, tmp_path: Path, capsys) -> None:  # noqa: F811
    images = write_images(tmp_path / "images")
    out = tmp_path / "q.pt"
    assert _quantize("--checkpoint", float_run / "final.pt", "--images", TRAIN_DIR, "-o", out) == 0
    assert "W8A8" in capsys.readouterr().out
    assert main(["eval", "--checkpoint", str(out), "--images", str(images), "-o", str(tmp_path / "r.json")]) == 0
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["results"]["bpp"][0] > 0 and result["models"][0]["dynaquant"]["candidate_bits"] == [8]
    image = next(images.iterdir())
    assert main(["encode", "--checkpoint", str(out), str(image), "-o", str(tmp_path / "a.dqic")]) == 0
    assert main(["decode", "--checkpoint", str(out), str(tmp_path / "a.dqic"), "-o", str(tmp_path / "a.png")]) == 0
    assert read_image(tmp_path / "a.png").shape == read_image(image).shape
    export = tmp_path / "export"
    assert main(["export", "--checkpoint", str(out), "--format", "qonnx", "--size", "64x64", "-o", str(export)]) == 0
    assert (export / "g_a.onnx").exists() and (export / "g_s.onnx").exists()


def test_cli_integer_entropy_path(float_run: Path, tmp_path: Path) -> None:  # noqa: F811
    """`--integer-entropy-path` is stored in the checkpoint: loading it installs the integer path."""
    from dynaquant_brevitas import load_model
    from dynaquant_brevitas.nn import integer_path

    out = tmp_path / "q.pt"
    assert _quantize("--checkpoint", float_run / "final.pt", "--images", TRAIN_DIR, "-o", out, "--crops", "4",
                     "--crop-size", "64", "--integer-entropy-path") == 0
    model = load_model(out)
    assert integer_path.installed(model) and model.dynaquant.config.integer_entropy_path
    image = next(write_images(tmp_path / "images").iterdir())
    assert main(["encode", "--checkpoint", str(out), str(image), "-o", str(tmp_path / "a.dqic")]) == 0
    assert main(["decode", "--checkpoint", str(out), str(tmp_path / "a.dqic"), "-o", str(tmp_path / "a.png")]) == 0


def test_cli_refusals(float_run: Path, tmp_path: Path, capsys) -> None:  # noqa: F811
    empty = tmp_path / "empty"
    empty.mkdir()
    texts = tmp_path / "texts"
    texts.mkdir()
    (texts / "notes.txt").write_text("not an image")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "photo.png").write_text("not a png")
    source = float_run / "final.pt"
    for folder, message in ((empty, "no images"), (texts, "no images"), (broken, "cannot read image")):
        assert _quantize("--checkpoint", source, "--images", folder, "-o", tmp_path / "q.pt") == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1
    quantized = dynaquantize(load_model(source), DynaQuantConfig(candidate_bits=(8,)))
    calibrate(quantized, [torch.rand(1, 3, 64, 64)])
    save_model(quantized, tmp_path / "already.pt")
    assert _quantize("--checkpoint", tmp_path / "already.pt", "--images", TRAIN_DIR, "-o", tmp_path / "q.pt") == 2
    err = capsys.readouterr().err.strip()
    assert "holds a quantized model" in err and len(err.splitlines()) == 1
    assert _quantize("--checkpoint", source, "--images", TRAIN_DIR, "--crop-size", "100", "-o", tmp_path / "q.pt") == 2
    assert "multiple of 64" in capsys.readouterr().err
    assert not (tmp_path / "q.pt").exists()


def test_cli_per_image_capped_ranges(float_run: Path, tmp_path: Path, capsys) -> None:  # noqa: F811
    """`--activation-range per-image-capped` is stored, codes real bitstreams, and export refuses it
    with one clear line; an unknown mode and the integer path are refused before any work."""
    out = tmp_path / "q.pt"
    assert _quantize("--checkpoint", float_run / "final.pt", "--images", TRAIN_DIR, "-o", out,
                     "--activation-range", "per-image-capped") == 0
    assert load_model(out).dynaquant.config.activation_range == "per-image-capped"
    image = next(write_images(tmp_path / "images").iterdir())
    assert main(["encode", "--checkpoint", str(out), str(image), "-o", str(tmp_path / "a.dqic")]) == 0
    assert main(["decode", "--checkpoint", str(out), str(tmp_path / "a.dqic"), "-o", str(tmp_path / "a.png")]) == 0
    assert read_image(tmp_path / "a.png").shape == read_image(image).shape
    capsys.readouterr()
    assert main(["export", "--checkpoint", str(out), "--format", "qonnx", "--size", "64x64",
                 "-o", str(tmp_path / "export")]) == 2
    err = capsys.readouterr().err.strip()
    assert "activation_range" in err and len(err.splitlines()) == 1
    for extra, message in ((("--activation-range", "per-pixel"), "activation_range"),
                           (("--activation-range", "per-image", "--integer-entropy-path"), "static activation ranges")):
        assert _quantize("--checkpoint", float_run / "final.pt", "--images", TRAIN_DIR, "-o", tmp_path / "b.pt",
                         *extra) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "b.pt").exists()
