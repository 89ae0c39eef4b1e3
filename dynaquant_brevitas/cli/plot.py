"""``dynaquant plot``: RD curves (ours over CompressAI's references), BD-rates, bit-width heat maps."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "plot RD curves and per-layer bit-width heat maps from eval JSON files (PNG + PDF)"
DEFAULT_REFERENCE_DIR = Path("../shared/data/reference/compressai_kodak")

EPILOG = """examples:
  dynaquant plot benchmarks/results/ref.json --reference jpeg \\
      --reference compressai-bmshj2018-hyperprior_mse_cpu --anchor jpeg -o benchmarks/figures/rd
  dynaquant plot dynaquant-eval.json --bits -o benchmarks/figures/dq   (needs eval --per-image)
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "plot",
        help=HELP,
        description=HELP,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "results", nargs="+", type=Path, help="result JSON files (dynaquant eval or CompressAI format)"
    )
    p.add_argument(
        "-o", "--output", required=True, type=Path, help="output prefix: writes PREFIX-rd.png/.pdf, ..."
    )
    p.add_argument(
        "--reference",
        action="append",
        default=[],
        metavar="NAME|PATH",
        help="reference curve: a JSON path or a file name (without .json) in --reference-dir",
    )
    p.add_argument(
        "--reference-dir",
        type=Path,
        default=DEFAULT_REFERENCE_DIR,
        help="where reference names are looked up",
    )
    p.add_argument("--metric", choices=("psnr", "ms-ssim"), default="psnr", help="distortion axis")
    p.add_argument(
        "--anchor", metavar="NAME|PATH", help="print each curve's BD-rate (Akima) against this one"
    )
    p.add_argument(
        "--bits", action="store_true", help="also draw the per-image, per-layer bit-width heat map"
    )
    p.add_argument("--title", help="figure title")
    return p


def _reference_path(name: str, directory: Path) -> Path:
    path = Path(name)
    return path if path.suffix == ".json" or path.exists() else directory / f"{name}.json"


def _load_reference(name: str, directory: Path) -> dict:
    """A reference curve, named after its file when the file name says more (CompressAI's model files)."""
    from ..evaluation.metrics import load_results

    path = _reference_path(name, directory)
    result = load_results(path)
    if path.stem.lower() != str(result.get("name", "")).lower():
        result["name"] = path.stem
    return result


def bd_rate_line(anchor: dict, result: dict, metric: str) -> str:
    """One line: BD-rate (4+ points) or the single-point rate difference at equal quality."""
    import warnings

    from ..evaluation.metrics import BDRateWarning, MetricError, bd_rate, curve, quality_overlap, rate_difference_at_quality

    ra, da = curve(anchor, metric)
    rt, dt = curve(result, metric)
    name = result.get("name", "?")
    try:
        if len(rt) >= 4:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", BDRateWarning)
                value = bd_rate(ra, da, rt, dt)
            note = f" (over {quality_overlap(da, dt):.0%} of the joint quality range)" if caught else ""
            return f"{name}: BD-rate {value:+.2f} % vs {anchor.get('name')}{note}"
        diffs = ", ".join(
            f"{rate_difference_at_quality(ra, da, r, d):+.2f} %" for r, d in zip(rt, dt, strict=True)
        )
        return (
            f"{name}: rate difference at equal {metric} {diffs} vs {anchor.get('name')} "
            "(fewer than 4 points: no BD-rate)"
        )
    except MetricError as err:
        return f"{name}: no BD-rate vs {anchor.get('name')}: {err}"


def run(args: argparse.Namespace) -> int:
    from ..evaluation.metrics import load_results
    from ..evaluation.plot import bit_matrix, plot_bit_heatmap, plot_rd

    results = [load_results(p) for p in args.results]
    references = [_load_reference(r, args.reference_dir) for r in args.reference]
    anchor = _load_reference(args.anchor, args.reference_dir) if args.anchor else None
    if args.bits:  # every input checked before the first figure is written: no partial output
        for res in results:
            bit_matrix(res)
    written = plot_rd(results, f"{args.output}-rd", args.metric, references, args.title)
    if args.bits:
        for i, res in enumerate(results):
            suffix = "" if len(results) == 1 else f"-{i}"
            written += plot_bit_heatmap(res, f"{args.output}-bits{suffix}")
    if anchor is not None:
        for res in results + [r for r in references if r.get("name") != anchor.get("name")]:
            print(bd_rate_line(anchor, res, args.metric))
    for path in written:
        print(f"wrote {path}")
    return 0
