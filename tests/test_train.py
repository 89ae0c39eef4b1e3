"""Training: the loss goes down, resume is exact, checkpoints survive SIGKILL, DDP runs, QAT works."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from workflow_helpers import TRAIN_DIR, float_run, quant_run, tiny_config  # noqa: F401  (fixtures)

from dynaquant_brevitas.io.checkpoint import load_checkpoint, load_model, model_from_checkpoint
from dynaquant_brevitas.io.images import ImageFolderCrops
from dynaquant_brevitas.training import ConfigError, GammaController, TrainConfig, rd_loss, train

REPO = Path(__file__).resolve().parents[1]


def _fixed_batch_loss(model: torch.nn.Module, lmbda: float = 0.013) -> float:
    torch.manual_seed(123)
    ds = ImageFolderCrops(TRAIN_DIR, patch_size=64)
    x = torch.stack([ds[i] for i in range(4)])
    model.eval()
    with torch.no_grad():
        return float(rd_loss(model(x), x, lmbda)["loss"])


def test_training_lowers_the_loss(float_run: Path) -> None:
    ckpt = load_checkpoint(float_run / "last.pt")
    assert ckpt["step"] == 30
    trained = model_from_checkpoint(ckpt)
    torch.manual_seed(0)  # train() initialises the model from seed 0
    untrained = model_from_checkpoint(
        {**ckpt, "state_dict": type(trained)(**ckpt["model_kwargs"]).state_dict()}
    )
    assert _fixed_batch_loss(trained) < 0.8 * _fixed_batch_loss(untrained)


def test_resume_continues_with_identical_state(tmp_path: Path) -> None:
    full = train(tiny_config(tmp_path / "full", steps=6))
    train(tiny_config(tmp_path / "part", steps=6), stop_at=3)
    assert load_checkpoint(tmp_path / "part" / "last.pt")["step"] == 3
    resumed = train(tiny_config(tmp_path / "part", steps=6), resume=True)
    a, b = load_checkpoint(full["checkpoint"]), load_checkpoint(resumed["checkpoint"])
    assert a["step"] == b["step"] == 6
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    for name in ("main", "aux"):
        for sa, sb in zip(
            a["optimizers"][name]["state"].values(), b["optimizers"][name]["state"].values(), strict=True
        ):
            assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a["scheduler"] == b["scheduler"]
    assert torch.equal(a["rng"][0]["torch"], b["rng"][0]["torch"])


def test_resume_refuses_a_finished_run(float_run: Path) -> None:
    with pytest.raises(ConfigError, match="nothing to do"):
        train(tiny_config(float_run, steps=30), resume=True)


SAVER = textwrap.dedent(
    """
    import importlib.util, sys, torch
    # io/files.py alone (no package import), so the subprocess starts quickly; save_atomic is
    # torch.save through its write_atomic
    spec = importlib.util.spec_from_file_location("files", sys.argv[2])
    files = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(files)
    for step in range(1, 1000):
        print("saving", step, flush=True)
        # ~40 MB, so that a save takes long enough to be killed half-way
        obj = {"step": step, "payload": torch.full((10_000_000,), float(step))}
        files.write_atomic(sys.argv[1], lambda f: torch.save(obj, f))
    """
)


@pytest.mark.parametrize("kill_during_save", [2, 3])
def test_checkpoint_on_disk_is_complete_after_sigkill(tmp_path: Path, kill_during_save: int) -> None:
    path = tmp_path / "last.pt"
    module = REPO / "dynaquant_brevitas" / "io" / "files.py"
    proc = subprocess.Popen(
        [sys.executable, "-c", SAVER, str(path), str(module)], stdout=subprocess.PIPE, text=True
    )
    try:
        while (line := proc.stdout.readline()).split() != ["saving", str(kill_during_save)]:
            assert line, "the saving process ended early"
        time.sleep(0.005 * kill_during_save)  # inside torch.save / fsync of that save
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    ckpt = torch.load(path, weights_only=False)  # the previous (or this) complete checkpoint
    assert ckpt["step"] in (kill_during_save - 1, kill_during_save)
    assert ckpt["payload"].numel() == 10_000_000
    assert bool((ckpt["payload"] == float(ckpt["step"])).all())
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "last.pt"]
    assert all(name.startswith(".last.pt.") and name.endswith(".tmp") for name in leftovers)


def test_ddp_two_gloo_processes_run_two_steps(tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "dynaquant_brevitas",
        "train",
        "--arch",
        "bmshj2018-factorized",
        "--set",
        "model.N=8",
        "--set",
        "model.M=12",
        "--set",
        "data.patch_size=64",
        "--set",
        "data.batch_size=2",
        "--data",
        str(TRAIN_DIR),
        "--steps",
        "2",
        "--output",
        str(out),
        "--device",
        "cpu",
        "--no-progress",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["step"] == 2 and ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2
    # each rank drew different crops, so their RNG states differ
    assert not torch.equal(ckpt["rng"][0]["torch"], ckpt["rng"][1]["torch"])
    load_model(out / "final.pt")


def test_quantization_aware_finetuning(quant_run: Path) -> None:
    ckpt = load_checkpoint(quant_run / "last.pt")
    assert ckpt["dynaquant"]["candidate_bits"] == [4, 6, 8]
    assert ckpt["controller"]["avg_bits"] is not None
    model = model_from_checkpoint(ckpt)
    out = model(torch.rand(1, 3, 64, 64))
    assert set(out["bits"]["bits"].flatten().tolist()) <= {4, 6, 8}
    lines = (quant_run / "log.jsonl").read_text().splitlines()
    assert len(lines) == 4 and '"avg_bits"' in lines[-1] and '"gamma"' in lines[-1]


def test_gamma_controller_settles_within_a_tenth_of_a_bit() -> None:
    # A plant in which a larger bit penalty lowers the chosen bits (as training does).
    controller = GammaController(target=6.0, gamma0=0.0, kp=0.05, ki=0.002)
    bits = 8.0
    for _ in range(3000):
        gamma = controller.update(bits)
        bits += 0.05 * ((8.0 - 3.0 * gamma) - bits)  # bits relax towards 8 - 3 gamma
    assert abs(bits - 6.0) < 0.1


def test_config_rejects_unknown_keys_and_bad_values(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown key"):
        TrainConfig.from_dict({"train": {"learning_rate": 1}})
    with pytest.raises(ConfigError, match="metric"):
        TrainConfig.from_dict({"train": {"metric": "l1"}})
    with pytest.raises(ConfigError, match="quant.target_bits"):
        TrainConfig.from_dict({"quant": {"config": {"candidate_bits": [6, 8]}, "target_bits": 12}})
    cfg = TrainConfig.from_dict({"model": {"arch": "bmshj2018-factorized", "N": 8, "M": 12}})
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_init_from_a_related_architecture_copies_matching_tensors(float_run: Path) -> None:
    from dynaquant_brevitas.training import build_float_model

    source = load_checkpoint(float_run / "final.pt")["state_dict"]
    cfg = tiny_config(
        float_run / "unused",
        train={"init_from": str(float_run / "final.pt"), "init_partial": True},
        model={"arch": "bmshj2018-factorized-relu"},
    )
    model, arch, kwargs = build_float_model(cfg)
    assert type(model).__name__ == "FactorizedPriorReLU" and arch == "bmshj2018-factorized-relu"
    assert torch.equal(model.state_dict()["g_s.6.weight"], source["g_s.6.weight"])


def test_init_from_a_plain_compressai_state_dict(float_run: Path, tmp_path: Path) -> None:
    """Users fine-tune their own CompressAI weights: nested and DataParallel-prefixed state dicts."""
    from dynaquant_brevitas.training import build_float_model

    source = load_checkpoint(float_run / "final.pt")["state_dict"]
    path = tmp_path / "theirs.pth.tar"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in source.items()}}, path)
    model, arch, kwargs = build_float_model(tiny_config(tmp_path / "unused", train={"init_from": str(path)}))
    assert arch == "bmshj2018-hyperprior" and kwargs == {"N": 8, "M": 12}
    assert model.training and torch.equal(model.state_dict()["g_a.0.weight"], source["g_a.0.weight"])


def test_resume_from_an_explicit_checkpoint_into_a_new_directory(tmp_path: Path) -> None:
    train(tiny_config(tmp_path / "a", steps=4), stop_at=2)
    summary = train(tiny_config(tmp_path / "b", steps=4), resume=tmp_path / "a" / "last.pt")
    assert summary["step"] == 4 and (tmp_path / "b" / "final.pt").exists()
    with pytest.raises(ConfigError, match="weights only"):
        train(tiny_config(tmp_path / "c", steps=8), resume=tmp_path / "b" / "final.pt")


def test_gamma_controller_does_not_wind_up_below_zero() -> None:
    controller = GammaController(target=7.0, gamma0=0.0, kp=0.05, ki=0.002)
    for _ in range(2000):  # far below target for a long time: gamma stays 0 without debt
        assert controller.update(5.0) == 0.0
    steps = 0
    while controller.update(8.0) == 0.0:  # then above target: gamma reacts within the EMA's lag
        steps += 1
    assert steps < 20


def test_ms_ssim_training_runs(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, steps=1, train={"metric": "ms-ssim", "lmbda": 10.0}, data={"patch_size": 192})
    summary = train(cfg)
    assert 0 < summary["logs"]["ms_ssim"] <= 1
    with pytest.raises(ConfigError, match="MS-SSIM"):
        tiny_config(tmp_path, train={"metric": "ms-ssim"})


def test_checkpoints_hold_only_tensors_and_plain_data(float_run: Path, tmp_path: Path) -> None:
    from dynaquant_brevitas.io.checkpoint import CheckpointError, save_atomic

    ckpt = torch.load(float_run / "last.pt", weights_only=True)  # the full resume checkpoint
    assert {"optimizers", "scheduler", "rng", "state_dict", "arch", "model_kwargs"} <= set(ckpt)
    save_atomic({"format": "dynaquant-checkpoint", "evil": GammaController(6, 0, 0, 0)}, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="not unpickling"):
        load_checkpoint(tmp_path / "x.pt")


def test_atomic_save_keeps_the_usual_file_mode(tmp_path: Path) -> None:
    from dynaquant_brevitas.io.checkpoint import save_atomic

    (tmp_path / "plain").write_bytes(b"")
    save_atomic({"x": 1}, tmp_path / "ckpt.pt")
    assert (tmp_path / "ckpt.pt").stat().st_mode == (tmp_path / "plain").stat().st_mode


def test_time_limit_stops_with_a_checkpoint(tmp_path: Path) -> None:
    summary = train(tiny_config(tmp_path, steps=10_000), time_limit_s=1e-9)
    assert summary["step"] == 1 and "final" not in summary
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 1


def test_static_mixed_profile_trains_frozen_and_reloads(tmp_path: Path) -> None:
    from dynaquant_brevitas import load_model

    profile = {name: [4, 8] for name in ("g_a.2", "g_a.4", "g_a.6", "g_s.2", "g_s.4", "g_s.6")}
    profile["h_s.4"] = 6  # a fixed layer may be set too
    out = tmp_path / "mixed"
    cfg = tiny_config(out, steps=2, quant={"config": {"weight_bits": [4, 8], "activation_bits": [8], "calibration_batches": 1},
                                           "profile": profile})
    train(cfg)
    model = load_model(out / "final.pt")
    assert not hasattr(model, "dynaquant")
    assert model.dynaquant_profile["g_a.2"] == [4, 8] and model.dynaquant_profile["h_s.4"] == 6
    assert model.get_submodule("g_s.4").widths == (4, 8)


def test_ptq_init_quantizes_the_static_profile_before_training(tmp_path: Path) -> None:
    from compressai.models import ScaleHyperprior

    from dynaquant_brevitas.training.loop import dynaquant_prepare

    profile = {name: [4, 8] for name in ("g_a.2", "g_a.4", "g_a.6", "g_s.2", "g_s.4", "g_s.6")}
    quant = {"config": {"weight_bits": [4, 8], "activation_bits": [8], "calibration_batches": 2},
             "profile": profile, "init": "ptq"}
    cfg = tiny_config(tmp_path / "ptq", steps=2, quant=quant)
    torch.manual_seed(0)
    model = dynaquant_prepare(ScaleHyperprior(8, 12), cfg, iter([torch.rand(2, 3, 64, 64) for _ in range(2)]))
    assert [r["layer"] for r in model.ptq_report][:2] == ["g_a.0", "g_a.2"] and len(model.ptq_report) == 14
    assert model.get_submodule("g_a.2").widths == (4, 8) and model.get_submodule("g_a.0").widths == (8, 8)
    train(cfg)  # and through the loop, resumable like any static run
    assert (tmp_path / "ptq" / "final.pt").exists()
    with pytest.raises(ConfigError, match="quant.init: ptq needs a static model"):
        tiny_config(tmp_path / "x", quant=dict(quant, profile=None))
    with pytest.raises(ConfigError, match="quant.init must be one of"):
        tiny_config(tmp_path / "x", quant=dict(quant, init="percentile"))


def test_training_around_a_static_model_starts_at_its_profile_and_reloads(tmp_path: Path) -> None:
    """``prepare`` may hand the loop a static model made dynamic around its profile (widened by a
    width outside the candidates): the selectors start at the profile, the checkpoint stores the
    widened configuration, and the run resumes and reloads."""
    from compressai.models import ScaleHyperprior

    from dynaquant_brevitas import load_model
    from dynaquant_brevitas.transform import chosen_bits, unfreeze

    static_cfg = tiny_config(tmp_path / "static", steps=2, quant={
        "config": {"weight_bits": [4, 8], "activation_bits": [8], "calibration_batches": 1},
        "profile": {name: [4, 8] for name in ("g_a.2", "g_a.4", "g_a.6", "g_s.2", "g_s.4", "g_s.6")} | {"g_a.0": [5, 8]}})
    train(static_cfg)
    frozen = load_model(tmp_path / "static" / "final.pt")
    quant = {"config": {"weight_bits": [6, 8], "activation_bits": [8], "calibration_batches": 1},
             "bit_cost": "bitops", "target_bits": 6.0}
    cfg = tiny_config(tmp_path / "joint", steps=4, quant=quant)

    def prepare(model, cfg, batches):
        return unfreeze(frozen, model, cfg.dynaquant_config(), widen=True, prefer=30.0)

    start = prepare(ScaleHyperprior(8, 12), cfg, None)
    assert start.dynaquant.config.pairs == ((4, 8), (6, 8), (8, 8))  # widened by the profile's 4-bit weights
    layers, rows = chosen_bits(start, [torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64)])
    assert all(dict(zip(layers, row)) == {n: tuple(frozen.dynaquant_profile[n]) for n in layers} for row in rows)
    with pytest.raises(ValueError, match="logit margin"):
        unfreeze(frozen, ScaleHyperprior(8, 12), cfg.dynaquant_config(), widen=True, prefer=float("nan"))
    with pytest.raises(ValueError, match="one candidate index"):
        start.dynaquant.selectors["encoder"].start_at([0], 1.0)  # three layers on this side
    train(cfg, stop_at=2, prepare=prepare)
    train(cfg, resume=True, prepare=prepare)  # resumes into the widened model
    model = load_model(tmp_path / "joint" / "final.pt")
    assert model.dynaquant.config.pairs == ((4, 8), (6, 8), (8, 8))
    assert model.get_submodule("g_a.0").widths == (5, 8)  # a fixed layer keeps its frozen widths


@pytest.mark.parametrize("distill", [0.0, 1.0])
def test_quantization_aware_resume_is_exact_and_keeps_learning_the_ranges(float_run: Path, tmp_path: Path,
                                                                          distill: float) -> None:
    quant = {"config": {"candidate_bits": [4], "calibration_batches": 1}, "distill": distill}
    init = {"init_from": str(float_run / "final.pt")}
    full = train(tiny_config(tmp_path / "full", steps=4, train=init, quant=quant))
    train(tiny_config(tmp_path / "part", steps=4, train=init, quant=quant), stop_at=2)
    halfway = load_checkpoint(tmp_path / "part" / "last.pt")["state_dict"]
    resumed = train(tiny_config(tmp_path / "part", steps=4, train=init, quant=quant), resume=True)
    a, b = load_checkpoint(full["checkpoint"]), load_checkpoint(resumed["checkpoint"])
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    ranges = [key for key in halfway if key.endswith("tensor_quant.range")]
    assert ranges and all(not torch.equal(halfway[key], b["state_dict"][key]) for key in ranges)


def test_distillation_from_the_float_model_is_logged_and_leaves_the_random_stream(float_run: Path, tmp_path: Path) -> None:
    import json

    quant = {"config": {"candidate_bits": [4], "calibration_batches": 1}, "distill": 1.0}
    init = {"init_from": str(float_run / "final.pt")}
    train(tiny_config(tmp_path / "run", steps=2, train=init, quant=quant))
    logs = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    # 4-bit weights and inputs change both transforms: the student differs from its teacher
    assert all(entry["distill_analysis"] > 0 and entry["distill_synthesis"] > 0 for entry in logs)
    # building the teacher leaves the run's random stream alone: the first step sees what it would without
    plain = train(tiny_config(tmp_path / "plain", steps=1, train=init, quant=dict(quant, distill=0.0)))
    assert plain["logs"]["bpp"] == logs[0]["bpp"] and "distill_analysis" not in plain["logs"]
    with pytest.raises(ConfigError, match="quant.distill needs"):
        tiny_config(tmp_path / "x", quant=quant)
    with pytest.raises(ConfigError, match="quant.distill must be >= 0"):
        tiny_config(tmp_path / "x", train=init, quant=dict(quant, distill=-1.0))
