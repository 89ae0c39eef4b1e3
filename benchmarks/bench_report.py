"""The comparison summary: one row per method from the cached runs, its markdown table, the RD plot.

Also imported by the documentation hook (``docs/hooks/generated.py``) to render the committed
``benchmarks/results/summary.json`` as a table, so the page and ``summary.md`` cannot differ.
"""

from __future__ import annotations

import warnings

import json
import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

#: What each field of a summary row means and how it is measured (also written into summary.json).
FIELDS: Dict[str, str] = {
    "method": "row name (benchmarks/bench_methods.py lists them)",
    "bd_rate_vs_float_pct": "Bjontegaard-delta rate in percent against the float reference curve on Kodak "
    "(dynaquant_brevitas.evaluation.metrics.bd_rate, Akima); positive means more bits at equal PSNR; null when "
    "either curve has fewer than 4 points (see bd_rate_reason)",
    "bd_rate_reason": "why bd_rate_vs_float_pct is null (null when it is a number)",
    "bd_rate_vs_float_finetuned_pct": "BD-rate in percent against the float reference fine-tuned in float with the "
    "same recipe (method float-finetuned): separates the cost of quantization from what the fine-tuning itself "
    "changes; null without that row or with fewer than 4 points",
    "rate_diff_at_equal_psnr_pct": "single-point fallback: mean over qualities of the rate difference at equal "
    "PSNR against the float curve (metrics.rate_difference_at_quality; needs >= 2 float points "
    "covering the PSNR), null otherwise",
    "per_quality": "per reference quality: bpp and PSNR from real bitstreams, and delta-bpp [%] / "
    "delta-PSNR [dB] against the float model of the same quality (same lambda)",
    "avg_bits_per_param": "weight bits averaged over all parameters of the codec's conv/linear layers "
    "(float layers count 32; dynamic layers at their mean choice over the Kodak images), "
    "cost.average_bits; mean over qualities",
    "avg_bits_bitops": "bit width b with b^2 x MACs = BitOPs (MACs x weight bits x activation bits per layer, "
    "MACs from cost.layer_macs at the evaluation image size); mean over qualities",
    "avg_dynamic_layer_bits": "dynamic models: mean chosen bit width of the dynamic layers per image, from "
    "dynaquant_brevitas.evaluation (the paper's 'avg bits'); null for static models",
    "bitops_ratio": "BitOPs divided by 32 x 32 x MACs (float = 1)",
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
    "ORT_ENABLE_ALL, 1 thread) for quantized rows",
    "decoder_latency_ms": "same for g_s, on the float encoder's latent of that image",
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
    "train_seconds_per_quality": "wall time of the fine-tuning runs (mean over qualities)",
    "machine": "where latency and step times were measured (CPU, cores, threads, load average)",
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


def method_row(method: Any, points: Mapping[int, Mapping[str, Any]], float_points: Mapping[int, Mapping[str, Any]],
               latency: Optional[Mapping[str, Any]], step: Optional[Mapping[str, Any]],
               finetuned_points: Optional[Mapping[int, Mapping[str, Any]]] = None) -> Dict[str, Any]:
    """One summary row (see :data:`FIELDS`); ``finetuned_points`` are the float-finetuned anchor's."""
    qs = sorted(points)
    comparison = compare_to_float(float_points, points)
    finetuned = compare_to_float(finetuned_points, points) if finetuned_points else None
    row: Dict[str, Any] = {
        "method": method.name,
        "description": method.description,
        "qualities": qs,
        "bd_rate_vs_float_pct": comparison["bd_rate_vs_float_pct"],
        "bd_rate_reason": comparison["bd_rate_reason"],
        "rate_diff_at_equal_psnr_pct": comparison["rate_diff_at_equal_psnr_pct"],
        "bd_rate_vs_float_finetuned_pct": finetuned["bd_rate_vs_float_pct"] if finetuned else None,
        "avg_bits_per_param": _mean([points[q]["bits"]["bits_per_param"] for q in qs]),
        "avg_bits_bitops": _mean([points[q]["bits"]["bits_bitops"] for q in qs]),
        "avg_dynamic_layer_bits": _mean([points[q].get("avg_dynamic_layer_bits") for q in qs]),
        "bitops_ratio": _mean([points[q]["bits"]["bitops_ratio"] for q in qs]),
        "packed_size_bytes": _round(_mean([points[q]["size"]["packed_size_bytes"] for q in qs])),
        "packed_size_all_candidates_bytes": _round(_mean([points[q]["size"]["packed_size_all_candidates_bytes"] for q in qs])),
        "model_size_estimate_bytes": _round(_mean([points[q]["size"]["model_size_estimate_bytes"] for q in qs])),
        "packed_size_vs_bits_pct": _mean([_packed_vs_bits(points[q], float_points.get(q)) for q in qs]),
        "packed_float32_bytes": _round(_mean([points[q]["size"]["packed"].get("float_bytes") for q in qs])),
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
        "per_quality": comparison["per_quality"],
        "latency": latency,
        "train_step": step,
    }
    if method.kind == "float" and row["bd_rate_reason"] is None:
        row["bd_rate_vs_float_pct"] = 0.0  # the anchor against itself
    return row


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
    if not float_point:
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


def _bd_cell(row: Mapping[str, Any]) -> str:
    if row["bd_rate_vs_float_pct"] is not None:
        return f"{row['bd_rate_vs_float_pct']:+.2f}"
    deltas = [f"q{p['quality']}: {p['delta_bpp_pct']:+.1f} % / {p['delta_psnr_db']:+.2f} dB"
              for p in row["per_quality"] if p.get("delta_bpp_pct") is not None]
    return "n/a (" + "; ".join(deltas) + ")" if deltas else "n/a"


def markdown_table(summary: Mapping[str, Any]) -> str:
    """The comparison as markdown: the table, its notes, FINN figures, the machine."""
    lines = [
        "| method | BD-rate vs float [%] (else Δbpp / ΔPSNR at equal λ) | vs float fine-tuned [%] | bits/param | "
        "bits (BitOPs) | BitOPs ratio | packed size [kB] (vs bits) | g_a [ms] | g_s [ms] | g_a / g_s speed-up vs float | "
        "int8 kernels: g_a / g_s speed-up | train step vs float |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in summary["rows"]:
        dyn = f" (dyn. layers {row['avg_dynamic_layer_bits']:.2f})" if row.get("avg_dynamic_layer_bits") else ""
        packed = row["packed_size_bytes"] / 1000 if row["packed_size_bytes"] is not None else None
        vs_bits = f" ({row['packed_size_vs_bits_pct']:+.1f} %)" if row.get("packed_size_vs_bits_pct") else ""
        ratio = (f"{1 / row['encoder_latency_ratio_vs_float']:.2f}x / {1 / row['decoder_latency_ratio_vs_float']:.2f}x"
                 if row["encoder_latency_ratio_vs_float"] is not None else "n/a")
        lines.append(
            f"| {row['method']} | {_bd_cell(row)} | {_signed(row.get('bd_rate_vs_float_finetuned_pct'))} | "
            f"{_fmt(row['avg_bits_per_param'])}{dyn} | "
            f"{_fmt(row['avg_bits_bitops'])} | {_fmt(row['bitops_ratio'], 3)} | {_fmt(packed, 1)}{vs_bits} | "
            f"{_fmt(row['encoder_latency_ms'], 1)} | {_fmt(row['decoder_latency_ms'], 1)} | {ratio} | {_int8_cell(row)} | "
            f"{_fmt(row['train_step_ratio_vs_float'], 2, 'x')} |"
        )
    notes = []
    reasons = {row["bd_rate_reason"] for row in summary["rows"] if row["bd_rate_reason"]}
    for reason in sorted(reasons):
        notes.append(f"- BD-rate not computed: {reason}.")
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
    settings = summary.get("settings", {})
    header = [
        f"Mode: **{summary.get('mode')}**; {settings.get('train', {}).get('steps')} fine-tuning steps per method "
        f"and quality; evaluation on {summary.get('eval_images')} ({summary.get('eval_image_count')} images, real "
        "bitstreams); reference qualities: "
        + ", ".join(f"q{r['quality']}" + ("" if r["available"] else " (missing)") for r in summary.get("references", []))
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
    return "\n".join(header + lines + ([""] + notes if notes else []) + finn_lines + tail) + "\n"


README_BEGIN = "<!-- benchmarks:summary:begin (generated from benchmarks/results/summary.json) -->"
README_END = "<!-- benchmarks:summary:end -->"


def readme_table(summary: Mapping[str, Any]) -> str:
    """The README's compact table: rate-distortion, bits, size and speed per method."""
    steps = summary.get("settings", {}).get("train", {}).get("steps")
    lines = [
        f"| method ({steps} fine-tuning steps) | BD-rate vs float [%] | vs float fine-tuned [%] | bits (BitOPs) | "
        "packed [kB] | encoder / decoder speed-up vs float PyTorch: QCDQ graph | same, integer kernels |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in summary["rows"]:
        bd, bd_ft = (_signed(v) for v in (row["bd_rate_vs_float_pct"], row.get("bd_rate_vs_float_finetuned_pct")))
        speed = (f"{1 / row['encoder_latency_ratio_vs_float']:.2f}x / {1 / row['decoder_latency_ratio_vs_float']:.2f}x"
                 if row["encoder_latency_ratio_vs_float"] else "n/a")
        packed = row["packed_size_bytes"] / 1000 if row["packed_size_bytes"] is not None else None
        lines.append(f"| {row['method']} | {bd} | {bd_ft} | "
                     f"{_fmt(row['avg_bits_bitops'])} | {_fmt(packed, 0)} | {speed} | {_int8_cell(row)} |")
    return "\n".join(lines) + "\n"


def update_readme(readme: Path, summary: Mapping[str, Any]) -> bool:
    """Rewrite the README's generated table between its markers; ``False`` when it has none."""
    text = readme.read_text()
    if README_BEGIN not in text or README_END not in text:
        return False
    head, rest = text.split(README_BEGIN, 1)
    _, tail = rest.split(README_END, 1)
    readme.write_text(head + README_BEGIN + "\n" + readme_table(summary) + README_END + tail)
    return True


# --------------------------------------------------------------------------- figure


def plot(summary: Mapping[str, Any], output: Path) -> Path:
    """RD plot of every method (PSNR over bpp, one curve or point per method), as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    colors = plt.get_cmap("tab20").colors
    markers = "osD^v<>phX*Pd8"
    for i, row in enumerate(summary["rows"]):
        pts = sorted((p["bpp"], p["psnr"]) for p in row["per_quality"])
        if not pts:
            continue
        xs, ys = zip(*pts)
        anchor = row["method"] == "float"
        ax.plot(xs, ys, "--" if anchor else "-", marker=markers[i % len(markers)], color="black" if anchor else colors[i % 20],
                label=row["method"], linewidth=2.0 if anchor else 1.2, markersize=6)
    ax.set_xlabel("bits per pixel (real bitstreams)")
    ax.set_ylabel("PSNR RGB [dB]")
    ax.set_title(f"Kodak rate-distortion, {summary.get('model', '')} ({summary.get('mode')})")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, bbox_inches="tight", dpi=130)
    plt.close(fig)
    return output
