"""Image quality metrics and Bjontegaard deltas between rate-distortion curves.

Example:
    >>> import torch
    >>> x = torch.zeros(1, 3, 8, 8); y = x + 0.1
    >>> round(psnr(x, y), 2)
    20.0
    >>> anchor = ([0.2, 0.4, 0.8, 1.6], [28.0, 31.0, 34.0, 37.0])
    >>> round(bd_rate(*anchor, *anchor), 6)
    0.0
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from pytorch_msssim import ms_ssim as _ms_ssim

#: CompressAI's JSON key of each distortion metric.
METRIC_KEYS = {"psnr": "psnr-rgb", "ms-ssim": "ms-ssim-rgb"}


class MetricError(ValueError):
    """Curves cannot be compared (too few points, no overlap, unknown metric)."""


def mse(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean squared error between two images on the same scale."""
    return torch.mean((a.double() - b.double()) ** 2).item()


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB (``inf`` for identical images)."""
    err = mse(a, b)
    return math.inf if err == 0 else 10 * math.log10(data_range**2 / err)


def ms_ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> float:
    """Multi-scale SSIM (pytorch_msssim) of two ``(N, 3, H, W)`` images; needs H, W > 160."""
    return _ms_ssim(a.float(), b.float(), data_range=data_range).item()


def ms_ssim_db(value: float) -> float:
    """MS-SSIM on the usual ``-10 log10(1 - ms_ssim)`` dB scale."""
    return -10 * math.log10(max(1 - value, 1e-12))


def _sorted_curve(rate: Sequence[float], dist: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    rate, dist = np.asarray(rate, float), np.asarray(dist, float)
    if rate.shape != dist.shape or rate.ndim != 1:
        raise MetricError(
            f"rate and distortion must be 1-D of equal length, got {rate.shape} and {dist.shape}"
        )
    if len(rate) < 4:
        raise MetricError(f"BD-rate needs at least 4 rate-distortion points per curve, got {len(rate)}")
    order = np.argsort(rate)
    return rate[order], dist[order]


def bd_rate(
    rate_anchor: Sequence[float],
    dist_anchor: Sequence[float],
    rate_test: Sequence[float],
    dist_test: Sequence[float],
    method: str = "akima",
) -> float:
    """Bjontegaard-delta rate in percent of ``test`` against ``anchor`` (positive: test needs more bits).

    Uses the ``bjontegaard`` package with Akima interpolation; curves may have different numbers
    of points. When the curves' quality ranges overlap by less than :data:`MIN_OVERLAP` of their
    union, the value rests on part of the curves: a :class:`BDRateWarning` says by how much
    (:func:`quality_overlap` gives the fraction).
    """
    ra, da = _sorted_curve(rate_anchor, dist_anchor)
    rt, dt = _sorted_curve(rate_test, dist_test)
    import bjontegaard

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # reported below in our own words
        try:
            value = bjontegaard.bd_rate(ra, da, rt, dt, method=method, require_matching_points=False, min_overlap=0)
        except (ValueError, AssertionError) as err:
            raise MetricError(f"cannot compute BD-rate: {err}") from err
    if not np.isfinite(value):
        raise MetricError("BD-rate is not finite: the curves' quality ranges do not overlap")
    overlap = quality_overlap(dist_anchor, dist_test)
    if overlap < MIN_OVERLAP:
        warnings.warn(
            f"BD-rate over {overlap:.0%} of the curves' joint quality range (less than {MIN_OVERLAP:.0%}): "
            "it describes part of the curves only",
            BDRateWarning,
            stacklevel=2,
        )
    return float(value)


#: the share of the joint quality range below which a BD-rate is reported with a warning
MIN_OVERLAP = 0.75


class BDRateWarning(UserWarning):
    """A BD-rate computed over a small part of the curves' quality range."""


def quality_overlap(dist_anchor: Sequence[float], dist_test: Sequence[float]) -> float:
    """The shared part of two curves' quality ranges, as a fraction of their union (1: the same range).

    Example:
        >>> quality_overlap([30, 32, 34, 36], [31, 33, 35, 37])
        0.7142857142857143
    """
    low, high = max(min(dist_anchor), min(dist_test)), min(max(dist_anchor), max(dist_test))
    total = max(max(dist_anchor), max(dist_test)) - min(min(dist_anchor), min(dist_test))
    return max(high - low, 0.0) / total if total > 0 else 1.0


def rate_difference_at_quality(
    rate_anchor: Sequence[float], dist_anchor: Sequence[float], rate: float, dist: float
) -> float:
    """Rate change in percent of one point against an anchor curve at equal quality.

    The single-point counterpart of BD-rate: the anchor's log-rate is interpolated linearly
    in quality. Raises :class:`MetricError` if ``dist`` lies outside the anchor's range.

    >>> round(rate_difference_at_quality([1.0, 2.0], [30.0, 32.0], 1.0, 30.0), 6)
    0.0
    """
    ra, da = np.asarray(rate_anchor, float), np.asarray(dist_anchor, float)
    order = np.argsort(da)
    ra, da = ra[order], da[order]
    if not da[0] <= dist <= da[-1]:
        raise MetricError(f"quality {dist:.3f} is outside the anchor's range [{da[0]:.3f}, {da[-1]:.3f}]")
    anchor_rate = math.exp(np.interp(dist, da, np.log(ra)))
    return 100.0 * (rate / anchor_rate - 1.0)


def load_results(path: str | os.PathLike) -> dict[str, Any]:
    """A CompressAI-format result JSON (``name``, ``description``, ``results``)."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise MetricError(f"cannot read results {path}: {err}") from err
    if not isinstance(data, dict) or "results" not in data or "bpp" not in data["results"]:
        raise MetricError(f"{path} is not a CompressAI result file (no results.bpp)")
    return data


def curve(results: dict[str, Any], metric: str = "psnr") -> tuple[list[float], list[float]]:
    """``(bpp, quality)`` lists of a result dict for ``metric`` in ``psnr`` / ``ms-ssim``."""
    if metric not in METRIC_KEYS:
        raise MetricError(f"unknown metric {metric!r}; choose from {sorted(METRIC_KEYS)}")
    res = results["results"]
    key = METRIC_KEYS[metric]
    if key not in res:
        raise MetricError(f"results {results.get('name', '?')!r} have no {key!r}")
    rate, dist = res["bpp"], res[key]
    rate, dist = (rate, dist) if isinstance(rate, list) else ([rate], [dist])
    if metric == "ms-ssim":
        dist = [ms_ssim_db(v) for v in dist]
    return list(map(float, rate)), list(map(float, dist))
