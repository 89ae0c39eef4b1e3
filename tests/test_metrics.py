"""Metrics: PSNR, MS-SSIM, BD-rate (Akima, via bjontegaard) on synthetic and published curves."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from dynaquant_brevitas.evaluation.metrics import (
    MetricError,
    bd_rate,
    curve,
    load_results,
    ms_ssim,
    ms_ssim_db,
    psnr,
    rate_difference_at_quality,
)

REFERENCE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "reference" / "compressai_kodak"
RATE = [0.1, 0.2, 0.4, 0.8, 1.6]
PSNR = [27.0, 29.5, 32.0, 34.5, 37.0]


def test_psnr_and_ms_ssim_known_values() -> None:
    x = torch.rand(1, 3, 192, 192)
    assert psnr(x, x) == math.inf
    assert psnr(x, (x + 0.01).clamp(max=10)) == pytest.approx(40.0, abs=1e-4)
    assert ms_ssim(x, x) == pytest.approx(1.0, abs=1e-6)
    assert ms_ssim(x, torch.rand(1, 3, 192, 192)) < 0.5
    assert ms_ssim_db(0.99) == pytest.approx(20.0)


def test_bd_rate_of_a_curve_against_itself_is_zero() -> None:
    assert bd_rate(RATE, PSNR, RATE, PSNR) == pytest.approx(0.0, abs=1e-9)


def test_bd_rate_of_a_worse_curve_is_positive_and_matches_the_rate_factor() -> None:
    worse = [r * 1.2 for r in RATE]  # 20 % more rate at every quality
    assert bd_rate(RATE, PSNR, worse, PSNR) == pytest.approx(20.0, abs=0.01)
    assert bd_rate(RATE, PSNR, RATE, [p - 0.5 for p in PSNR]) > 0
    assert bd_rate(RATE, PSNR, [r * 0.9 for r in RATE], PSNR) == pytest.approx(-10.0, abs=0.01)


def test_bd_rate_needs_enough_points() -> None:
    with pytest.raises(MetricError, match="at least 4"):
        bd_rate(RATE[:3], PSNR[:3], RATE, PSNR)


def test_published_curves_rank_as_expected() -> None:
    jpeg = curve(load_results(REFERENCE / "jpeg.json"))
    hyper = curve(load_results(REFERENCE / "compressai-bmshj2018-hyperprior_mse_cpu.json"))
    vtm = curve(load_results(REFERENCE / "vtm.json"))
    assert bd_rate(*jpeg, *hyper) < -30  # the hyperprior saves far more than a third against JPEG
    assert bd_rate(*hyper, *vtm) < 0  # VTM beats the 2018 hyperprior
    msssim = curve(load_results(REFERENCE / "jpeg.json"), "ms-ssim")
    assert all(5 < d < 30 for d in msssim[1]) and msssim[1] == sorted(msssim[1])


def test_single_point_rate_difference() -> None:
    assert rate_difference_at_quality(RATE, PSNR, 0.2 * 1.5, 29.5) == pytest.approx(50.0)
    with pytest.raises(MetricError, match="outside"):
        rate_difference_at_quality(RATE, PSNR, 1.0, 45.0)


def test_results_files_are_validated(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text('{"name": "x"}')
    with pytest.raises(MetricError, match="not a CompressAI result"):
        load_results(tmp_path / "bad.json")
    with pytest.raises(MetricError, match="cannot read"):
        load_results(tmp_path / "missing.json")
