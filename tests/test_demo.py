"""The demo end to end on tiny settings (the full one runs in `make demo`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dynaquant_brevitas.cli.demo_job import DemoError, compare_rows, find_reference, run_demo

REPO = Path(__file__).resolve().parents[1]
KODAK = REPO.parent / "shared" / "data" / "kodak"


@pytest.mark.skipif(not KODAK.is_dir(), reason="needs ../shared/data/kodak")
def test_demo_command_writes_tables_figures_and_summary(tmp_path):
    output = tmp_path / "demo"
    done = subprocess.run(
        [sys.executable, "-m", "dynaquant_brevitas", "demo", "-o", str(output), "--kodak-images", "1",
         "--unusual-size", "64", "--ptq-crops", "1"],
        capture_output=True, text=True, timeout=900, cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    for text in ("DynaQuant int8", "PTQ int8, live", "unusual", "dynamic"):
        assert text in done.stdout
    summary = json.loads((output / "summary.json").read_text())
    names = [row["model"] for row in summary["rows"]]
    assert names == ["float", "DynaQuant int8", "PTQ int8", "mixed W5.5A8"]
    assert summary["rows"][0]["bd_rate_pct"] is None and summary["rows"][0]["weight_bits"] == 32.0
    assert summary["rows"][1]["weight_bits"] == 8.0 and summary["rows"][3]["weight_bits"] < 6.0
    assert {row["set"] for row in summary["robustness"]} == {"photos2", "unusual"}
    for figure in ("rd.png", "rd.pdf", "bits.png", "bits.pdf"):
        assert (output / figure).stat().st_size > 0


def test_committed_rows_compare_within_tolerance():
    committed = json.loads((REPO / "docs" / "demo" / "summary.json").read_text())["rows"]
    assert compare_rows(committed, committed) == []
    moved = [dict(committed[1], psnr_q4=committed[1]["psnr_q4"] + 0.1)]
    assert compare_rows(moved, committed) == [
        f"DynaQuant int8 psnr_q4: {moved[0]['psnr_q4']} here, {committed[1]['psnr_q4']} committed"]


def test_missing_checkpoints_and_images_are_clear_errors(tmp_path):
    with pytest.raises(DemoError, match="reference checkpoint"):
        find_reference(tmp_path)
    with pytest.raises(DemoError, match="--kodak-images"):
        run_demo(tmp_path / "out", kodak_images=7)
    with pytest.raises(DemoError, match="pass --kodak"):
        run_demo(tmp_path / "out", checkpoints=REPO / "checkpoints", kodak=tmp_path)


def test_a_second_demo_into_the_same_folder_is_refused(tmp_path):
    from dynaquant_brevitas.io.files import LockedError, folder_lock

    with folder_lock(tmp_path), pytest.raises(LockedError, match="in use"):
        run_demo(tmp_path, checkpoints=REPO / "checkpoints")
