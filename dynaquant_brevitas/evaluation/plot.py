"""Figures: rate-distortion curves and per-image, per-layer bit-width heat maps (PNG and PDF).

Example:
    >>> import tempfile
    >>> ours = {"name": "ours", "results": {"bpp": [0.3, 0.5], "psnr-rgb": [28.0, 30.0]}}
    >>> paths = plot_rd([ours], tempfile.mkdtemp() + "/rd")
    >>> sorted(p.suffix for p in paths)
    ['.pdf', '.png']
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from ..io.files import write_atomic
from .metrics import MetricError, curve

FORMATS = ("png", "pdf")
AXIS_LABELS = {"psnr": "PSNR RGB [dB]", "ms-ssim": "MS-SSIM RGB [dB]"}


def _save(fig: Any, base: str | os.PathLike) -> list[Path]:
    base = Path(base)
    base.parent.mkdir(parents=True, exist_ok=True)
    paths = [base.with_name(f"{base.name}.{ext}") for ext in FORMATS]
    for path, ext in zip(paths, FORMATS):
        write_atomic(path, lambda f, ext=ext: fig.savefig(f, format=ext, bbox_inches="tight", dpi=150))
    return paths


def plot_rd(
    results: Sequence[Mapping[str, Any]],
    output: str | os.PathLike,
    metric: str = "psnr",
    references: Sequence[Mapping[str, Any]] = (),
    title: str | None = None,
    zoom: bool = False,
) -> list[Path]:
    """Rate-distortion curves of ``results`` (solid, markers) over ``references`` (dashed).

    Each entry is a CompressAI-format result dict; writes ``output.png`` and ``output.pdf``.
    ``zoom`` limits the axes to the span of ``results`` (references wider than that are cut).
    """
    fig = Figure(figsize=(6.4, 4.8))
    ax = fig.subplots()
    for style, group in (("--", references), ("-o", results)):
        for res in group:
            rate, dist = curve(res, metric)
            order = np.argsort(rate)
            ax.plot(
                np.asarray(rate)[order],
                np.asarray(dist)[order],
                style,
                label=res.get("name", "?"),
                markersize=4,
                linewidth=1.2 if style == "--" else 1.8,
            )
    if zoom and results:
        rates, dists = zip(*(curve(res, metric) for res in results))
        rates, dists = [r for rs in rates for r in rs], [d for ds in dists for d in ds]
        pad_r, pad_d = 0.15 * (max(rates) - min(rates) or 1.0), 0.15 * (max(dists) - min(dists) or 1.0)
        ax.set_xlim(min(rates) - pad_r, max(rates) + pad_r)
        ax.set_ylim(min(dists) - pad_d, max(dists) + pad_d)
    ax.set_xlabel("bits per pixel")
    ax.set_ylabel(AXIS_LABELS[metric])
    ax.set_title(title or f"Rate-distortion ({metric})")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, output)


def bit_matrix(result: Mapping[str, Any], model_index: int = 0) -> tuple[np.ndarray, list[str], list[str]]:
    """``(bits[image, layer], image names, layer names)`` from an eval JSON made with ``--per-image``."""
    models = result.get("models") or []
    if not models or model_index >= len(models):
        raise MetricError(f"result has {len(models)} model entries, no index {model_index}")
    entry = models[model_index]
    rows = [r for r in entry.get("per_image", []) if "layer_bits" in r]
    if not rows or "layers" not in entry:
        raise MetricError("no per-layer bits: evaluate a dynaquantized model with --per-image")
    return (
        np.array([r["layer_bits"] for r in rows], dtype=float),
        [r["image"] for r in rows],
        list(entry["layers"]),
    )


def plot_bit_heatmap(
    result: Mapping[str, Any], output: str | os.PathLike, model_index: int = 0
) -> list[Path]:
    """Heat map of the bit width chosen for every image (rows) and dynamic layer (columns)."""
    bits, images, layers = bit_matrix(result, model_index)
    fig = Figure(figsize=(1.2 + 0.45 * len(layers), 1.2 + 0.25 * len(images)))
    ax = fig.subplots()
    im = ax.imshow(bits, aspect="auto", cmap="viridis", interpolation="nearest")
    if bits.size <= 40 * 40:  # small enough to print every value
        for (i, j), value in np.ndenumerate(bits):
            ax.text(
                j,
                i,
                f"{value:g}",
                ha="center",
                va="center",
                fontsize=6,
                color="w" if value < bits.max() else "k",
            )
    ax.set_xticks(range(len(layers)), layers, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(images)), images, fontsize=7)
    ax.set_xlabel("layer")
    ax.set_ylabel("image")
    rows = [tuple(row) for row in bits.tolist()]
    common = max(set(rows), key=rows.count) if rows else ()
    differ = sum(row != common for row in rows)
    ax.set_title(f"Chosen bit widths ({result.get('name', '')}, mean {bits.mean():.2f}; "
                 f"{differ} of {len(rows)} images off the most common profile)", fontsize=8)
    fig.colorbar(im, ax=ax, label="bits")
    return _save(fig, output)


def plot_sensitivity(sens: Any, output: str | os.PathLike) -> list[Path]:
    """Heat map of a :class:`~dynaquant_brevitas.transform.sensitivity.Sensitivity`: rows are layers'
    weights (``w``) and inputs (``a``), columns widths, values the RD-cost increase in percent of
    the float model's (log colour scale)."""
    from matplotlib.colors import SymLogNorm

    from ..transform.sensitivity import heatmap_rows

    rows, columns, values = heatmap_rows(sens)
    data = np.array(values, dtype=float)
    fig = Figure(figsize=(1.6 + 0.7 * len(columns), 1.0 + 0.22 * len(rows)))
    ax = fig.subplots()
    im = ax.imshow(data, aspect="auto", cmap="magma_r", norm=SymLogNorm(linthresh=0.1, vmin=0, vmax=max(1.0, np.nanmax(data))))
    for (i, j), value in np.ndenumerate(data):
        if np.isfinite(value):
            ax.text(j, i, f"{value:.2g}", ha="center", va="center", fontsize=6, color="white" if value > 10 else "black")
    ax.set_xticks(range(len(columns)), [f"{c} bits" for c in columns])
    ax.set_yticks(range(len(rows)), rows, fontsize=7)
    ax.set_title("RD-cost increase when only this quantizer is on [%]", fontsize=9)
    fig.colorbar(im, ax=ax, label="% of the float RD cost")
    return _save(fig, output)
