"""The ``dynaquant`` command line: subcommand registry, --help everywhere, config overrides, errors."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import yaml
from workflow_helpers import TINY_ARCH, TRAIN_DIR

from dynaquant_brevitas.cli import COMMANDS, load_commands, main
from dynaquant_brevitas.cli._common import UsageError, apply_overrides

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / ".." / "shared" / "data" / "reference" / "compressai_kodak"


def test_every_command_module_is_a_listed_command() -> None:
    helpers = {"__init__", "_common", "demo_job"}  # the parser, shared helpers, the demo's job
    modules = {p.stem for p in (REPO / "dynaquant_brevitas" / "cli").glob("*.py")} - helpers
    assert modules == set(COMMANDS) == set(load_commands())


@pytest.mark.parametrize("command", [c.replace("_", "-") for c in COMMANDS])
def test_help_of_every_subcommand(command: str, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    assert f"usage: dynaquant {command}" in capsys.readouterr().out


def test_top_level_help_lists_commands_via_python_m() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "dynaquant_brevitas", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0
    assert all(name.replace("_", "-") in proc.stdout for name in COMMANDS)


def test_overrides_are_typed_and_nested() -> None:
    cfg = apply_overrides(
        {"train": {"lr": 1e-3}},
        [
            "train.lr=3e-4",
            "quant.config.candidate_bits=[4, 6, 8]",
            "train.progress=false",
            "model.arch=mbt2018",
        ],
    )
    assert cfg == {
        "train": {"lr": 3e-4, "progress": False},
        "model": {"arch": "mbt2018"},
        "quant": {"config": {"candidate_bits": [4, 6, 8]}},
    }
    with pytest.raises(UsageError, match="KEY=VALUE"):
        apply_overrides({}, ["train.lr"])
    with pytest.raises(UsageError, match="not a section"):
        apply_overrides({"train": 3}, ["train.lr=1"])


def test_yaml_config_with_flags_and_set(tmp_path: Path) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model": dict(TINY_ARCH),
                "data": {"root": str(TRAIN_DIR), "patch_size": 64, "batch_size": 2},
                "train": {"steps": 100, "output": str(tmp_path / "ignored"), "progress": False},
            }
        )
    )
    out = tmp_path / "run"
    assert (
        main(["train", "-c", str(config), "--steps", "2", "--output", str(out), "--set", "train.lr=5e-4"])
        == 0
    )
    written = yaml.safe_load((out / "config.yaml").read_text())
    assert written["train"]["steps"] == 2 and written["train"]["lr"] == 5e-4 and written["model"]["N"] == 8


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--set", "train.bogus=1"], "unknown key"),
        (["train", "--arch", "no-such-model", "--steps", "1"], "unknown architecture"),
        (["train", "-c", "/nonexistent.yaml"], "cannot read config"),
        (["plot", "/nonexistent.json", "-o", "/tmp/x"], "cannot read results"),
    ],
)
def test_bad_input_is_a_clear_error_without_traceback(argv: list[str], message: str, capsys) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_plot_writes_png_and_pdf_and_bd_rates(tmp_path: Path, capsys) -> None:
    status = main(
        [
            "plot",
            str(REFERENCE / "compressai-bmshj2018-hyperprior_mse_cpu.json"),
            "--reference",
            "jpeg",
            "--reference-dir",
            str(REFERENCE),
            "--anchor",
            "jpeg",
            "-o",
            str(tmp_path / "fig"),
        ]
    )
    out = capsys.readouterr().out
    assert status == 0 and "BD-rate -" in out
    for suffix in ("png", "pdf"):
        assert (tmp_path / f"fig-rd.{suffix}").stat().st_size > 1000


def test_committed_configs_are_valid_and_their_paths_are_relative_to_them() -> None:
    from dynaquant_brevitas.cli._common import read_yaml
    from dynaquant_brevitas.training import TrainConfig
    from dynaquant_brevitas.training.config import paths_relative_to

    configs = sorted((REPO / "configs").glob("*/*.yaml"))
    assert len(configs) >= 5
    for path in configs:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no key of an earlier version
            cfg = TrainConfig.from_dict(paths_relative_to(read_yaml(path), path.parent))
        assert Path(cfg.train.output).is_relative_to(REPO / "runs"), path  # run outputs stay out of git
        assert Path(cfg.data.root).resolve() == (REPO.parent / "shared" / "data" / "train").resolve(), path
        assert cfg.train.init_from is None or Path(cfg.train.init_from).is_relative_to(REPO / "checkpoints"), path
