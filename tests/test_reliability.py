"""Reliability (issue #8): odd images, damaged bitstreams, foreign checkpoints, bad configs,
non-finite values, determinism across processes and thread counts, killed training runs.

Models are tiny (ScaleHyperprior N=8, M=12, untrained or a few steps) so that every test takes
seconds; subprocesses run concurrently where they can.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from workflow_helpers import TRAIN_DIR, tiny_config

from dynaquant_brevitas import DynaQuantConfig, calibrate, dynaquantize
from dynaquant_brevitas.io.checkpoint import (
    CheckpointError,
    build_model,
    load_checkpoint,
    load_model,
    make_checkpoint,
    save_atomic,
    state_dict_fingerprint,
)
from dynaquant_brevitas.cli import main
from dynaquant_brevitas.io.container import MAGIC, ContainerError, pack, unpack
from dynaquant_brevitas.io.images import DataError, read_image, read_image_uint8, to_uint8
from dynaquant_brevitas.evaluation import EvalError, decode_image, encode_image, load_for_eval, prepare_for_coding
from dynaquant_brevitas.evaluation.coding import check_coded
from dynaquant_brevitas.training import train

REPO = Path(__file__).resolve().parents[1]
ARCH, KWARGS = "bmshj2018-hyperprior", {"N": 8, "M": 12}
FUZZ = settings(max_examples=200, deadline=None)


# --------------------------------------------------------------------------- helpers


def tiny_model(seed: int = 0, arch: str = ARCH) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(arch, KWARGS)


def save_model(model: torch.nn.Module, path: Path, arch: str = ARCH, **extra) -> Path:
    return save_atomic(make_checkpoint(model, arch, KWARGS, **extra), path)


def photo(h: int, w: int) -> np.ndarray:
    with Image.open(TRAIN_DIR / "wiki_001.png") as img:
        return np.asarray(img.convert("RGB").crop((20, 20, 20 + w, 20 + h)))


def cli(capsys, *argv: str | Path) -> tuple[int, str]:
    """Run ``dynaquant ARGV`` in this process; returns the status and stderr."""
    capsys.readouterr()
    status = main([str(a) for a in argv])
    return status, capsys.readouterr().err


def encode(capsys, checkpoint: Path, image: Path, output: Path) -> tuple[int, str]:
    return cli(capsys, "encode", "--checkpoint", checkpoint, image, "-o", output)


def decode(capsys, checkpoint: Path, coded: Path, output: Path) -> tuple[int, str]:
    return cli(capsys, "decode", "--checkpoint", checkpoint, coded, "-o", output)


def assert_refused(status: int, err: str, *words: str) -> None:
    """Exit status 2, one line on stderr holding every word, no traceback."""
    assert status == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for word in words:
        assert word in err, (word, err)


def png16(path: Path, samples: np.ndarray, color_type: int) -> Path:
    """A 16-bit PNG written by hand (Pillow cannot write 16-bit RGB)."""
    h, w = samples.shape[:2]
    raw = b"".join(b"\x00" + samples[i].astype(">u2").tobytes() for i in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    chunks = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunks)
    return path


def subprocess_env(threads: int) -> dict[str, str]:
    n = str(threads)
    return {**os.environ, "OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "PYTHONWARNINGS": "ignore"}


def dynaquant_subprocess(threads: int, *argv: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "dynaquant_brevitas", *argv],
        cwd=REPO,
        env=subprocess_env(threads),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """An untrained tiny float checkpoint."""
    return save_model(tiny_model(), tmp_path_factory.mktemp("ckpt") / "float.pt")


@pytest.fixture(scope="module")
def dq_ckpt(tmp_path_factory) -> Path:
    """A tiny dynaquantized checkpoint (candidates 4/6/8), calibrated on photo crops."""
    cfg = DynaQuantConfig(candidate_bits=(4, 6, 8))
    model = dynaquantize(tiny_model(), cfg)
    crops = torch.from_numpy(photo(128, 128).copy()).permute(2, 0, 1)[None].float() / 255
    calibrate(model, [crops])
    return save_model(model.eval(), tmp_path_factory.mktemp("dq") / "dq.pt", dynaquant=cfg.to_dict())


# --------------------------------------------------------------------------- images

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (9, 11, 3), dtype=np.uint8)
GRAY16 = RNG.integers(0, 65536, (9, 11), dtype=np.uint16)
RGB16 = RNG.integers(0, 65536, (9, 11, 3), dtype=np.uint16)


def _write_mode_images(folder: Path) -> dict[str, tuple[Path, np.ndarray]]:
    """Images in several modes and the RGB 8-bit pixels each must read as."""
    palette, cmyk = Image.fromarray(RGB).convert("P"), Image.fromarray(RGB).convert("CMYK")
    gray = np.repeat(RGB[..., :1], 3, axis=2)
    cases = {
        "gray.png": (Image.fromarray(RGB[..., 0]), gray),
        "rgba.png": (Image.fromarray(np.dstack([RGB, RGB[..., :1]])), RGB),  # alpha dropped, colours kept
        "la.png": (Image.fromarray(RGB[..., 0]).convert("LA"), gray),
        "palette.png": (palette, np.asarray(palette.convert("RGB"))),
        "bilevel.png": (Image.fromarray(RGB[..., 0] > 127), np.repeat((RGB[..., :1] > 127) * np.uint8(255), 3, 2)),
        "cmyk.tif": (cmyk, np.asarray(cmyk.convert("RGB"))),
    }
    out = {}
    for name, (img, expected) in cases.items():
        img.save(folder / name)
        out[name] = (folder / name, expected)
    high_byte = (GRAY16 >> 8).astype(np.uint8)[..., None]
    out["gray16.png"] = (png16(folder / "gray16.png", GRAY16, 0), np.repeat(high_byte, 3, axis=2))
    out["rgb16.png"] = (png16(folder / "rgb16.png", RGB16, 2), (RGB16 >> 8).astype(np.uint8))
    return out


def test_image_modes_read_as_rgb_8_bit(tmp_path: Path) -> None:
    for name, (path, expected) in _write_mode_images(tmp_path).items():
        got = read_image_uint8(path)
        assert got.dtype == torch.uint8 and got.shape == (3, 9, 11), name
        assert np.array_equal(got.permute(1, 2, 0).numpy(), expected), name


@pytest.mark.parametrize("size", [(1, 1), (5, 7), (65, 130), (64, 64)])
def test_cli_codes_any_image_size(ckpt: Path, tmp_path: Path, size: tuple[int, int], capsys) -> None:
    """Tiny images (below the model's stride of 64) and sides not multiples of 64 round-trip."""
    image = tmp_path / "in.png"
    Image.fromarray(photo(*size)).save(image)
    status, err = encode(capsys, ckpt, image, tmp_path / "x.dqic")
    assert status == 0, err
    status, err = decode(capsys, ckpt, tmp_path / "x.dqic", tmp_path / "out.png")
    assert status == 0, err
    with Image.open(tmp_path / "out.png") as out:
        assert out.mode == "RGB" and out.size == (size[1], size[0])


def test_cli_codes_every_image_mode(ckpt: Path, tmp_path: Path, capsys) -> None:
    for name, (path, expected) in _write_mode_images(tmp_path).items():
        coded, decoded = tmp_path / f"{name}.dqic", tmp_path / f"{name}-out.png"
        assert encode(capsys, ckpt, path, coded)[0] == 0, name
        assert decode(capsys, ckpt, coded, decoded)[0] == 0, name
        assert read_image_uint8(decoded).shape == (3, *expected.shape[:2]), name


def _bad_images(folder: Path) -> dict[str, tuple[Path, str]]:
    Image.fromarray(RGB).save(folder / "whole.png")
    whole = (folder / "whole.png").read_bytes()
    files = {
        "text.png": (b"this is not an image\n", "cannot identify"),
        "empty.png": (b"", "empty file"),
        "truncated.png": (whole[: len(whole) // 2], "truncated"),
        "float.tif": (None, "not supported"),
    }
    out = {}
    for name, (data, reason) in files.items():
        if data is None:
            Image.fromarray(RNG.random((4, 5)).astype(np.float32)).save(folder / name)
        else:
            (folder / name).write_bytes(data)
        out[name] = (folder / name, reason)
    out["missing.png"] = (folder / "missing.png", "No such file")
    return out


def test_unreadable_images_are_refused_naming_the_file(ckpt: Path, tmp_path: Path, capsys) -> None:
    for name, (path, reason) in _bad_images(tmp_path).items():
        with pytest.raises(DataError, match=reason):
            read_image(path)
        output = tmp_path / f"{name}.dqic"
        status, err = encode(capsys, ckpt, path, output)
        assert_refused(status, err, str(path), reason)
        assert not output.exists()


def test_eval_refuses_a_folder_holding_a_broken_image(ckpt: Path, tmp_path: Path, capsys) -> None:
    Image.fromarray(RGB).save(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes(b"not an image")
    status, err = cli(capsys, "eval", "--checkpoint", ckpt, "--images", tmp_path, "-o", tmp_path / "r.json")
    assert status == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(f"dynaquant eval: error: cannot read image {tmp_path / 'b.png'}")
    assert not (tmp_path / "r.json").exists()


def test_decompression_bombs_are_refused(tmp_path: Path, monkeypatch) -> None:
    Image.fromarray(RGB).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20)  # the 9x11 image is then more than twice too large
    with pytest.raises(DataError, match="bomb.png"):
        read_image(tmp_path / "bomb.png")


def _peak_rss_growth_mb(fn) -> tuple[object, float | None]:
    """``fn()`` and how far this process's peak RSS rose above its RSS before (None if unmeasurable)."""

    def status(key: str) -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1]) / 1024
        raise KeyError(key)

    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets the peak (VmHWM) to the current RSS
        before = status("VmRSS")
    except (OSError, KeyError):
        return fn(), None
    result = fn()
    return result, status("VmHWM") - before


def test_large_image_round_trip_in_bounded_memory(ckpt: Path, tmp_path: Path) -> None:
    """4096 x 4096: read, pad, encode and decode for real (about 10 s on one core).

    Memory grows linearly with the pixels; with this tiny model the peak stays below
    1.5 GB above the process's resident size (measured about 0.8 GB: the float image, its padded
    copy and the first layers' activations).
    """
    side = 4096
    ramp = (np.arange(side) >> 4).astype(np.uint8)
    pixels = np.zeros((side, side, 3), np.uint8)
    pixels[..., 0], pixels[..., 1] = ramp[None, :], ramp[:, None]
    Image.fromarray(pixels).save(tmp_path / "big.png", compress_level=1)
    del pixels
    model = load_for_eval(ckpt).model
    coded, growth = _peak_rss_growth_mb(lambda: encode_image(model, read_image(tmp_path / "big.png")))
    assert coded.size == (side, side) and coded.num_bytes > 0
    if growth is not None:
        assert growth < 1536, f"peak memory grew by {growth:.0f} MB"
    x_hat = decode_image(model, coded.strings, coded.shape, coded.size)
    assert x_hat.shape == (1, 3, side, side)


# --------------------------------------------------------------------------- bitstreams


@functools.lru_cache(maxsize=None)
def _coded_photo() -> tuple[bytes, torch.nn.Module]:
    """A real container of a 70 x 90 photo crop and the (prepared) model that made it."""
    model = prepare_for_coding(tiny_model())
    x = torch.from_numpy(photo(70, 90).copy()).permute(2, 0, 1)[None].float() / 255
    coded = encode_image(model, x)
    return pack(state_dict_fingerprint(model), coded.size, coded.shape, coded.strings), model


def _with_crc(body: bytes) -> bytes:
    return body + struct.pack(">I", zlib.crc32(body))


@pytest.fixture(scope="module")
def coded_file(ckpt: Path, tmp_path_factory) -> Path:
    """A container of a 70 x 90 photo crop, written by ``dynaquant encode`` with :func:`ckpt`."""
    folder = tmp_path_factory.mktemp("coded")
    Image.fromarray(photo(70, 90)).save(folder / "in.png")
    coded = folder / "x.dqic"
    assert main(["encode", "--checkpoint", str(ckpt), str(folder / "in.png"), "-o", str(coded)]) == 0
    return coded


def test_damaged_files_are_refused_by_the_cli(ckpt: Path, coded_file: Path, tmp_path: Path, capsys) -> None:
    blob = coded_file.read_bytes()
    flipped = bytearray(blob)
    flipped[len(blob) // 2] ^= 0x04
    damaged = {
        "truncated-header.dqic": (blob[:10], "truncated"),
        "truncated-payload.dqic": (blob[:-7], "CRC32"),
        "flipped.dqic": (bytes(flipped), "CRC32"),
        "empty.dqic": (b"", "empty file"),
        "png.dqic": (b"\x89PNG\r\n\x1a\n" + bytes(40), "magic"),
        "future.dqic": (blob[:4] + b"\x07" + blob[5:], "version 7"),
    }
    for name, (data, reason) in damaged.items():
        (tmp_path / name).write_bytes(data)
        output = tmp_path / f"{name}.png"
        status, err = decode(capsys, ckpt, tmp_path / name, output)
        assert_refused(status, err, name, reason)
        assert not output.exists()
        with pytest.raises(ContainerError, match=reason):
            unpack(data)


@pytest.mark.parametrize("other", ["another-seed", "another-arch", "dynaquantized"])
def test_files_of_another_model_are_refused(
    ckpt: Path, coded_file: Path, tmp_path: Path, other: str, capsys
) -> None:
    """Another quality (other weights), another architecture or the dynaquantized model: refused."""
    model = {
        "another-seed": lambda: tiny_model(seed=1),
        "another-arch": lambda: tiny_model(arch="bmshj2018-factorized"),
        "dynaquantized": lambda: dynaquantize(tiny_model(), DynaQuantConfig(candidate_bits=(8,))),
    }[other]()
    dq = {"dynaquant": DynaQuantConfig(candidate_bits=(8,)).to_dict()} if other == "dynaquantized" else {}
    arch = "bmshj2018-factorized" if other == "another-arch" else ARCH
    foreign = save_model(model, tmp_path / "other.pt", arch=arch, **dq)
    output = tmp_path / "out.png"
    status, err = decode(capsys, foreign, coded_file, output)
    assert_refused(status, err, "wrong model", coded_file.name)
    assert not output.exists()


@FUZZ
@given(data=st.one_of(st.binary(max_size=300), st.binary(max_size=300).map(lambda b: MAGIC + b"\x01" + b)))
def test_fuzz_random_bytes_are_refused(data: bytes) -> None:
    with pytest.raises(ContainerError):
        unpack(data)


def _mutate(blob: bytes, draw) -> bytes:
    """One to three random edits: flip bits, overwrite, insert or delete bytes, truncate."""
    out = bytearray(blob)
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        at = draw(st.integers(0, max(0, len(out) - 1)))
        if kind == "flip" and out:
            out[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and out:
            out[at] = draw(st.integers(0, 255))
        elif kind == "insert":
            out[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del out[at : at + draw(st.integers(1, 8))]
        else:
            del out[at:]
    return bytes(out)


@FUZZ
@given(data=st.data())
def test_fuzz_mutated_containers_are_refused(data) -> None:
    blob, _ = _coded_photo()
    mutated = _mutate(blob, data.draw)
    if mutated == blob:
        unpack(mutated)
    else:
        with pytest.raises(ContainerError):
            unpack(mutated)


@FUZZ
@given(data=st.data())
def test_fuzz_mutations_with_a_recomputed_crc_never_crash_the_parser(data) -> None:
    """Even with a valid CRC (tampering, not damage), parsing raises ContainerError or succeeds."""
    blob, _ = _coded_photo()
    try:
        unpack(_with_crc(_mutate(blob[:-4], data.draw)))
    except ContainerError:
        pass


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_fuzz_decoding_tampered_files_refuses_or_yields_the_stated_size(data) -> None:
    """Full decodes of CRC-valid files with tampered strings, size or latent shape: a
    ContainerError or an image of the stated size (garbage strings cannot be told from real ones
    without a signature; the CRC only catches damage)."""
    blob, model = _coded_photo()
    box = unpack(blob)
    strings = [[_mutate(s, data.draw) if data.draw(st.booleans()) else s for s in g] for g in box.strings]
    # consistent pairs, one that the model decodes to another size, one inconsistent pair
    layouts = [(box.size, box.shape), ((1, 1), [1, 1]), ((300, 200), [5, 4])]
    layouts += [((64, 64), [4, 4]), ((64, 64), [2, 3])]
    size, shape = data.draw(st.sampled_from(layouts))
    try:
        tampered = unpack(pack(box.model_id, size, shape, strings))
        x_hat = decode_image(model, tampered.strings, tampered.shape, tampered.size)
    except ContainerError:
        return
    assert x_hat.shape[-2:] == tampered.size and bool(torch.isfinite(x_hat).all())


def test_crafted_short_strings_do_not_crash_the_entropy_decoder() -> None:
    """A CRC-valid header claiming 768 x 768 with short strings made CompressAI's rANS decoder
    read past its input (a segmentation fault); the zero tail appended before decoding stops it.
    (Strings shorter than any real image's are refused earlier, as implausible: these pass that.)"""
    _, model = _coded_photo()
    x_hat = decode_image(model, [[b"\xff" * 200], [b"\xa5" * 200]], [12, 12], (768, 768))
    assert x_hat.shape == (1, 3, 768, 768)


@pytest.mark.parametrize(
    "strings, shape, match",
    [
        ([[b"x" * 8, b"y" * 8]], [2, 2], "one string per group"),
        ([], [2, 2], "one string per group"),
        ([[b"x" * 7]], [2, 2], "shorter than 8 bytes"),
        ([[b"x" * 8]], [3, 2], "does not fit"),
        ([[b"x" * 8]], [2, 1], "does not fit"),
        ([[b"x" * 8]], [2], "does not fit"),
        ([[b"x" * 8]], [256, 256], "does not fit"),
    ],
)
def test_inconsistent_strings_and_shapes_are_refused(strings, shape, match: str) -> None:
    with pytest.raises(ContainerError, match=match):
        check_coded(strings, shape, (128, 128))


def test_absurd_sizes_are_refused_before_decoding() -> None:
    body = bytearray(pack(bytes(16), (1, 1), [1, 1], [[b"x" * 8]])[:-4])
    body[21:29] = struct.pack(">II", 70_000, 70_000)  # height and width after magic, version, model id
    with pytest.raises(ContainerError, match="exceeds the limit"):
        unpack(_with_crc(bytes(body)))
    with pytest.raises(ValueError, match="empty image size"):
        pack(bytes(16), (0, 5), [1, 1], [[b"x" * 8]])


# --------------------------------------------------------------------------- checkpoints


def _state_dict_variants(sd: dict) -> dict[str, object]:
    prefixed = {f"module.{k}": v for k, v in sd.items()}
    return {
        "plain": sd,
        "nested-state_dict": {"epoch": 3, "state_dict": sd, "optimizer": {"lr": 1e-4}},
        "nested-model": {"model": sd},
        "dataparallel": prefixed,
        "ddp-nested": {"state_dict": prefixed},
    }


def test_compressai_state_dicts_load_transparently(coded_file: Path, tmp_path: Path, capsys) -> None:
    """torch.save(model.state_dict()) and its usual wrappings load, and decode our files."""
    model = tiny_model()
    for name, obj in _state_dict_variants(model.state_dict()).items():
        torch.save(obj, tmp_path / f"{name}.pt")
        loaded = load_model(tmp_path / f"{name}.pt")
        assert type(loaded).__name__ == "ScaleHyperprior" and (loaded.N, loaded.M) == (8, 12), name
        assert state_dict_fingerprint(loaded) == state_dict_fingerprint(model), name
    assert load_model(tmp_path / "plain.pt", arch=ARCH).N == 8
    factorized = tiny_model(arch="bmshj2018-factorized")
    torch.save(factorized.state_dict(), tmp_path / "factorized.pt")
    assert type(load_model(tmp_path / "factorized.pt")).__name__ == "FactorizedPrior"
    status, err = decode(capsys, tmp_path / "dataparallel.pt", coded_file, tmp_path / "o.png")
    assert status == 0, err  # same weights, so the same model id as the checkpoint that encoded it


def _bad_checkpoints(folder: Path, sd: dict) -> dict[str, tuple[Path, str]]:
    valid = save_model(tiny_model(), folder / "valid.pt").read_bytes()
    objects = {
        "missing.pt": (
            {k: v for k, v in sd.items() if not k.startswith("h_s.4")},
            "missing keys: h_s.4.bias, h_s.4.weight",
        ),
        "extra.pt": ({**sd, "g_a.9.weight": torch.zeros(3)}, "unexpected keys: g_a.9.weight"),
        "shape.pt": (
            {**sd, "g_a.0.weight": torch.zeros(8, 3, 3, 3)},
            "g_a.0.weight (8, 3, 3, 3) vs (8, 3, 5, 5)",
        ),
        "mixed-prefix.pt": ({**sd, "module.extra": torch.zeros(1)}, "some keys start with 'module.'"),
        "ambiguous.pt": ({"model": sd, "state_dict": sd}, "ambiguous"),
        "no-tensors.pt": ({"epoch": 3, "lr": 0.1}, "neither a dynaquant checkpoint nor a model state dict"),
        "wrong-arch.pt": (
            {**make_checkpoint(tiny_model(), ARCH, KWARGS), "arch": "mbt2018-mean"},
            "does not fit mbt2018-mean",
        ),
    }
    out = {}
    for name, (obj, reason) in objects.items():
        torch.save(obj, folder / name)
        out[name] = (folder / name, reason)
    for name, data, reason in [
        ("truncated.pt", valid[: len(valid) // 2], "truncated or damaged"),
        ("text.pt", b"hello, not a checkpoint\n", "not a PyTorch checkpoint"),
        ("empty.pt", b"", "empty"),
    ]:
        (folder / name).write_bytes(data)
        out[name] = (folder / name, reason)
    return out


def test_unusable_checkpoints_say_what_does_not_match(coded_file: Path, tmp_path: Path, capsys) -> None:
    for name, (path, reason) in _bad_checkpoints(tmp_path, tiny_model().state_dict()).items():
        with pytest.raises(CheckpointError, match=None) as err:
            load_model(path)
        assert reason in str(err.value), (name, str(err.value))
        output = tmp_path / f"{name}.png"
        status, stderr = decode(capsys, path, coded_file, output)
        assert_refused(status, stderr, reason)
        assert not output.exists()


def test_a_named_architecture_that_does_not_fit_is_refused(tmp_path: Path, capsys) -> None:
    torch.save(tiny_model().state_dict(), tmp_path / "sd.pt")
    with pytest.raises(CheckpointError, match="fit bmshj2018-factorized: unexpected keys: gaussian_cond"):
        load_model(tmp_path / "sd.pt", arch="bmshj2018-factorized")
    with pytest.raises(CheckpointError, match="unknown architecture 'nope'"):
        load_model(tmp_path / "sd.pt", arch="nope")
    with pytest.raises(CheckpointError, match="not mbt2018"):
        load_model(save_model(tiny_model(), tmp_path / "dq.pt"), arch="mbt2018")


# --------------------------------------------------------------------------- configurations


@pytest.mark.parametrize(
    "changes, field",
    [  # what tests/test_config.py does not cover already
        ({"selector": "nonexistent"}, "selector"),
        ({"candidate_bits": (True, 8)}, "candidate_bits"),
        ({"candidate_bits": ("8",)}, "candidate_bits"),
        ({"fixed_bits": 8.0}, "fixed_bits"),
        ({"beta": float("inf")}, "beta"),
    ],
)
def test_more_invalid_config_values_name_the_field(changes: dict, field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field}: "):
        DynaQuantConfig(**changes)


@pytest.mark.parametrize(
    "override, field",
    [("quant.config.candidate_bits=[]", "quant.config: candidate_bits"), ("quant.target_bits=12", "quant.target_bits"),
     ("quant.config.rounding=magic", "quant.config: rounding"), ("quant.gamma=-1", "quant.gamma"),
     ("quant.gamma=.inf", "quant.gamma"), ("quant.target_bits=.nan", "quant.target_bits")],
)
def test_train_cli_refuses_bad_quant_config(tmp_path: Path, override: str, field: str, capsys) -> None:
    argv = ["train", "--arch", ARCH, "--data", TRAIN_DIR, "--output", tmp_path, "--set", override]
    status, err = cli(capsys, *argv)
    assert_refused(status, err, field)
    assert not (tmp_path / "last.pt").exists()


# --------------------------------------------------------------------------- NaN and inf


def test_non_finite_inputs_are_refused_before_encoding() -> None:
    model = prepare_for_coding(tiny_model())
    for value in (float("nan"), float("inf"), -float("inf")):
        x = torch.rand(1, 3, 16, 16)
        x[0, 1, 3, 4] = value
        with pytest.raises(EvalError, match="NaN or inf"):
            encode_image(model, x)
    with pytest.raises(EvalError, match=r"\(1, 3, H, W\)"):
        encode_image(model, torch.rand(3, 16, 16))


@pytest.mark.parametrize("tensor", ["g_a.0.weight", "h_s.2.bias", "gaussian_conditional.scale_table"])
def test_non_finite_weights_and_buffers_are_refused(tensor: str) -> None:
    model = prepare_for_coding(tiny_model())
    model.state_dict()[tensor].view(-1)[0] = float("nan")
    with pytest.raises(CheckpointError, match=tensor.replace(".", r"\.")):
        encode_image(model, torch.rand(1, 3, 16, 16))


def test_cli_refuses_a_checkpoint_with_nan_weights(tmp_path: Path, capsys) -> None:
    model = tiny_model()
    with torch.no_grad():
        model.g_s[0].weight[0, 0, 0, 0] = float("inf")
    bad = save_model(model, tmp_path / "nan.pt")
    Image.fromarray(photo(32, 32)).save(tmp_path / "in.png")
    status, err = encode(capsys, bad, tmp_path / "in.png", tmp_path / "x.dqic")
    assert_refused(status, err, "NaN or inf", "g_s.0.weight")
    assert not (tmp_path / "x.dqic").exists()
    status, err = cli(capsys, "eval", "--checkpoint", bad, "--images", tmp_path, "-o", tmp_path / "r.json")
    assert_refused(status, err, "NaN or inf", "g_s.0.weight")
    assert not (tmp_path / "r.json").exists()


# --------------------------------------------------------------------------- determinism


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_bitstreams_and_decoding_are_identical_across_processes_and_threads(
    dq_ckpt: Path, tmp_path: Path
) -> None:
    """Encoding with 1 and 2 threads in two processes gives the bytes of this process's encode,
    and another process decodes them to exactly this process's reconstruction (DynaQuant model,
    whose decoder re-derives the bit widths from what it decodes)."""
    image = tmp_path / "in.png"
    Image.fromarray(photo(150, 200)).save(image)
    ours = tmp_path / "ours.dqic"
    assert main(["encode", "--checkpoint", str(dq_ckpt), str(image), "-o", str(ours)]) == 0
    encode = ["encode", "--checkpoint", str(dq_ckpt), str(image), "-o"]
    decode = ["decode", "--checkpoint", str(dq_ckpt), str(ours), "-o", str(tmp_path / "sub.png")]
    procs = {  # the 2-thread process also decodes, to save a third interpreter start
        1: dynaquant_subprocess(1, *encode, str(tmp_path / "t1.dqic")),
        2: subprocess.Popen(
            [sys.executable, "-c", "import sys; from dynaquant_brevitas.cli import main; "
             f"sys.exit(main({encode + [str(tmp_path / 't2.dqic')]!r}) or main({decode!r}))"],
            cwd=REPO, env=subprocess_env(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ),
    }
    model = load_for_eval(dq_ckpt).model
    box = unpack(ours.read_bytes())
    reconstruction = to_uint8(decode_image(model, box.strings, box.shape, box.size))[0].permute(1, 2, 0)
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        coded = encode_image(model, read_image(image))
    finally:
        torch.set_num_threads(previous)
    assert coded.strings == box.strings
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, (name, err[-2000:])
    for threads in (1, 2):
        assert _sha((tmp_path / f"t{threads}.dqic").read_bytes()) == _sha(ours.read_bytes()), threads
    decoded = read_image_uint8(tmp_path / "sub.png").permute(1, 2, 0).numpy()
    assert _sha(decoded.tobytes()) == _sha(reconstruction.contiguous().numpy().tobytes())


# --------------------------------------------------------------------------- killed training


def test_training_killed_with_sigkill_resumes_losing_at_most_one_interval(tmp_path: Path) -> None:
    """A real ``dynaquant train`` process is SIGKILLed once checkpoints appear; every read of
    last.pt while it runs loads, the run resumes from it, and it ends where an uninterrupted
    run ends."""
    every, extra = 2, 4
    cfg = tiny_config(tmp_path / "run", steps=400, train={"checkpoint_every": every})
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(cfg.to_dict()))
    proc = subprocess.Popen(
        [sys.executable, "-m", "dynaquant_brevitas", "train", "-c", str(config)],
        cwd=REPO, env=subprocess_env(1), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    last, seen = tmp_path / "run" / "last.pt", []
    try:
        deadline = time.time() + 240
        while len(set(seen)) < 2 and proc.poll() is None and time.time() < deadline:
            if last.exists():
                seen.append(load_checkpoint(last)["step"])  # never a half-written file
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL and len(set(seen)) >= 2, err[-2000:]
    step = load_checkpoint(last)["step"]
    logged = [json.loads(line)["step"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert step % every == 0 and 0 <= max(logged) - step <= every  # lost at most one interval
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the killed process, so the runs match bit for bit
    try:
        resumed = train(cfg, resume=True, stop_at=step + extra)
        uninterrupted = tiny_config(tmp_path / "ref", steps=400, train={"checkpoint_every": every})
        reference = train(uninterrupted, stop_at=step + extra)
    finally:
        torch.set_num_threads(previous)
    a, b = load_checkpoint(resumed["checkpoint"]), load_checkpoint(reference["checkpoint"])
    assert a["step"] == b["step"] == step + extra
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
