"""The demo end to end on a tiny float checkpoint (the real one runs in `make demo`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dynaquant_brevitas.cli.demo_job import DemoError, find_reference
from dynaquant_brevitas.training import TrainConfig, train

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_float_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("float")
    cfg = TrainConfig.from_dict(
        {
            "model": {"arch": "bmshj2018-hyperprior", "N": 8, "M": 12},
            "data": {"root": "../shared/data/train", "patch_size": 64, "batch_size": 2},
            "train": {"steps": 2, "output": str(out), "checkpoint_every": 2, "progress": False},
        }
    )
    train(cfg)
    return out / "last.pt"


def test_demo_command_writes_table_plots_and_summary(tiny_float_checkpoint, tmp_path):
    output = tmp_path / "demo"
    done = subprocess.run(
        [sys.executable, "-m", "dynaquant_brevitas", "demo", "--checkpoint", str(tiny_float_checkpoint),
         "-o", str(output), "--minutes", "0.5", "--steps", "2"],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "dynaquant" in done.stdout and "PSNR" in done.stdout
    summary = json.loads((output / "summary.json").read_text())
    names = [row["model"] for row in summary["rows"]]
    assert names == ["float", "dynaquant"]
    assert summary["rows"][0]["avg_bits"] == 32.0 and summary["rows"][1]["avg_bits"] < 32.0
    for figure in ("rd.png", "rd.pdf", "bits.png", "bits.pdf"):
        assert (output / figure).stat().st_size > 0
    assert len(list((output / "images").glob("*.png"))) == 6


def test_missing_reference_is_a_clear_error(tmp_path):
    with pytest.raises(DemoError, match="--checkpoint"):
        find_reference(tmp_path)


def test_the_default_reference_is_the_hyperprior_at_quality_4():
    """Among the committed family the demo takes ScaleHyperprior q4, not the first file by name."""
    assert find_reference(REPO / "checkpoints" / "reference").name == "bmshj2018-hyperprior-N64-M96-q4.pt"
