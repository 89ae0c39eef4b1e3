"""Evaluation: CompressAI's JSON schema, bpp from real bytes, DynaQuant bits, zoo errors offline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from workflow_helpers import run_eval, EVAL_SIZES, eval_images, float_run, quant_run  # noqa: F401  (fixtures)

from dynaquant_brevitas.cli import main
from dynaquant_brevitas.io.images import list_images, read_image
from dynaquant_brevitas.evaluation import EvalError, encode_image, evaluate, load_for_eval
from dynaquant_brevitas.evaluation.evaluate import parse_zoo_spec

REFERENCE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "reference" / "compressai_kodak"
COMPRESSAI_KEYS = {"psnr-rgb", "ms-ssim-rgb", "bpp", "encoding_time", "decoding_time"}


@pytest.fixture(scope="module")
def float_eval(float_run: Path, eval_images: Path, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("eval") / "float.json"
    assert (
        run_eval(str(float_run / "final.pt"), str(eval_images), str(out), "--per-image")
        == 0
    )
    return json.loads(out.read_text())


def test_json_follows_compressai_schema(float_eval: dict) -> None:
    reference = json.loads((REFERENCE / "compressai-bmshj2018-hyperprior_mse_cpu.json").read_text())
    assert set(reference) <= set(float_eval)
    assert set(reference["results"]) == COMPRESSAI_KEYS <= set(float_eval["results"])
    for key in COMPRESSAI_KEYS - {"ms-ssim-rgb"}:
        assert isinstance(float_eval["results"][key], list) and len(float_eval["results"][key]) == 1
        assert isinstance(float_eval["results"][key][0], float)
    assert isinstance(float_eval["name"], str) and isinstance(float_eval["description"], str)


def test_bpp_is_eight_times_bytes_over_pixels(float_eval: dict, float_run: Path, eval_images: Path) -> None:
    per_image = float_eval["models"][0]["per_image"]
    assert [r["image"] for r in per_image] == [p.name for p in list_images(eval_images)]
    model = load_for_eval(str(float_run / "final.pt")).model
    for record, (h, w) in zip(per_image, EVAL_SIZES, strict=True):
        coded = encode_image(model, read_image(eval_images / record["image"]))
        assert record["bytes"] == coded.num_bytes > 0
        assert record["bpp"] == pytest.approx(8 * coded.num_bytes / (h * w), rel=1e-12)
    mean_bpp = sum(r["bpp"] for r in per_image) / len(per_image)
    assert float_eval["results"]["bpp"][0] == pytest.approx(mean_bpp)


def test_ms_ssim_only_where_defined(float_eval: dict) -> None:
    large, small = float_eval["models"][0]["per_image"]
    assert 0 < large["ms-ssim-rgb"] <= 1 and small["ms-ssim-rgb"] is None
    assert float_eval["results"]["ms-ssim-rgb"][0] == large["ms-ssim-rgb"]


def test_several_checkpoints_give_several_points(float_run: Path, eval_images: Path) -> None:
    result = evaluate([str(float_run / "final.pt"), str(float_run / "last.pt")], eval_images)
    assert len(result["results"]["bpp"]) == 2
    assert result["results"]["bpp"][0] == result["results"]["bpp"][1]  # same weights, same bytes


def test_dynaquant_model_reports_chosen_bits(quant_run: Path, eval_images: Path) -> None:
    result = evaluate([str(quant_run / "final.pt")], eval_images, per_image=True)
    entry = result["models"][0]
    assert len(entry["layers"]) == 6  # 3 encoder + 3 decoder dynamic layers of ScaleHyperprior
    for record in entry["per_image"]:
        assert len(record["layer_bits"]) == 6 and set(record["layer_bits"]) <= {4, 6, 8}
        assert record["avg_bits"] == pytest.approx(sum(record["layer_bits"]) / 6)
    assert 4 <= result["results"]["avg_bits"][0] <= 8


def test_decoding_keeps_the_encoders_choice_for_the_report(quant_run: Path, eval_images: Path) -> None:
    """The plausibility probe before decoding runs a forward of its own; the encoder's choice for
    the image just coded (what the report shows) must survive it."""
    from dynaquant_brevitas.evaluation import prepare_for_coding
    from dynaquant_brevitas.evaluation.coding import decode_image, last_choice
    from dynaquant_brevitas.io.checkpoint import load_model

    model = prepare_for_coding(load_model(quant_run / "final.pt"))
    x = read_image(list_images(eval_images)[0])
    x = x if x.dim() == 4 else x.unsqueeze(0)
    coded = encode_image(model, x)
    encoder, chosen = model.dynaquant.last["encoder"], last_choice(model)
    decode_image(model, coded.strings, coded.shape, coded.size)
    assert model.dynaquant.last["encoder"] is encoder
    reported = last_choice(model)
    assert reported["weight_bits"][:3] == chosen["weight_bits"] and reported["layers"][:3] == chosen["layers"]


def test_float_and_dynaquant_checkpoints_keep_avg_bits_aligned(
    float_run: Path, quant_run: Path, eval_images: Path
) -> None:
    result = evaluate([str(float_run / "final.pt"), str(quant_run / "final.pt")], eval_images)
    float_bits, quant_bits = result["results"]["avg_bits"]
    assert float_bits is None and 4 <= quant_bits <= 8
    assert "avg_bits" not in evaluate([str(float_run / "final.pt")], eval_images)["results"]


def test_zoo_spec_parsing_and_offline_error(eval_images: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    assert parse_zoo_spec("zoo:mbt2018:5:ms-ssim") == ("mbt2018", 5, "ms-ssim")
    with pytest.raises(EvalError, match="zoo:NAME:QUALITY"):
        parse_zoo_spec("zoo:mbt2018")
    # A proxy that refuses connections makes the real download fail as it does offline.
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    status = main(
        [
            "eval",
            "--checkpoint",
            "zoo:bmshj2018-hyperprior:3",
            "--images",
            str(eval_images),
            "-o",
            str(tmp_path / "zoo.json"),
        ]
    )
    err = capsys.readouterr().err
    assert status == 2 and "could not download" in err and "Traceback" not in err


def test_missing_inputs_are_clear_errors(float_run: Path, eval_images: Path, tmp_path: Path, capsys) -> None:
    assert (
        run_eval(str(tmp_path / "none.pt"), str(eval_images), str(tmp_path / "x.json"))
        == 2
    )
    assert "checkpoint not found" in capsys.readouterr().err
    assert (
        run_eval(str(float_run / "final.pt"), str(tmp_path), str(tmp_path / "x.json"))
        == 2
    )
    assert "no images" in capsys.readouterr().err


def test_bit_heat_map_from_per_image_eval(quant_run: Path, eval_images: Path, tmp_path: Path) -> None:
    from dynaquant_brevitas.evaluation.plot import bit_matrix

    ev = tmp_path / "q.json"
    assert (
        run_eval(str(quant_run / "final.pt"), str(eval_images), str(ev), "--per-image")
        == 0
    )
    bits, images, layers = bit_matrix(json.loads(ev.read_text()))
    assert bits.shape == (len(EVAL_SIZES), 6) and images == ["img0.png", "img1.png"] and len(layers) == 6
    assert main(["plot", str(ev), "--bits", "-o", str(tmp_path / "fig")]) == 0
    for name in ("fig-rd.png", "fig-rd.pdf", "fig-bits.png", "fig-bits.pdf"):
        assert (tmp_path / name).stat().st_size > 1000


def test_agrees_with_compressai_eval_model(
    float_run: Path, eval_images: Path, tmp_path: Path, capsys
) -> None:
    """CompressAI's own eval script on our checkpoint gives the same bytes and the same PSNR."""
    import shutil

    from compressai.utils.eval_model.__main__ import main as compressai_eval

    folder = tmp_path / "large"
    folder.mkdir()
    shutil.copy(eval_images / "img0.png", folder)  # MS-SSIM in CompressAI's script needs > 160 px
    ours = evaluate([str(float_run / "final.pt")], folder)["results"]
    capsys.readouterr()
    compressai_eval(
        ["checkpoint", str(folder), "-a", "bmshj2018-hyperprior", "-p", str(float_run / "final.pt")]
    )
    theirs = json.loads(capsys.readouterr().out)["results"]
    assert ours["bpp"][0] == pytest.approx(theirs["bpp"][0], rel=1e-12)
    assert ours["psnr-rgb"][0] == pytest.approx(theirs["psnr-rgb"][0], abs=1e-3)
    assert ours["ms-ssim-rgb"][0] == pytest.approx(theirs["ms-ssim-rgb"][0], abs=1e-4)


@pytest.mark.parametrize("arch", ["cheng2020-anchor-checkerboard", "elic2022-official"])
def test_structured_latent_shapes_code_for_real_through_the_container(arch: str, tmp_path: Path) -> None:
    """Models on a CompressAI latent codec report one shape per named latent (Cheng2020's checkerboard)
    or per channel group (ELIC); the container stores them (format version 2) and decodes the same.
    save_model keeps the constructor arguments the weights alone do not tell (ELIC's M and groups)."""
    import torch
    from compressai.registry import MODELS

    from dynaquant_brevitas.evaluation.coding import decode_image, prepare_for_coding
    from dynaquant_brevitas.io.checkpoint import CheckpointError, load_model, save_model, state_dict_fingerprint
    from dynaquant_brevitas.io.container import pack, unpack

    torch.manual_seed(0)
    kwargs = {"N": 16} if arch.startswith("cheng") else {"N": 8, "M": 40, "groups": [4, 4, 8, 8, 16]}
    model = prepare_for_coding(MODELS[arch](**kwargs))
    x = torch.rand(1, 3, 70, 90)
    coded = encode_image(model, x)
    assert set(coded.shape) == {"y", "hyper"} and coded.shape["hyper"] == [2, 2]
    direct = decode_image(model, coded.strings, coded.shape, coded.size)
    blob = pack(b"0" * 16, coded.size, coded.shape, coded.strings)
    box = unpack(blob, expected_model_id=b"0" * 16)
    assert blob[4] == 2 and box.shape == coded.shape and box.version == 2
    assert torch.equal(decode_image(model, box.strings, box.shape, box.size), direct)
    assert direct.shape == x.shape
    reloaded = load_model(save_model(model, tmp_path / "model.pt"))
    assert state_dict_fingerprint(reloaded) == state_dict_fingerprint(model)
    with pytest.raises(CheckpointError, match="would not rebuild"):  # refused before anything is written
        save_model(model, tmp_path / "wrong.pt", model_kwargs={"N": 4})
    assert not (tmp_path / "wrong.pt").exists()
