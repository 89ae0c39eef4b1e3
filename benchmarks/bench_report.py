"""The comparison summary: one row per model and method from the cached runs, the merge with an
earlier summary, its markdown tables, the README table, the RD and Pareto figures.

Also imported by the documentation hook (``docs/hooks/generated.py``) to render the committed
``benchmarks/results/summary.json`` as a table, so the page and ``summary.md`` cannot differ.
"""

from __future__ import annotations

import json
import math
import re
import statistics
import warnings
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

#: the evaluation set whose fields carry no suffix (bits, sizes, the main BD-rate)
MAIN_SET = "kodak"

#: What each field of a summary row means and how it is measured (also written into summary.json).
FIELDS: Dict[str, str] = {
    "model": "the reference family the row was measured on: <arch>-<constructor arguments> of its float "
    "reference checkpoints (e.g. bmshj2018-hyperprior-N64-M96)",
    "method": "row name (benchmarks/bench_methods.py lists them)",
    "kind": "how the model is obtained: float, float-ft, dynaquant, brevitas, mixed, ptq or calibrated "
    "(bench_methods.Method)",
    "bd_rate_vs_float_pct": "Bjontegaard-delta rate in percent against the float reference curve on Kodak "
    "(dynaquant_brevitas.evaluation.metrics.bd_rate, Akima); positive means more bits at equal PSNR; the mean over "
    "seeds when several were run; null when either curve has fewer than 4 points (see bd_rate_reason)",
    "bd_rate_reason": "why bd_rate_vs_float_pct is null (null when it is a number)",
    "bd_rate_overlap": "share of the two curves' PSNR ranges that overlap (metrics.quality_overlap); the BD-rate "
    "extrapolates outside it",
    "bd_rate_warning": "metrics.BDRateWarning's message when the overlap is below 75 % (the BD-rate is then "
    "mostly extrapolation), else null",
    "bd_rate_vs_float_pct_<set>": "the same on a further evaluation set (e.g. _photos2: photographs never used "
    "for training or calibration, benchmarks/datasets.py), against the float model on that set; likewise "
    "bd_rate_reason_<set>, bd_rate_overlap_<set>, bd_rate_warning_<set>, rate_diff_at_equal_psnr_pct_<set> and "
    "per_quality_<set>",
    "bd_rate_vs_float_pct_std": "rows run with several seeds (--seeds): sample standard deviation of the BD-rate "
    "over seeds (each seed trained separately with train.seed); _per_seed gives each seed's value; the same "
    "suffixes exist per evaluation set (bd_rate_vs_float_pct_photos2_std, ...)",
    "seeds": "training seeds the row was run with; fields other than the BD-rates come from the first",
    "bd_rate_vs_float_finetuned_pct": "BD-rate in percent against the float reference fine-tuned in float with the "
    "same recipe (method float-finetuned): separates the cost of quantization from what the fine-tuning itself "
    "changes; null without that row or with fewer than 4 points",
    "rate_diff_at_equal_psnr_pct": "single-point fallback: mean over qualities of the rate difference at equal "
    "PSNR against the float curve (metrics.rate_difference_at_quality; needs >= 2 float points "
    "covering the PSNR), null otherwise",
    "per_quality": "per reference quality: bpp and PSNR from real bitstreams, and delta-bpp [%] / "
    "delta-PSNR [dB] against the float model of the same quality (same lambda)",
    "avg_weight_bits": "weight bits averaged over all parameters of the codec's conv/linear layers (float layers "
    "count 32; dynamic layers at their mean choice over the Kodak images), cost.average_bits' bits_per_param: "
    "what the model's size pays; mean over qualities",
    "avg_bits_per_param": "the same as avg_weight_bits (its earlier name)",
    "avg_activation_bits": "activation (input) bits of the conv/linear layers averaged over their MACs "
    "(cost.average_bits); mean over qualities",
    "avg_bits_bitops": "bit width b with b^2 x MACs = BitOPs (MACs x weight bits x activation bits per layer, "
    "MACs from cost.layer_macs at the evaluation image size): what the compute pays; mean over qualities",
    "avg_dynamic_layer_bits": "dynamic models: mean chosen bit width of the dynamic layers per image, from "
    "dynaquant_brevitas.evaluation (the paper's 'avg bits'); null for static models",
    "bitops_ratio": "BitOPs divided by 32 x 32 x MACs (float = 1)",
    "diversity_encoder": "dynamic models: share of the Kodak images whose encoder profile (the widths of every "
    "dynamic g_a layer) differs from the most common one (evaluation summary 'diversity'); mean over qualities",
    "diversity_decoder": "the same for the decoder (g_s)",
    "oracle_gain_pct": "dynamic models: what per-image adaptation could gain at most: the mean RD cost "
    "(estimated bpp + lambda 255^2 MSE) of the best single profile within the selector's own average cost over "
    "that of the per-image oracle at the single profile's cost, in percent (evaluation.oracle.oracle_bound; profiles: the most frequent "
    "per-image choices plus every candidate everywhere; Kodak, latency quality, first seed); 'oracle' holds the "
    "details and selector_rd, the selector's own RD cost",
    "selector_fit": "methods with refitted selectors (training.selector_fit), per quality: the bit price mu, the "
    "budget, and on the held-out crops of the choice table the mean RD-cost change from the base profile, mean "
    "bits and diversity of the fitted selectors ('dynamic'), of the best single profile ('static') and of the "
    "per-image oracle ('oracle'), under the table's additive model",
    "fit_gain_share": "the share of the oracle's gain over the best single profile that the fitted selectors take "
    "on held-out crops ((static - dynamic) / (static - oracle) of selector_fit), mean over qualities",
    "packed_size_vs_bits_pct": "packed_size_bytes over (avg_bits_per_param / 32) x the float model's packed size, "
    "minus 1, in percent (mean over qualities): what the parameters left in float32 and the file's header add",
    "packed_float32_bytes": "bytes of the packed file spent on float32 tensors (GDN/IGDN, biases, entropy models, "
    "per-channel scales and zero points, activation ranges), mean over qualities",
    "packed_size_bytes": "length of the packed file (dynaquant_brevitas.export.packing.pack_model): integer weights "
    "bit-packed at their widths, float32 per-channel scales (and zero points), every other parameter "
    "float32, header included; dynamic models frozen at each layer's most frequent choice; mean over qualities",
    "packed_size_all_candidates_bytes": "dynamic models: packed with every candidate's integer weights for the "
    "dynamic layers and the selectors (what per-image decoding needs without float weights)",
    "model_size_estimate_bytes": "cost.model_size_bytes, the estimate the packed size is compared with "
    "(dynamic models at the mean choice)",
    "encoder_latency_ms": "median time of g_a on one image (size in latency.input): float PyTorch for the float "
    "row, the frozen model exported with Brevitas export_onnx_qcdq and run by onnxruntime (CPU, "
    "ORT_ENABLE_ALL, 1 thread) for quantized rows; null with latency_reason when not measured",
    "decoder_latency_ms": "same for g_s, on the float encoder's latent of that image",
    "latency_reason": "why the row has no timings (--no-timing, or no evaluation image as large as the latency size)",
    "encoder_int8_speedup_vs_float": "float PyTorch g_a time over the integer-kernel graph's (the QCDQ graph with "
    "its convolution outputs quantized and calibrated, dynaquant_brevitas.export.ort_int8; kernel in "
    "latency.g_a_int8_kernel); null when onnxruntime fused no convolution (per-channel activation steps)",
    "decoder_int8_speedup_vs_float": "same for g_s",
    "int8_kernels": "integer convolutions onnxruntime ran in the integer-kernel graphs of g_a and g_s together",
    "encoder_latency_ratio_vs_float": "encoder_latency_ms over float PyTorch g_a timed in the same interleaved run",
    "decoder_latency_ratio_vs_float": "decoder_latency_ms over float PyTorch g_s timed in the same interleaved run",
    "latency": "all timed variants (torch_float, ort_float, ort_qcdq), the operators onnxruntime actually ran, "
    "integer kernels among them, export notes and errors against PyTorch",
    "train_step_ratio_vs_float": "median training step (train.train_step: forward, RD + bit loss, backward, "
    "optimiser steps) of the method over float, interleaved on the same batch; null without training",
    "train_seconds_per_quality": "wall time of the fine-tuning (or post-training quantization) runs, mean over "
    "qualities",
    "machine": "where latency and step times were measured (CPU, cores, threads, load average)",
    "run": "how the row was measured: command, date (UTC), mode and settings; a run of some methods "
    "(--methods) keeps the other rows of summary.json with their own",
}


# --------------------------------------------------------------------------- rate-distortion


def _float_curve(points: Mapping[int, Mapping[str, Any]]) -> Dict[str, List[float]]:
    qs = sorted(points)
    return {"quality": qs, "bpp": [points[q]["bpp"] for q in qs], "psnr": [points[q]["psnr"] for q in qs]}


def compare_to_float(float_points: Mapping[int, Mapping[str, Any]], points: Mapping[int, Mapping[str, Any]]) -> Dict[str, Any]:
    """BD-rate against float when both curves have 4 points; otherwise null, a reason, and per-quality deltas."""
    from dynaquant_brevitas.evaluation.metrics import (
        BDRateWarning, MetricError, bd_rate, quality_overlap, rate_difference_at_quality)

    anchor = _float_curve(float_points)
    per_quality = []
    single = []
    for q in sorted(points):
        p = points[q]
        row: Dict[str, Any] = {"quality": q, "lmbda": p.get("lmbda"), "bpp": p["bpp"], "psnr": p["psnr"],
                               "ms_ssim": p.get("ms_ssim"), "avg_dynamic_layer_bits": p.get("avg_dynamic_layer_bits")}
        f = float_points.get(q)
        row["delta_bpp_pct"] = 100.0 * (p["bpp"] / f["bpp"] - 1.0) if f else None
        row["delta_psnr_db"] = p["psnr"] - f["psnr"] if f else None
        row["rate_diff_at_equal_psnr_pct"] = None
        if len(anchor["bpp"]) >= 2:
            try:
                row["rate_diff_at_equal_psnr_pct"] = rate_difference_at_quality(anchor["bpp"], anchor["psnr"], p["bpp"], p["psnr"])
                single.append(row["rate_diff_at_equal_psnr_pct"])
            except MetricError:
                pass
        per_quality.append(row)
    out: Dict[str, Any] = {"per_quality": per_quality, "bd_rate_vs_float_pct": None, "bd_rate_reason": None,
                           "bd_rate_overlap": None, "bd_rate_warning": None,
                           "rate_diff_at_equal_psnr_pct": sum(single) / len(single) if single else None}
    n_float, n_method = len(anchor["bpp"]), len(points)
    if n_float < 4 or n_method < 4:
        out["bd_rate_reason"] = (
            f"BD-rate needs >= 4 rate-distortion points per curve; float has {n_float} "
            f"(qualities {anchor['quality']}), this method {n_method}: see per_quality for delta-bpp / "
            "delta-PSNR at equal lambda" + ("" if n_float >= 2 else " (no rate difference at equal PSNR "
                                            "either: that needs >= 2 float points)")
        )
        return out
    qs = sorted(points)
    psnr = [points[q]["psnr"] for q in qs]
    out["bd_rate_overlap"] = quality_overlap(anchor["psnr"], psnr)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", BDRateWarning)
            out["bd_rate_vs_float_pct"] = bd_rate(anchor["bpp"], anchor["psnr"], [points[q]["bpp"] for q in qs], psnr)
        out["bd_rate_warning"] = "; ".join(str(w.message) for w in caught if issubclass(w.category, BDRateWarning)) or None
    except MetricError as err:
        out["bd_rate_reason"] = str(err)
    return out


# --------------------------------------------------------------------------- summary


def _mean(values: Sequence[Optional[float]]) -> Optional[float]:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def field_name(base: str, set_name: str) -> str:
    """``base`` for Kodak, ``base_<set>`` for a further evaluation set."""
    return base if set_name == MAIN_SET else f"{base}_{set_name}"


def _set_fields(comparisons: Mapping[int, Mapping[str, Any]], seeds: Sequence[int], set_name: str,
                anchor: bool) -> Dict[str, Any]:
    """One evaluation set's BD-rate fields of a row, over the seeds that have the set."""
    first = comparisons[seeds[0]]
    name = lambda base: field_name(base, set_name)  # noqa: E731
    values = {seed: comparisons[seed]["bd_rate_vs_float_pct"] for seed in seeds}
    numbers = [v for v in values.values() if v is not None]
    out = {
        name("bd_rate_vs_float_pct"): sum(numbers) / len(numbers) if numbers else None,
        name("bd_rate_reason"): first["bd_rate_reason"],
        name("bd_rate_overlap"): first.get("bd_rate_overlap"),
        name("bd_rate_warning"): first.get("bd_rate_warning"),
        name("rate_diff_at_equal_psnr_pct"): first["rate_diff_at_equal_psnr_pct"],
        name("per_quality"): first["per_quality"],
    }
    if anchor and first["bd_rate_reason"] is None:
        out[name("bd_rate_vs_float_pct")] = 0.0  # the anchor against itself
    if len(seeds) > 1:
        out[name("bd_rate_vs_float_pct") + "_per_seed"] = {str(s): v for s, v in values.items()}
        out[name("bd_rate_vs_float_pct") + "_std"] = statistics.stdev(numbers) if len(numbers) > 1 else None
    return out


def _seed_spread(comparisons: Mapping[int, Mapping[str, Any]]) -> Dict[str, Any]:
    """Per seed: the BD-rate and the mean delta-bpp / delta-PSNR at equal lambda (which exist with
    a single reference quality too), and their standard deviations."""
    per_seed = {}
    for seed, comparison in comparisons.items():
        rows = comparison["per_quality"]
        per_seed[str(seed)] = {
            "bd_rate_vs_float_pct": comparison["bd_rate_vs_float_pct"],
            "delta_bpp_pct": _mean([r.get("delta_bpp_pct") for r in rows]),
            "delta_psnr_db": _mean([r.get("delta_psnr_db") for r in rows]),
        }
    out: Dict[str, Any] = {"per_seed": per_seed}
    for key in ("bd_rate_vs_float_pct", "delta_bpp_pct", "delta_psnr_db"):
        values = [v[key] for v in per_seed.values() if v[key] is not None]
        out[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else None
    return out


def method_row(method: Any, runs: Mapping[int, Mapping[str, Mapping[int, Mapping[str, Any]]]],
               float_points: Mapping[str, Mapping[int, Mapping[str, Any]]],
               latency: Optional[Mapping[str, Any]], step: Optional[Mapping[str, Any]],
               finetuned_points: Optional[Mapping[int, Mapping[str, Any]]] = None,
               oracle: Optional[Mapping[str, Any]] = None, model: Optional[str] = None) -> Dict[str, Any]:
    """One summary row (see :data:`FIELDS`).

    ``runs[seed][set][quality]`` are the method's points, ``float_points[set][quality]`` the float
    anchor's, ``finetuned_points[quality]`` the float-finetuned anchor's on Kodak.
    """
    seeds = list(runs)  # in the order they were asked for: the first one gives the other fields
    points = runs[seeds[0]].get(MAIN_SET, {})
    qs = sorted(points)
    anchor = method.kind == "float"
    row: Dict[str, Any] = {"model": model, "method": method.name, "kind": method.kind,
                           "description": method.description, "qualities": qs, "seeds": seeds}
    set_names = [MAIN_SET] + sorted({s for r in runs.values() for s in r if s != MAIN_SET})
    for set_name in set_names:
        have = [seed for seed in seeds if runs[seed].get(set_name)]
        if not have:
            continue
        comparisons = {seed: compare_to_float(float_points.get(set_name, {}), runs[seed][set_name]) for seed in have}
        row.update(_set_fields(comparisons, have, set_name, anchor))
        if set_name == MAIN_SET and len(have) > 1:
            row["seed_spread"] = _seed_spread(comparisons)
    finetuned = compare_to_float(finetuned_points, points) if finetuned_points else None
    bits = [points[q].get("bits") or {} for q in qs]
    diversity = [points[q].get("diversity") or {} for q in qs]
    row.update({
        "bd_rate_vs_float_finetuned_pct": finetuned["bd_rate_vs_float_pct"] if finetuned else None,
        "avg_weight_bits": _mean([b.get("bits_per_param") for b in bits]),
        "avg_bits_per_param": _mean([b.get("bits_per_param") for b in bits]),
        "avg_activation_bits": _mean([b.get("avg_activation_bits") for b in bits]),
        "avg_bits_bitops": _mean([b.get("bits_bitops") for b in bits]),
        "avg_dynamic_layer_bits": _mean([points[q].get("avg_dynamic_layer_bits") for q in qs]),
        "bitops_ratio": _mean([b.get("bitops_ratio") for b in bits]),
        "diversity_encoder": _mean([d.get("encoder") for d in diversity]),
        "diversity_decoder": _mean([d.get("decoder") for d in diversity]),
        "oracle_gain_pct": oracle.get("oracle_gain_pct") if oracle else None,
        "oracle": {k: v for k, v in oracle.items() if k not in ("bound", "key")} if oracle else None,
        "packed_size_bytes": _round(_mean([_size(points[q], "packed_size_bytes") for q in qs])),
        "packed_size_all_candidates_bytes": _round(_mean([_size(points[q], "packed_size_all_candidates_bytes") for q in qs])),
        "model_size_estimate_bytes": _round(_mean([_size(points[q], "model_size_estimate_bytes") for q in qs])),
        "packed_size_vs_bits_pct": _mean([_packed_vs_bits(points[q], float_points.get(MAIN_SET, {}).get(q)) for q in qs]),
        "packed_float32_bytes": _round(_mean([(_size(points[q], "packed") or {}).get("float_bytes") for q in qs])),
        "encoder_latency_ms": latency["g_a_ms"] if latency else None,
        "decoder_latency_ms": latency["g_s_ms"] if latency else None,
        "encoder_latency_ratio_vs_float": latency["g_a_ratio_vs_torch_float"] if latency else None,
        "decoder_latency_ratio_vs_float": latency["g_s_ratio_vs_torch_float"] if latency else None,
        "encoder_int8_speedup_vs_float": (latency or {}).get("g_a_int8_speedup_vs_torch_float"),
        "decoder_int8_speedup_vs_float": (latency or {}).get("g_s_int8_speedup_vs_torch_float"),
        "int8_kernels": _int8_kernels(latency),
        "train_step_ratio_vs_float": 1.0 if method.kind in ("float", "float-ft") else (step["ratio_vs_float"] if step else None),
        "train_seconds_per_quality": _mean([points[q].get("train_seconds") for q in qs]),
        "training_steps": points[qs[0]].get("training_steps") if qs else None,
        "machine": (latency or {}).get("machine_line") or (points[qs[0]].get("machine_line") if qs else None),
        "latency": latency,
        "train_step": step,
    })
    if any(points[q].get("mixed_profile") for q in qs):
        row["mixed_profiles"] = {str(q): points[q].get("mixed_profile") for q in qs}
    fits = {q: points[q]["selector_fit"] for q in qs if points[q].get("selector_fit")}
    if fits:
        row["selector_fit"] = {str(q): {k: fit.get(k) for k in ("base_rd", "mu", "budget", "cost", "crops", "dynamic", "static", "oracle")}
                               for q, fit in fits.items()}
        row["fit_gain_share"] = _mean([_gain_share(fit) for fit in fits.values()])
    return row


def _gain_share(fit: Mapping[str, Any]) -> Optional[float]:
    """The share of the per-image oracle's gain over the best single profile that the fitted
    selectors take, on the held-out crops of their choice table."""
    possible = fit["static"]["delta_rd"] - fit["oracle"]["delta_rd"]
    return (fit["static"]["delta_rd"] - fit["dynamic"]["delta_rd"]) / possible if possible > 0 else None


def _size(point: Mapping[str, Any], key: str) -> Any:
    return (point.get("size") or {}).get(key)


def _legacy_model(summary: Mapping[str, Any]) -> Optional[str]:
    """The model family of a summary written before rows named theirs: its first reference's file name."""
    for ref in summary.get("references") or []:
        stem = Path(str(ref.get("checkpoint", ""))).stem
        if stem:
            return re.sub(r"-q\d+$", "", stem)
    return summary.get("model")


def merge_summaries(previous: Optional[Mapping[str, Any]], summary: Dict[str, Any],
                    order: Sequence[str] = (), kinds: Optional[Mapping[str, str]] = None) -> Dict[str, Any]:
    """``summary`` with the rows of ``previous`` (an earlier ``summary.json`` of the same mode) that it
    does not recompute: a run of some methods keeps the others. Each kept row keeps the command,
    date and settings it was measured with (``run``); rows are ordered by model name, then ``order``;
    rows written before rows named their model and kind get them (the kind from ``kinds``)."""
    if not previous or previous.get("mode") != summary.get("mode"):
        return summary
    fresh = {(row.get("model"), row["method"]) for row in summary["rows"]}
    legacy = _legacy_model(previous)
    kept = []
    for old in previous.get("rows") or []:
        row = dict(old)
        row["model"] = row.get("model") or legacy
        if not row.get("kind") and kinds and row["method"] in kinds:
            row["kind"] = kinds[row["method"]]
        if (row["model"], row["method"]) in fresh:
            continue
        row.setdefault("run", {"command": previous.get("command"), "generated": previous.get("generated"),
                               "mode": previous.get("mode"), "settings": previous.get("settings")})
        kept.append(row)
    if not kept:
        return summary
    models = sorted(set(summary.get("models") or []) | {row["model"] for row in kept})  # the same order whoever ran last
    rank = {name: i for i, name in enumerate(order)}
    rows = sorted(summary["rows"] + kept, key=lambda r: (models.index(r["model"]) if r["model"] in models else len(models),
                                                       rank.get(r["method"], len(rank))))
    return dict(summary, rows=rows, models=models, model=models[0] if len(models) == 1 else ", ".join(models),
                kept_rows=[f"{row['model']}/{row['method']}" for row in kept])


def _int8_kernels(latency: Optional[Mapping[str, Any]]) -> Optional[int]:
    counts = [latency.get(f"{part}_int8_kernels") for part in ("g_a", "g_s")] if latency else []
    return None if any(c is None for c in counts) or not counts else sum(counts)


def _int8_cell(row: Mapping[str, Any]) -> str:
    """``"1.49x / 1.85x"``, ``"none fused"`` or ``"n/a"``."""
    a, s = row.get("encoder_int8_speedup_vs_float"), row.get("decoder_int8_speedup_vs_float")
    if row.get("int8_kernels") is None:
        return "n/a"
    return f"{_fmt(a, 2, 'x')} / {_fmt(s, 2, 'x')}" if a or s else "none fused"


def _packed_vs_bits(point: Mapping[str, Any], float_point: Optional[Mapping[str, Any]]) -> Optional[float]:
    """How far the packed file is above ``bits_per_param / 32`` of the packed float model, in percent."""
    if not float_point or not _size(float_point, "packed_size_bytes") or not _size(point, "packed_size_bytes"):
        return None
    ideal = point["bits"]["bits_per_param"] / 32.0 * float_point["size"]["packed_size_bytes"]
    return 100.0 * (point["size"]["packed_size_bytes"] / ideal - 1.0)


def _round(value: Optional[float]) -> Optional[int]:
    return None if value is None else int(round(value))


def finn_summary(path: Path, display=str) -> Optional[Dict[str, Any]]:
    """The headline figures of the committed FINN report (copied, not recomputed)."""
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    profiles = {}
    for name, profile in data.get("profiles", {}).items():
        profiles[name] = {"bits": profile.get("bits")}
        for part in ("g_a", "g_s"):
            if part in profile:
                profiles[name][part] = {**profile[part]["totals"], "fps": profile[part].get("fps")}
    return {
        "source": display(path),
        "model": data.get("model"),
        "image": data.get("image"),
        "fpga_part": data.get("fpga_part"),
        "command": data.get("command"),
        "profiles": profiles,
        "note": "FINN estimates (no synthesis) for the GDN-free FactorizedPriorReLU, which FINN can map; "
        "the hyperprior rows above have GDN/IGDN, which FINN cannot map. Copied from the report, not recomputed.",
    }


# --------------------------------------------------------------------------- markdown


def _fmt(value: Any, digits: int = 2, suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}{suffix}"
    return f"{value}{suffix}"


def _signed(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:+.2f}"


def _bd_cell(row: Mapping[str, Any], set_name: str = MAIN_SET) -> str:
    """The BD-rate (``*`` when its overlap warning fired), else the per-quality deltas."""
    value = row.get(field_name("bd_rate_vs_float_pct", set_name))
    if value is not None:
        return f"{value:+.2f}" + ("*" if row.get(field_name("bd_rate_warning", set_name)) else "")
    deltas = [f"q{p['quality']}: {p['delta_bpp_pct']:+.1f} % / {p['delta_psnr_db']:+.2f} dB"
              for p in row.get(field_name("per_quality", set_name)) or [] if p.get("delta_bpp_pct") is not None]
    return "n/a (" + "; ".join(deltas) + ")" if deltas else "n/a"


def _spread_cell(row: Mapping[str, Any]) -> str:
    """``± std (n seeds)`` of the Kodak BD-rate (of the mean delta-PSNR without one), ``n/a`` for one seed."""
    seeds = row.get("seeds") or []
    if len(seeds) < 2:
        return "n/a"
    std = row.get("bd_rate_vs_float_pct_std")
    if std is not None:
        return f"±{std:.2f} % ({len(seeds)} seeds)"
    psnr = (row.get("seed_spread") or {}).get("delta_psnr_db_std")
    return f"±{psnr:.3f} dB ΔPSNR ({len(seeds)} seeds)" if psnr is not None else f"n/a ({len(seeds)} seeds)"


def _diversity_cell(row: Mapping[str, Any]) -> str:
    enc, dec = row.get("diversity_encoder"), row.get("diversity_decoder")
    if enc is None and dec is None:
        return "n/a"
    return f"{_fmt(enc)} / {_fmt(dec)}"


def _packed_kb(row: Mapping[str, Any]) -> Optional[float]:
    return row["packed_size_bytes"] / 1000 if row.get("packed_size_bytes") is not None else None


def _weight_bits(row: Mapping[str, Any]) -> Optional[float]:
    return row.get("avg_weight_bits", row.get("avg_bits_per_param"))


def extra_sets(summary: Mapping[str, Any]) -> List[str]:
    """The further evaluation sets some row has a BD-rate field for, in the summary's order."""
    names = list((summary.get("eval_sets") or {}).keys())
    for row in summary["rows"]:
        for key in row:
            match = re.fullmatch(r"bd_rate_vs_float_pct_([a-z0-9]+)", key)
            if match and match.group(1) not in ("std", "per") and match.group(1) not in names:
                names.append(match.group(1))
    return [n for n in names if n != MAIN_SET]


def _by_model(summary: Mapping[str, Any]) -> Dict[str, List[Mapping[str, Any]]]:
    groups: Dict[str, List[Mapping[str, Any]]] = {}
    for row in summary["rows"]:
        groups.setdefault(row.get("model") or summary.get("model") or "", []).append(row)
    return groups


def markdown_table(summary: Mapping[str, Any]) -> str:
    """The comparison as markdown: rate-distortion and bits, then speed, per model; notes, FINN, machine."""
    sets = extra_sets(summary)
    groups = _by_model(summary)
    lines: List[str] = []
    for model, rows in groups.items():
        if len(groups) > 1:
            lines += [f"**{model}**", ""]
        lines += [
            "| method | BD-rate vs float, Kodak [%] (else Δbpp / ΔPSNR at equal λ) | vs float fine-tuned [%] | "
            + "".join(f"BD-rate {s} [%] | " for s in sets)
            + "seed spread | weight bits | activation bits | bits (BitOPs) | BitOPs ratio | packed size [kB] (vs bits) | "
            "diversity enc / dec | oracle gain [%] |",
            "|---|---|---|" + "---|" * len(sets) + "---|---|---|---|---|---|---|---|",
        ]
        for row in rows:
            dyn = f" (dyn. layers {row['avg_dynamic_layer_bits']:.2f})" if row.get("avg_dynamic_layer_bits") else ""
            vs_bits = f" ({row['packed_size_vs_bits_pct']:+.1f} %)" if row.get("packed_size_vs_bits_pct") else ""
            lines.append(
                f"| {row['method']} | {_bd_cell(row)} | {_signed(row.get('bd_rate_vs_float_finetuned_pct'))} | "
                + "".join(f"{_bd_cell(row, s)} | " for s in sets)
                + f"{_spread_cell(row)} | {_fmt(_weight_bits(row))}{dyn} | {_fmt(row.get('avg_activation_bits'))} | "
                f"{_fmt(row.get('avg_bits_bitops'))} | {_fmt(row.get('bitops_ratio'), 3)} | {_fmt(_packed_kb(row), 1)}{vs_bits} | "
                f"{_diversity_cell(row)} | {_fmt(row.get('oracle_gain_pct'))} |"
            )
        lines += ["", "| method | g_a [ms] | g_s [ms] | g_a / g_s speed-up vs float | int8 kernels: g_a / g_s speed-up | "
                  "train step vs float |", "|---|---|---|---|---|---|"]
        for row in rows:
            ratio = (f"{1 / row['encoder_latency_ratio_vs_float']:.2f}x / {1 / row['decoder_latency_ratio_vs_float']:.2f}x"
                     if row.get("encoder_latency_ratio_vs_float") else "n/a")
            lines.append(f"| {row['method']} | {_fmt(row.get('encoder_latency_ms'), 1)} | "
                         f"{_fmt(row.get('decoder_latency_ms'), 1)} | {ratio} | {_int8_cell(row)} | "
                         f"{_fmt(row.get('train_step_ratio_vs_float'), 2, 'x')} |")
        lines.append("")
    notes = _notes(summary, sets)
    settings = summary.get("settings", {})
    set_text = "; ".join(f"{name}: {info.get('source')} ({len(info.get('images') or [])} images)"
                         for name, info in (summary.get("eval_sets") or {}).items())
    steps = settings.get("train", {}).get("steps")
    longer = sorted({f"{r['method']} ({r['training_steps']})" for r in summary.get("rows", [])
                     if r.get("training_steps") and steps and r["training_steps"] > steps})
    header = [
        f"Mode: **{summary.get('mode')}**; {steps} fine-tuning steps per method "
        f"and quality{' (longer: ' + ', '.join(longer) + ')' if longer else ''}; evaluation on {set_text or summary.get('eval_images')} "
        + ("" if set_text else f"({summary.get('eval_image_count')} images) ")
        + "with real bitstreams; reference qualities: "
        + ", ".join(f"q{r['quality']}" + ("" if r["available"] else " (missing)") for r in summary.get("references", []))
        + ("; seeds " + ", ".join(str(s) for s in summary["seeds"]) if len(summary.get("seeds") or []) > 1 else "")
        + ".",
        "",
    ]
    finn = summary.get("finn")
    finn_lines = []
    if finn:
        finn_lines = ["", f"FINN estimates, copied from `{finn['source']}` ({finn['model']}, {finn['image']}): " + finn["note"], ""]
        finn_lines += ["| profile | g_a LUT | g_a BRAM18 | g_a DSP | g_s LUT | g_s BRAM18 | g_s DSP |", "|---|---|---|---|---|---|---|"]
        for name, p in finn["profiles"].items():
            a, s = p.get("g_a", {}), p.get("g_s", {})
            finn_lines.append(f"| {name} | {a.get('LUT', 0):.0f} | {a.get('BRAM_18K', 0):.0f} | {a.get('DSP', 0):.0f} | "
                              f"{s.get('LUT', 0):.0f} | {s.get('BRAM_18K', 0):.0f} | {s.get('DSP', 0):.0f} |")
    machine = summary.get("machine") or {}
    tail = ["", f"Machine: {machine.get('cpu')}, {machine.get('cpu_count')} cores, torch {machine.get('torch')}, "
            f"brevitas {machine.get('brevitas')}, onnxruntime {machine.get('onnxruntime')}; one thread each. "
            f"Command: `{summary.get('command')}`."]
    return "\n".join(header + lines + (notes if notes else []) + finn_lines + tail) + "\n"


def _notes(summary: Mapping[str, Any], sets: Sequence[str]) -> List[str]:
    notes = []
    for set_name in [MAIN_SET] + list(sets):
        reasons = {row.get(field_name("bd_rate_reason", set_name)) for row in summary["rows"]}
        for reason in sorted(r for r in reasons if r):
            notes.append(f"- BD-rate ({set_name}) not computed: {reason}.")
        for row in summary["rows"]:
            warning = row.get(field_name("bd_rate_warning", set_name))
            if warning:
                notes.append(f"- {row['method']} ({set_name}): BD-rate marked * — {warning}")
    reasons = {row.get("latency_reason") for row in summary["rows"] if row.get("latency_reason")}
    for reason in sorted(reasons):
        notes.append(f"- Timings not measured: {reason}.")
    for row in summary["rows"]:
        lat = row.get("latency") or {}
        export = lat.get("export_notes") or {}
        graphs = lat.get("graphs") or {}
        bits = export.get("bits_capped_to_8")
        if bits:
            notes.append(f"- {row['method']}: layers above 8 bits exported at 8 for the QCDQ timing "
                         f"(8-bit containers): {', '.join(f'{k} ({v})' for k, v in bits.items())}.")
        if export.get("shifted_quantizers"):
            notes.append(f"- {row['method']}: float zero points exported as integer ones plus a per-channel Add "
                         f"before QuantizeLinear and after DequantizeLinear ({export['shifted_quantizers']} "
                         f"quantizers; {export.get('zero_points_outside_int8', 0)} channels lie outside int8).")
        for graph, what in (("ort_qcdq", "QCDQ graph"), ("ort_int8", "integer-kernel graph")):
            errors = [f"{part.split('.')[-1]}: {g['max_abs_error_vs_torch']:.3g} of {g['output_max_abs']:.3g}"
                      for part, g in graphs.items() if part.startswith(graph + ".") and "max_abs_error_vs_torch" in g]
            kernels = sum(g.get("int_kernels", 0) for part, g in graphs.items() if part.startswith(graph + "."))
            if errors:
                notes.append(f"- {row['method']}: {what}, {kernels} integer kernels run by onnxruntime; output vs "
                             f"PyTorch, max abs error {'; '.join(errors)}.")
    earlier = {}
    for row in summary["rows"]:
        run = row.get("run") or {}
        if run.get("command") != summary.get("command") or run.get("generated") != summary.get("generated"):
            earlier.setdefault((run.get("command"), run.get("generated")), []).append(row["method"])
    for (command, generated), names in earlier.items():
        notes.append(f"- Measured by an earlier run (`{command}`, {generated}): {', '.join(names)}.")
    return [""] + notes if notes else []


README_BEGIN = "<!-- benchmarks:summary:begin (generated from benchmarks/results/summary.json) -->"
README_END = "<!-- benchmarks:summary:end -->"


def _measured(row: Mapping[str, Any], summary: Mapping[str, Any]) -> str:
    """The date of the run that measured ``row`` (rows kept from an earlier run carry theirs)."""
    return str((row.get("run") or {}).get("generated") or summary.get("generated") or "")[:10]


def readme_table(summary: Mapping[str, Any]) -> str:
    """The README's compact table: BD-rate per evaluation set, bits, packed size, diversity, seed spread."""
    steps = summary.get("settings", {}).get("train", {}).get("steps")
    sets = extra_sets(summary)
    groups = _by_model(summary)
    many = len(groups) > 1
    lines = [
        ("| model " if many else "") + f"| method ({steps} fine-tuning steps) | BD-rate Kodak [%] | "
        + "".join(f"BD-rate {s} [%] | " for s in sets)
        + "weight bits | activation bits | bits (BitOPs) | packed [kB] | diversity enc / dec | seed spread | measured |",
        ("|---" if many else "") + "|---|---|" + "---|" * len(sets) + "---|---|---|---|---|---|---|",
    ]
    for model, rows in groups.items():
        for row in rows:
            bd = [_signed(row.get(field_name("bd_rate_vs_float_pct", s))) for s in [MAIN_SET] + sets]
            dynamic = (row.get("diversity_encoder") is not None or row.get("diversity_decoder") is not None
                       or row.get("avg_dynamic_layer_bits") is not None)
            lines.append(("| " + model + " " if many else "") + f"| {row['method']} | " + " | ".join(bd) + " | "
                         f"{_fmt(_weight_bits(row))} | {_fmt(row.get('avg_activation_bits'))} | "
                         f"{_fmt(row.get('avg_bits_bitops'))} | {_fmt(_packed_kb(row), 0)} | "
                         f"{_diversity_cell(row) if dynamic else ''} | {_spread_cell(row)} | {_measured(row, summary)} |")
    return "\n".join(lines) + "\n"


def update_readme(readme: Path, summary: Mapping[str, Any]) -> bool:
    """Rewrite the README's generated table between its markers (nothing else); ``False`` when it has none."""
    text = readme.read_text()
    if README_BEGIN not in text or README_END not in text:
        return False
    head, rest = text.split(README_BEGIN, 1)
    _, tail = rest.split(README_END, 1)
    readme.write_text(head + README_BEGIN + "\n" + readme_table(summary) + README_END + tail)
    return True


# --------------------------------------------------------------------------- figures


def plot(summary: Mapping[str, Any], output: Path) -> Path:
    """RD plot of every method (PSNR over bpp on Kodak, one curve or point per method), one panel
    per model, as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = _by_model(summary)
    fig, axes = plt.subplots(1, len(groups), figsize=(8 * len(groups), 5.5), squeeze=False)
    colors = plt.get_cmap("tab20").colors
    markers = "osD^v<>phX*Pd8"
    for ax, (model, rows) in zip(axes[0], groups.items()):
        for i, row in enumerate(rows):
            pts = sorted((p["bpp"], p["psnr"]) for p in row.get("per_quality") or [])
            if not pts:
                continue
            xs, ys = zip(*pts)
            anchor = row["method"] == "float"
            ax.plot(xs, ys, "--" if anchor else "-", marker=markers[i % len(markers)],
                    color="black" if anchor else colors[i % 20], label=row["method"], linewidth=2.0 if anchor else 1.2,
                    markersize=6)
        ax.set_xlabel("bits per pixel (real bitstreams)")
        ax.set_ylabel("PSNR RGB [dB]")
        ax.set_title(f"Kodak rate-distortion, {model} ({summary.get('mode')})")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, bbox_inches="tight", dpi=130)
    plt.close(fig)
    return output


_KIND_COLORS = {"float": "black", "float-ft": "dimgray", "brevitas": "tab:red", "dynaquant": "tab:blue",
                "mixed": "tab:green", "ptq": "tab:orange", "calibrated": "tab:brown"}


def _pareto_y(row: Mapping[str, Any], use_bd: bool) -> Tuple[Optional[float], Optional[float]]:
    if use_bd:
        return row.get("bd_rate_vs_float_pct"), row.get("bd_rate_vs_float_pct_std")
    return _mean([p.get("delta_psnr_db") for p in row.get("per_quality") or []]), \
        (row.get("seed_spread") or {}).get("delta_psnr_db_std")


def pareto(summary: Mapping[str, Any], output: Path) -> List[Path]:
    """BD-rate on Kodak against average BitOPs bits and against average weight bits (model size),
    one pair of panels per model; every row a point (error bars: the standard deviation over
    seeds), float as the reference line. Without BD-rates (fewer than 4 qualities) the y axis is
    the mean delta-PSNR at equal lambda instead, and says so. Writes ``output`` (PNG) and its PDF."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullLocator, ScalarFormatter

    groups = _by_model(summary)
    fig, axes = plt.subplots(len(groups), 2, figsize=(13, 5.2 * len(groups)), squeeze=False)
    for (model, rows), pair in zip(groups.items(), axes):
        use_bd = any(r.get("bd_rate_vs_float_pct") is not None for r in rows if r.get("kind") != "float" and r["method"] != "float")
        label = ("BD-rate vs float, Kodak [%] (lower is better)" if use_bd else
                 "ΔPSNR vs float at equal λ, Kodak [dB] (no BD-rate: fewer than 4 qualities)")
        plotted = []
        for ax, (field, xlabel) in zip(pair, (("avg_bits_bitops", "average bits (BitOPs)"),
                                              ("avg_weight_bits", "average weight bits (model size)"))):
            ax.axhline(0.0, color="black", linestyle="--", linewidth=1.2, label="float reference")
            for number, row in enumerate(rows, 1):
                x = row.get(field) if field != "avg_weight_bits" else _weight_bits(row)
                y, err = _pareto_y(row, use_bd)
                if x is None or y is None:
                    continue
                kind = row.get("kind") or ("float" if row["method"] == "float" else "dynaquant")
                ax.errorbar([x], [y], yerr=[err] if err else None, fmt="o", color=_KIND_COLORS.get(kind, "tab:purple"),
                            markersize=5, capsize=3)
                ax.annotate(str(number), (x, y), textcoords="offset points", xytext=(3, 3), fontsize=6)
                if field == "avg_bits_bitops":
                    plotted.append(f"{number} {row['method']}")
            ax.set_xscale("log", base=2)
            ax.xaxis.set_major_locator(FixedLocator([3, 4, 5, 6, 8, 12, 16, 32]))
            ax.xaxis.set_minor_locator(NullLocator())
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.set_xlabel(xlabel)
            ax.set_ylabel(label)
            ax.set_title(f"{model} ({summary.get('mode')})", fontsize=9)
            ax.grid(True, alpha=0.3)
        handles = [plt.Line2D([], [], marker="o", linestyle="", color=c, label=k) for k, c in _KIND_COLORS.items()]
        pair[1].legend(handles=handles + [plt.Line2D([], [], color="black", linestyle="--", label="float reference")],
                       fontsize=7, loc="best")
        pair[1].text(1.02, 1.0, "\n".join(plotted), transform=pair[1].transAxes, va="top", fontsize=6)
    output.parent.mkdir(parents=True, exist_ok=True)
    pdf = output.with_suffix(".pdf")
    fig.savefig(output, bbox_inches="tight", dpi=130)
    fig.savefig(pdf, bbox_inches="tight")
    plt.close(fig)
    return [output, pdf]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Render a summary again without running anything: its tables, figures, or the README table."""
    import argparse

    root = Path(__file__).resolve().parent.parent
    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--summary", type=Path, default=root / "benchmarks" / "results" / "summary.json",
                   help="summary.json to render (default: %(default)s)")
    p.add_argument("--update-readme", action="store_true",
                   help="rewrite README.md's table between its markers (nothing else in the file)")
    p.add_argument("--figures", action="store_true", help="write rd.png and pareto.png/.pdf beside the summary")
    args = p.parse_args(argv)
    summary = json.loads(args.summary.read_text())
    if args.update_readme:
        print("updated README.md" if update_readme(root / "README.md", summary) else "README.md has no table markers")
    if args.figures:
        plot(summary, args.summary.with_name("rd.png"))
        pareto(summary, args.summary.with_name("pareto.png"))
    if not (args.update_readme or args.figures):
        print(markdown_table(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
