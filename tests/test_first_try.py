"""A user's model and files on the first try: each case here was wrong before it was fixed.

Unseen models (run order unlike registration order, window attention), coding in training mode,
crafted containers, diverging runs, files the user owns (special files, symlinks, races,
overwriting the input), saving and loading quantized models, the command line's start-up and its
refusals, image orientation and colour profiles.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from compressai.models import FactorizedPrior, ScaleHyperprior
from PIL import Image, ImageCms
from torch import nn
from workflow_helpers import TINY_ARCH, TRAIN_DIR, tiny_config

from dynaquant_brevitas import DynaQuantConfig, calibrate, dynaquantize, freeze, load_model, plan_quantization, save_model
from dynaquant_brevitas.cli import main
from dynaquant_brevitas.evaluation import decode_image, encode_image, prepare_for_coding
from dynaquant_brevitas.io.container import ContainerError, pack, read_container_file
from dynaquant_brevitas.io.files import LockedError, folder_lock, write_atomic, write_json
from dynaquant_brevitas.io.images import read_image_uint8
from dynaquant_brevitas.registry import register, unregister
from dynaquant_brevitas.training import ConfigError, TrainingDiverged, train
from dynaquant_brevitas.transform import ModelAdapter


def quantizer_states(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if "_quant." in k}


# --------------------------------------------------------------------------- models users bring


class HeadLast(nn.Module):
    """A synthesis transform that registers ``tail`` before ``head`` but runs ``head`` first."""

    def __init__(self, n: int, m: int) -> None:
        super().__init__()
        self.tail = nn.Sequential(nn.ConvTranspose2d(n, n, 5, 2, 2, 1), nn.ReLU(), nn.ConvTranspose2d(n, 3, 5, 2, 2, 1))
        self.head = nn.Sequential(nn.ConvTranspose2d(m, n, 5, 2, 2, 1), nn.ReLU(), nn.ConvTranspose2d(n, n, 5, 2, 2, 1))

    def forward(self, y):
        return self.tail(self.head(y))


class HeadLastCodec(FactorizedPrior):
    def __init__(self, N: int = 8, M: int = 12) -> None:
        super().__init__(N, M)
        self.g_s = HeadLast(N, M)


def test_the_decoder_tap_is_the_first_module_that_runs():
    plan = plan_quantization(HeadLastCodec())
    assert plan.taps["decoder"] == "g_s.head"
    assert plan.dynamic["decoder"] == ["g_s.tail.0", "g_s.tail.2"]


def test_decoding_the_same_stream_twice_on_fresh_models_agrees(tmp_path):
    torch.manual_seed(0)
    model = dynaquantize(HeadLastCodec(), DynaQuantConfig(candidate_bits=(2, 8)))
    calibrate(model, [torch.rand(2, 3, 64, 64)])
    model = prepare_for_coding(model)
    coded = encode_image(model, torch.rand(1, 3, 64, 64))
    torch.save(model.state_dict(), tmp_path / "m.pt")  # not a registry architecture: weights only
    decoded = []
    for _ in range(2):  # each a freshly loaded model: no choice left over from an earlier call
        fresh = dynaquantize(HeadLastCodec(), DynaQuantConfig(candidate_bits=(2, 8)))
        fresh.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True))
        decoded.append(decode_image(prepare_for_coding(fresh), coded.strings, coded.shape, coded.size))
    assert torch.equal(decoded[0], decoded[1])


class _TapTail(ModelAdapter):
    model_types = (HeadLastCodec,)
    priority = 1

    def taps(self, model, config):
        return {"decoder": "g_s.tail.0"}


def test_a_dynamic_layer_running_before_its_tap_is_refused():
    register("adapter", "tap-tail", _TapTail(), source="test")
    try:
        with pytest.raises(ValueError, match=r"g_s.head.0, g_s.head.2 run\(s\) before 'g_s.tail.0'"):
            plan_quantization(HeadLastCodec())
    finally:
        unregister("adapter", "tap-tail")


class WindowBlock(nn.Module):
    """Window self-attention and an MLP on 4x4 windows (TCM- and Swin-style codecs)."""

    def __init__(self, c: int, window: int = 4) -> None:
        super().__init__()
        self.window = window
        self.norm = nn.LayerNorm(c)
        self.attn = nn.MultiheadAttention(c, 2, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(c, 2 * c), nn.GELU(), nn.Linear(2 * c, c))

    def forward(self, x):
        n, c, h, w = x.shape
        s = self.window
        t = x.reshape(n, c, h // s, s, w // s, s).permute(0, 2, 4, 3, 5, 1).reshape(-1, s * s, c)
        y = self.norm(t)
        t = t + self.attn(y, y, y, need_weights=False)[0]
        t = t + self.mlp(self.norm(t))
        return t.reshape(n, h // s, w // s, s, s, c).permute(0, 5, 1, 3, 2, 4).reshape(n, c, h, w)


class WindowCodec(FactorizedPrior):
    def __init__(self, N: int = 8, M: int = 12) -> None:
        super().__init__(N, M)
        self.g_a = nn.Sequential(
            nn.Conv2d(3, N, 5, 2, 2), nn.Conv2d(N, N, 5, 2, 2), WindowBlock(N), nn.Conv2d(N, N, 5, 2, 2), nn.Conv2d(N, M, 5, 2, 2)
        )


def test_window_attention_runs_with_per_image_widths():
    from dynaquant_brevitas.nn import DynaQuantMultiheadAttention

    torch.manual_seed(0)
    model = dynaquantize(WindowCodec(), DynaQuantConfig(candidate_bits=(2, 8)))
    assert isinstance(model.g_a[2].attn, DynaQuantMultiheadAttention)  # fixed precision, not float
    assert {"g_a.2.mlp.0", "g_a.2.mlp.2"} <= set(model.dynaquant.layer_names["encoder"])  # rows per image
    x = torch.rand(4, 3, 64, 64)
    calibrate(model, [x])
    out = model.train()(x)
    assert len({tuple(row) for row in out["bits"]["bits"].tolist()}) > 1  # images differ in the batch
    out["x_hat"].sum().backward()
    assert model.g_a[2].mlp[0].weight.grad is not None
    # each image's rows get its own width: a batch gives what its images give one by one
    model.eval()
    with torch.no_grad():
        together = model(x)["x_hat"]
        alone = torch.cat([model(x[i : i + 1])["x_hat"] for i in range(4)])
    assert torch.allclose(together, alone, atol=1e-5)


def test_a_layer_whose_rows_do_not_fit_the_images_is_named():
    from dynaquant_brevitas.nn import DynaQuantLinear
    from dynaquant_brevitas.quant import BitChoice

    layer = DynaQuantLinear.from_float(nn.Linear(4, 4), bits=8)
    layer.dynaquant_name = "g_a.3.proj"
    calibrate(layer, [torch.rand(2, 4)])
    layer.set_bit_choice(BitChoice((4, 8), torch.tensor([[1.0, 0.0], [0.0, 1.0]])))
    with pytest.raises(RuntimeError, match="float_modules"):
        layer(torch.rand(3, 4))


# --------------------------------------------------------------------------- coding in training mode


@pytest.fixture
def hyper():
    torch.manual_seed(0)
    model = dynaquantize(ScaleHyperprior(8, 12), DynaQuantConfig(candidate_bits=(2, 4, 8)))
    calibrate(model, [torch.rand(2, 3, 64, 64)])
    model.update(force=True)
    return model


def test_coding_in_training_mode_is_deterministic(hyper):
    x = torch.rand(1, 3, 64, 64)
    hyper.train()  # as the README's snippet left it before
    strings = hyper.compress(x)
    decoded = [hyper.decompress(strings["strings"], strings["shape"])["x_hat"] for _ in range(4)]
    assert hyper.training and all(m.training for m in hyper.modules())  # the mode is restored
    assert all(torch.equal(decoded[0], d) for d in decoded[1:])
    hyper.eval()
    assert hyper.compress(x)["strings"] == strings["strings"]
    assert torch.equal(hyper.decompress(strings["strings"], strings["shape"])["x_hat"], decoded[0])


def test_coding_does_not_calibrate_a_partly_calibrated_model():
    torch.manual_seed(0)
    model = dynaquantize(ScaleHyperprior(8, 12))
    model.train()(torch.rand(2, 3, 64, 64))  # one batch of an 8-batch calibration window
    model.update(force=True)
    before = quantizer_states(model)
    x = torch.rand(1, 3, 128, 128)
    coded = model.compress(x)
    first = model.decompress(coded["strings"], coded["shape"])["x_hat"]
    second = model.decompress(coded["strings"], coded["shape"])["x_hat"]
    after = quantizer_states(model)
    assert all(torch.equal(before[k], after[k]) for k in before)  # no statistics gathered while coding
    assert torch.equal(first, second)


# --------------------------------------------------------------------------- crafted containers


def test_a_short_stream_claiming_a_large_image_is_refused_before_decoding(hyper):
    model = prepare_for_coding(hyper)
    coded = encode_image(model, torch.rand(1, 3, 64, 64))
    with pytest.raises(ContainerError, match="implausible file: a 4096x4096 image codes to at least"):
        decode_image(model, coded.strings, [64, 64], (4096, 4096))


def test_a_size_needing_more_memory_than_available_is_refused(hyper, monkeypatch):
    from dynaquant_brevitas.evaluation import coding

    model = prepare_for_coding(hyper)
    coded = encode_image(model, torch.rand(1, 3, 64, 64))
    monkeypatch.setattr(coding, "available_memory", lambda: 1 << 10)  # 1 KiB
    with pytest.raises(ContainerError, match="needs about .* GiB, 0.0 GiB are available"):
        decode_image(model, coded.strings, coded.shape, coded.size)


def test_special_files_are_not_read_as_containers(tmp_path):
    with pytest.raises(ContainerError, match="not a regular file"):
        read_container_file("/dev/zero")
    with pytest.raises(ContainerError, match="not a regular file"):
        read_container_file(tmp_path)


def test_the_cli_refuses_a_crafted_header_quickly(hyper, tmp_path, capsys):
    from dynaquant_brevitas.io.checkpoint import state_dict_fingerprint

    model = prepare_for_coding(hyper)
    path = save_model(model, tmp_path / "m.pt")
    loaded = prepare_for_coding(load_model(path))
    blob = pack(state_dict_fingerprint(loaded), (4096, 4096), [64, 64], [[b"\x00" * 8], [b"\x00" * 8]])
    (tmp_path / "crafted.dqic").write_bytes(blob)
    status = main(["decode", "--checkpoint", str(path), str(tmp_path / "crafted.dqic"), "-o", str(tmp_path / "x.png")])
    assert status == 2 and "implausible file" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


# --------------------------------------------------------------------------- diverging runs


@pytest.mark.parametrize("key, value", [("train.lr", ".inf"), ("train.lmbda", ".nan"), ("train.lr_drop_factor", ".nan")])
def test_non_finite_training_values_are_refused(tmp_path, key, value, capsys):
    status = main(["train", "--arch", "bmshj2018-factorized", "--data", str(TRAIN_DIR), "--output", str(tmp_path / "r"),
                   "--set", f"{key}={value}"])
    assert status == 2 and key in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_a_diverging_run_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    out = tmp_path / "run"
    train(tiny_config(out, steps=6), stop_at=2)
    good = torch.load(out / "last.pt", weights_only=True)
    blow_up = {"lr_drop_at": 0.0, "lr_drop_factor": 1e30, "checkpoint_every": 10}  # lr 1e27 from the next step
    with pytest.raises(TrainingDiverged, match="keeps the last good state"):
        train(tiny_config(out, steps=6, train=blow_up), resume=True)
    kept = torch.load(out / "last.pt", weights_only=True)
    assert kept["step"] == good["step"] == 2
    assert all(torch.equal(good["state_dict"][k], kept["state_dict"][k]) for k in good["state_dict"])
    for line in (out / "log.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"{c} in the log"))


# --------------------------------------------------------------------------- files the user owns


def test_special_files_are_written_through_not_replaced():
    write_atomic("/dev/null", b"data")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_a_symlink_stays_a_link_and_its_target_gets_the_data(tmp_path):
    target = tmp_path / "target.json"
    target.write_text("{}")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    write_json(link, {"a": 1})
    assert link.is_symlink() and json.loads(target.read_text()) == {"a": 1}


def test_a_failed_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "result.json"
    write_json(path, {"good": True})

    def half_then_fail(f):
        f.write(b'{"half": ')
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match=str(path)):
        write_atomic(path, half_then_fail)
    with pytest.raises(ValueError):
        write_json(path, {"bad": float("nan")})  # NaN is not JSON
    assert json.loads(path.read_text()) == {"good": True}
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_concurrent_writers_never_fail_or_tear(tmp_path):
    path = tmp_path / "out.bin"
    errors = []

    def writer(byte: int) -> None:
        try:
            for _ in range(100):
                write_atomic(path, bytes([byte]) * 100_000)
        except Exception as err:  # noqa: BLE001 - any failure is what the test looks for
            errors.append(err)

    threads = [threading.Thread(target=writer, args=(b,)) for b in (1, 2)]
    for t in threads:
        t.start()
    for _ in range(200):
        data = path.read_bytes() if path.exists() else bytes([1]) * 100_000
        assert len(data) == 100_000 and len(set(data)) == 1
    for t in threads:
        t.join()
    assert not errors


def test_a_run_folder_in_use_is_refused(tmp_path):
    out = tmp_path / "run"
    with folder_lock(out):
        with pytest.raises(LockedError, match="in use"):
            train(tiny_config(out, steps=2))


def test_an_existing_run_needs_resume_or_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    train(tiny_config(out, steps=2))
    argv = ["train", "--set", f"model.arch={TINY_ARCH['arch']}", "--set", "model.N=8", "--set", "model.M=12",
            "--data", str(TRAIN_DIR), "--output", str(out), "--steps", "2", "--batch-size", "2",
            "--set", "data.patch_size=64", "--device", "cpu", "--no-progress"]
    assert main(argv) == 2 and "--resume" in capsys.readouterr().err
    assert main(argv + ["--overwrite"]) == 0


def test_encode_and_decode_refuse_to_overwrite_their_input(hyper, tmp_path, capsys):
    path = save_model(prepare_for_coding(hyper), tmp_path / "m.pt")
    image = tmp_path / "x.png"
    Image.fromarray(np.full((32, 48, 3), 100, np.uint8)).save(image)
    before = image.read_bytes()
    assert main(["encode", "--checkpoint", str(path), str(image), "-o", str(image)]) == 2
    assert "is the input" in capsys.readouterr().err and image.read_bytes() == before
    assert main(["encode", "--checkpoint", str(path), str(image), "-o", str(tmp_path / "x.dqic")]) == 0
    line = capsys.readouterr().out.strip().splitlines()
    assert len(line) == 1 and "bytes" in line[0] and "bpp" in line[0] and line[0].endswith(" s")
    coded = (tmp_path / "x.dqic").read_bytes()
    assert main(["decode", "--checkpoint", str(path), str(tmp_path / "x.dqic"), "-o", str(tmp_path / "x.dqic")]) == 2
    assert (tmp_path / "x.dqic").read_bytes() == coded


# --------------------------------------------------------------------------- saving quantized models


def test_save_and_load_dynamic_and_frozen_models(hyper, tmp_path):
    x = torch.rand(1, 3, 64, 64)
    static = freeze(hyper, "min")
    again = freeze(hyper, static.dynaquant_profile)  # its own profile, fixed layers included
    assert again.dynaquant_profile == static.dynaquant_profile
    for model, name in ((hyper, "dynamic.pt"), (static, "frozen.pt")):
        loaded = load_model(save_model(model, tmp_path / name))
        with torch.no_grad():
            assert torch.equal(loaded.eval()(x)["x_hat"], model.eval()(x)["x_hat"])
    assert load_model(tmp_path / "frozen.pt").dynaquant_profile == static.dynaquant_profile


# --------------------------------------------------------------------------- the command line


def test_help_does_not_import_torch_and_commands_print_no_cuda_notice(tmp_path):
    code = (
        "import sys\nfrom dynaquant_brevitas.cli import main\n"
        "for argv in (['--help'], ['train', '--help'], ['export', '--help']):\n"
        "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
        "print('torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip().splitlines()[-1] == "False"
    done = subprocess.run([sys.executable, "-m", "dynaquant_brevitas", "plugins"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "CUDA" not in done.stderr and "Warning" not in done.stderr, done.stderr


def test_config_yaml_records_the_architecture_that_ran(tmp_path):
    import yaml

    source = tmp_path / "mean"
    save_model(ScaleHyperprior(8, 12), tmp_path / "hyper.pt")
    train(tiny_config(source, steps=1, model={"arch": "mbt2018-mean"},
                      train={"init_from": str(tmp_path / "hyper.pt"), "init_partial": True}))
    run = tmp_path / "finetune"
    train(tiny_config(run, steps=1, train={"init_from": str(source / "final.pt")}))  # model section: hyperprior
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["arch"] == "mbt2018-mean"


def test_a_shipped_config_runs_from_another_folder(tmp_path, monkeypatch):
    from dynaquant_brevitas.cli._common import load_config
    from dynaquant_brevitas.cli.train import add_parser
    import argparse

    repo = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser()
    args = add_parser(parser.add_subparsers()).parse_args(["-c", str(repo / "configs/reference/bmshj2018-hyperprior-N64-M96-q2.yaml")])
    monkeypatch.chdir(tmp_path)
    from dynaquant_brevitas.training import TrainConfig

    cfg = TrainConfig.from_dict(load_config(args))
    assert Path(cfg.train.init_from).is_file() and Path(cfg.data.root).is_dir()


@pytest.mark.parametrize(
    "override, words",
    [
        ("train.lr=[1,2]", "train.lr must be a number"),
        ("train.steps=1e400", "train.steps must be a finite number"),
        ("train.steps=2.5", "train.steps must be an integer"),
        ("train.steps=true", "train.steps must be an integer"),
        ("train.log_every=0", "train.log_every must be positive"),
        ("train.threads=-3", "train.threads must be positive"),
        ("train.device=tpu9", "train.device must be"),
        ("model.N=0", "model.N must be positive"),
        ("train.lmbda=-1", "train.lmbda must be positive"),
    ],
)
def test_bad_training_values_are_refusals_not_internal_errors(tmp_path, override, words, capsys):
    argv = ["train", "--arch", "bmshj2018-factorized", "--data", str(TRAIN_DIR), "--output", str(tmp_path / "r"),
            "--set", override]
    assert main(argv) == 2
    assert words in capsys.readouterr().err
    assert not (tmp_path / "r" / "config.yaml").exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["eval", "--checkpoint", "m.pt", "--images", ".", "-o", "r.json", "--threads", "-1"],
        ["eval", "--checkpoint", "m.pt", "--images", ".", "-o", "r.json", "--device", "tpu"],
        ["export", "--checkpoint", "m.pt", "-o", "out", "--part", "h_a"],
        ["export", "--checkpoint", "m.pt", "-o", "out", "--size", "0x0"],
        ["export", "--checkpoint", "m.pt", "-o", "out", "--tolerance", "nan"],
    ],
)
def test_bad_options_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2


def test_export_refusals_use_cli_wording_and_leave_no_file(hyper, tmp_path, capsys):
    path = save_model(hyper, tmp_path / "dq.pt")
    (tmp_path / "list.json").write_text("[8, 8]")
    out = tmp_path / "out"
    status = main(["export", "--checkpoint", str(path), "-o", str(out), "--profile", str(tmp_path / "list.json")])
    assert status == 2 and "JSON object of layer name -> integer bits" in capsys.readouterr().err
    status = main(["export", "--checkpoint", str(path), "-o", str(out), "--profile", "mode"])
    assert status == 2 and "--images DIR" in capsys.readouterr().err
    float_path = save_model(ScaleHyperprior(8, 12), tmp_path / "float.pt")
    status = main(["export", "--checkpoint", str(float_path), "-o", str(out)])
    assert status == 2 and "dynaquant quantize" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())


def test_plot_writes_nothing_when_an_input_has_no_bits(tmp_path, capsys):
    result = {"name": "float", "results": {"bpp": [0.3], "psnr-rgb": [30.0]}, "models": [{"checkpoint": "f.pt"}]}
    (tmp_path / "float.json").write_text(json.dumps(result))
    status = main(["plot", str(tmp_path / "float.json"), "--bits", "-o", str(tmp_path / "fig")])
    assert status == 2 and "no per-layer bits" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["float.json"]


def test_checkpoint_messages_say_what_is_wrong(tmp_path):
    from dynaquant_brevitas.io.checkpoint import CheckpointError

    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    torch.save({"state_dict": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="holds Python objects other than tensors"):
        load_model(tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="is a folder"):
        load_model(tmp_path)


# --------------------------------------------------------------------------- images


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :10] = 255  # a white band on the left of a landscape image
    exif = Image.Exif()
    exif[0x0112] = 6  # viewers rotate it 90 degrees clockwise
    Image.fromarray(pixels).save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    x = read_image_uint8(tmp_path / "rotated.jpg")
    assert tuple(x.shape[1:]) == (40, 20)  # portrait, as shown
    assert x[:, :10, :].float().mean() > 200  # the band is now at the top


def test_icc_profiles_are_converted_or_warned_about(tmp_path):
    pixels = np.full((8, 8, 3), 128, np.uint8)
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.fromarray(pixels).save(tmp_path / "srgb.png", icc_profile=srgb)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert abs(int(read_image_uint8(tmp_path / "srgb.png")[0, 0, 0]) - 128) <= 1
    Image.fromarray(pixels).save(tmp_path / "broken.png", icc_profile=b"not a profile")
    with pytest.warns(UserWarning, match="ICC colour profile cannot be applied"):
        read_image_uint8(tmp_path / "broken.png")


@pytest.mark.parametrize("arch", ["elic2022-official", "elic2022-chandelier"])
def test_a_plain_elic_state_dict_with_its_own_channel_groups_loads(arch, tmp_path):
    """CompressAI's from_state_dict sizes ELIC by N alone; M and the groups come from the tensors."""
    from compressai.registry import MODELS

    from dynaquant_brevitas.io.checkpoint import load_any, model_from_checkpoint, state_dict_fingerprint

    torch.manual_seed(0)
    model = MODELS[arch](N=8, M=48, groups=[8, 4, 8, 12, 16])
    torch.save(model.state_dict(), tmp_path / "elic.pth")
    ckpt = load_any(tmp_path / "elic.pth", arch=arch)
    assert ckpt["model_kwargs"] == {"N": 8, "M": 48, "groups": [8, 4, 8, 12, 16]}
    assert state_dict_fingerprint(model_from_checkpoint(ckpt)) == state_dict_fingerprint(model)
