"""Container files: round trip, refusal of damaged files and of the wrong model, CLI encode/decode."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from workflow_helpers import run_eval, eval_images, float_run, quant_run, tiny_config  # noqa: F401  (fixtures)

from dynaquant_brevitas.cli import main
from dynaquant_brevitas.io.container import ContainerError, pack, unpack
from dynaquant_brevitas.io.images import read_image
from dynaquant_brevitas.evaluation.metrics import psnr

MODEL_ID = bytes(range(16))
STRINGS = [[b"\x00\x01\x02hello"], [b"z" * 300]]


def test_round_trip() -> None:
    box = unpack(pack(MODEL_ID, (512, 768), [8, 12], STRINGS), expected_model_id=MODEL_ID)
    assert (
        box.strings == STRINGS
        and box.size == (512, 768)
        and box.shape == [8, 12]
        and box.model_id == MODEL_ID
    )


@pytest.mark.parametrize("position", [5, 9, 25, 30, 40, 60, -5])
def test_any_flipped_byte_is_refused(position: int) -> None:
    blob = bytearray(pack(MODEL_ID, (512, 768), [8, 12], STRINGS))
    blob[position] ^= 0x10
    with pytest.raises(ContainerError, match="damaged|version"):
        unpack(bytes(blob))


def test_truncated_foreign_and_future_files_are_refused() -> None:
    blob = pack(MODEL_ID, (5, 7), [1, 1], STRINGS)
    with pytest.raises(ContainerError, match="CRC32|truncated"):
        unpack(blob[:-10])
    with pytest.raises(ContainerError, match="magic"):
        unpack(b"\x89PNG\r\n\x1a\n" + blob)
    future = bytearray(blob)
    future[4] = 99
    with pytest.raises(ContainerError, match="version 99"):
        unpack(bytes(future))


def _with_shape_text(text: bytes) -> bytes:
    """A version-2 container whose latent shape is ``text`` (with a valid CRC32)."""
    import struct
    import zlib

    blob = pack(MODEL_ID, (64, 64), {"y": [4, 4]}, STRINGS)
    start = 4 + 1 + 16 + 8 + 1
    length = struct.unpack(">H", blob[start:start + 2])[0]
    body = blob[:start] + struct.pack(">H", len(text)) + text + blob[start + 2 + length:-4]
    return body + struct.pack(">I", zlib.crc32(body))


def test_structured_latent_shapes_round_trip_and_bad_ones_are_refused() -> None:
    shape = {"y": [[4, 4, 4], [8, 4, 4]], "hyper": [1, 1]}
    box = unpack(pack(MODEL_ID, (64, 64), shape, STRINGS))
    assert box.shape == shape and box.version == 2
    assert unpack(pack(MODEL_ID, (64, 64), [4, 4], STRINGS)).version == 1  # plain shapes stay version 1
    assert unpack(_with_shape_text(b'{"y":[4,4]}')).shape == {"y": [4, 4]}
    for text, reason in [(b'{"y":[4,', "not readable"), (b"\xff", "not readable"), (b"[" * 5000, "not readable"),
                         (b'{"y":[0,4]}', "invalid latent shape"), (b'{"y":[4,true]}', "invalid latent shape"),
                         (b"{}", "invalid latent shape"), (b'{"y":' * 6 + b"[1]" + b"}" * 6, "deeper"),
                         (json.dumps({"y": [[1, 1]] * 65}).encode(), "more than 64")]:
        with pytest.raises(ContainerError, match=reason):
            unpack(_with_shape_text(text))
    with pytest.raises(ValueError, match="invalid latent shape"):
        pack(MODEL_ID, (64, 64), {"y": [4, -1]}, STRINGS)


def test_wrong_model_is_refused() -> None:
    with pytest.raises(ContainerError, match="wrong model"):
        unpack(pack(MODEL_ID, (5, 7), [1, 1], STRINGS), expected_model_id=bytes(16))


def test_encode_decode_reproduces_eval(float_run: Path, eval_images: Path, tmp_path: Path) -> None:
    ev = tmp_path / "ev.json"
    assert (
        run_eval(str(float_run / "final.pt"), str(eval_images), str(ev), "--per-image")
        == 0
    )
    records = json.loads(ev.read_text())["models"][0]["per_image"]
    for record in records:
        coded, decoded = tmp_path / f"{record['image']}.dqic", tmp_path / f"dec-{record['image']}"
        assert (
            main(
                [
                    "encode",
                    "--checkpoint",
                    str(float_run / "final.pt"),
                    str(eval_images / record["image"]),
                    "-o",
                    str(coded),
                ]
            )
            == 0
        )
        assert (
            main(["decode", "--checkpoint", str(float_run / "final.pt"), str(coded), "-o", str(decoded)]) == 0
        )
        original, rec = read_image(eval_images / record["image"]), read_image(decoded)
        assert rec.shape == original.shape
        assert psnr(original, rec) == pytest.approx(record["psnr-rgb"], abs=1e-9)
        assert len(unpack(coded.read_bytes()).strings[0][0]) > 0
        assert sum(len(s) for g in unpack(coded.read_bytes()).strings for s in g) == record["bytes"]


def test_decode_with_another_model_or_damaged_file_fails_cleanly(
    float_run: Path, quant_run: Path, eval_images: Path, tmp_path: Path, capsys
) -> None:
    coded = tmp_path / "img0.dqic"
    assert (
        main(
            [
                "encode",
                "--checkpoint",
                str(float_run / "final.pt"),
                str(eval_images / "img0.png"),
                "-o",
                str(coded),
            ]
        )
        == 0
    )
    capsys.readouterr()
    status = main(
        ["decode", "--checkpoint", str(quant_run / "final.pt"), str(coded), "-o", str(tmp_path / "x.png")]
    )
    err = capsys.readouterr().err
    assert status == 2 and "wrong model" in err and "Traceback" not in err
    damaged = bytearray(coded.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    coded.write_bytes(bytes(damaged))
    status = main(
        ["decode", "--checkpoint", str(float_run / "final.pt"), str(coded), "-o", str(tmp_path / "x.png")]
    )
    err = capsys.readouterr().err
    assert status == 2 and "damaged" in err and not (tmp_path / "x.png").exists()


def test_dynaquant_model_round_trip(quant_run: Path, eval_images: Path, tmp_path: Path) -> None:
    coded, decoded = tmp_path / "q.dqic", tmp_path / "q.png"
    assert (
        main(
            [
                "encode",
                "--checkpoint",
                str(quant_run / "final.pt"),
                str(eval_images / "img1.png"),
                "-o",
                str(coded),
            ]
        )
        == 0
    )
    assert main(["decode", "--checkpoint", str(quant_run / "final.pt"), str(coded), "-o", str(decoded)]) == 0
    assert read_image(decoded).shape == read_image(eval_images / "img1.png").shape
    assert torch.isfinite(read_image(decoded)).all()
