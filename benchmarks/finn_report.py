"""FINN hardware estimates for FactorizedPriorReLU's g_a and g_s: mixed precision vs uniform 8 bits.

Each transform is exported with :func:`dynaquant_brevitas.export.finn.export_finn` (pre-check,
QONNX export verified with qonnx, FINN graph verified in Python execution at a small size),
then built at the full image size and estimated with FINN's own analyses
(``exp_cycles_per_layer``, ``res_estimation``, ``dataflow_performance``).

Usage::

    python benchmarks/finn_report.py --out benchmarks/results/finn_report
    python benchmarks/finn_report.py -N 16 -M 24 --width 128 --height 64 --out /tmp/small  # quick

Writes ``OUT.json`` and ``OUT.md``. The weights are not trained (no pretrained weights offline):
the model is calibrated on Kodak crops (g_s on random latents), which is all the estimates
depend on (shapes, bit widths, number of correction maps).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import torch

PROFILES = {
    "uniform8": "max",
    "mixed": {"g_a.2": 6, "g_a.4": 6, "g_a.6": 4, "g_s.2": 6, "g_s.4": 6, "g_s.6": 4},
}


def build_codec(n: int, m: int, data: Path, per_channel: bool = True) -> torch.nn.Module:
    """FactorizedPriorReLU(n, m), dynaquantized with candidates {4, 6, 8}, calibrated."""
    from compressai.models import FactorizedPriorReLU

    from dynaquant_brevitas import calibrate
    from dynaquant_brevitas.transform.config import DynaQuantConfig
    from dynaquant_brevitas.transform import dynaquantize

    torch.manual_seed(0)
    config = DynaQuantConfig(candidate_bits=(4, 6, 8), activation_per_channel=per_channel)
    model = dynaquantize(FactorizedPriorReLU(n, m), config)
    calibrate(model, [_crops(data)])
    calibrate(model.g_s, [torch.randn(4, m, 8, 8) * 4 for _ in range(2)])
    return model


def _crops(data: Path, size: int = 128, count: int = 8) -> torch.Tensor:
    import numpy as np
    from PIL import Image

    files = sorted(p for p in data.glob("*.png"))[:count]
    if not files:
        return torch.rand(count, 3, size, size)
    crops = [np.asarray(Image.open(f).convert("RGB"))[:size, :size] for f in files]
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255.0


def layer_groups(nodes: List[str], ops: List[str]) -> List[List[int]]:
    """Indices of hardware nodes per original layer: a layer ends after its MVAU's elementwise tail.

    Example:
        >>> layer_groups(list("abcdefg"), ["Thresholding", "FMPadding", "MVAU", "ElementwiseMul",
        ...                                "Thresholding", "MVAU", "ElementwiseAdd"])
        [[0, 1, 2, 3], [4, 5, 6]]
    """
    groups: List[List[int]] = [[]]
    seen_mvau = False
    for i, op in enumerate(ops):
        if seen_mvau and not op.startswith("Elementwise"):
            groups.append([])
            seen_mvau = False
        groups[-1].append(i)
        seen_mvau = seen_mvau or op.startswith("MVAU")
    return groups


def correction_map_bits(model: Any, node: Any) -> int:
    """Bits of a constant operand of an elementwise layer that is as large as its output.

    Those are the zero-point correction maps. FINN's ``res_estimation`` gives 0 BRAM/LUT/DSP for
    ``ElementwiseAdd_hls``/``ElementwiseMul_hls``, so they are counted here (float32 values).
    """
    if not node.op_type.startswith("Elementwise"):
        return 0
    total = 0
    for name in node.input:
        value = model.get_initializer(name)
        if value is not None and value.size == np.prod(model.get_tensor_shape(node.output[0])) and value.size > 1:
            total += int(value.size) * 32
    return total


def summarize(part: str, module: torch.nn.Module, build: Any) -> Dict[str, Any]:
    """Per-layer bits, cycles and resources of one transform, plus totals and frames per second."""
    convs = [(name, m) for name, m in module.named_modules() if hasattr(m, "weight_quant")]
    nodes = list(build.partition.graph.node)
    groups = layer_groups([n.name for n in nodes], [n.op_type for n in nodes])
    cycles = build.estimate["cycles_per_layer"]
    resources = build.estimate["resources_per_layer"]
    rows = []
    for (name, layer), group in zip(convs, groups):
        names = [nodes[i].name for i in group]
        mvau = next(r for r in build.layers if r["name"] in names and r["op"].startswith("MVAU"))
        rows.append({
            "layer": f"{part}.{name}",
            "bits": int(layer.weight_quant.tensor_quant.static_bit_width),
            "hw_input": mvau.get("inputDataType"),
            "hw_weight": mvau.get("weightDataType"),
            "PE": mvau.get("PE"), "SIMD": mvau.get("SIMD"),
            "cycles": max(cycles[n] for n in names),
            "LUT": sum(float(resources[n].get("LUT", 0)) for n in names),
            "BRAM_18K": sum(float(resources[n].get("BRAM_18K", 0)) for n in names),
            "URAM": sum(float(resources[n].get("URAM", 0)) for n in names),
            "DSP": sum(float(resources[n].get("DSP", 0)) for n in names),
            "map_kbit": sum(correction_map_bits(build.partition, nodes[i]) for i in group) / 1e3,
            "nodes": names,
        })
    totals = {k: sum(r[k] for r in rows) for k in ("LUT", "BRAM_18K", "URAM", "DSP", "map_kbit")}
    return {
        "layers": rows, "totals": totals, "max_cycles": build.estimate["max_cycles"],
        "fps": build.estimate["fps"], "finn_vs_qonnx_max_steps": build.max_error_steps,
        "integer_weights_vs_torch_max_steps": build.approximation_max_steps,
        "integer_weights_vs_torch_mean_steps": build.approximation_mean_steps,
        "output_step": build.output_step,
    }


def integer_weight_errors(module: torch.nn.Module, shape: tuple, step: float, bits=(2, 4, 6, 8)) -> Dict[int, Any]:
    """Max and mean deviation (output steps) of the integer-weight QONNX graph from PyTorch, per extra bits."""
    import numpy as np

    from dynaquant_brevitas.export import export_qonnx
    from dynaquant_brevitas.export.finn import prepare_qonnx
    from dynaquant_brevitas.export.qonnx import default_samples, run_qonnx
    from qonnx.core.modelwrapper import ModelWrapper

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "m.onnx")
        export_qonnx(module, path, shape, step=step, snap=1e-3)
        model = ModelWrapper(path)
    samples = default_samples(model, shape, count=2)
    out = {}
    for extra in bits:
        integer = prepare_qonnx(model, extra)
        errors = []
        for x in samples:
            with torch.no_grad():
                expected = module(x).numpy().astype(np.float64)
            errors.append(np.abs(run_qonnx(integer, x.numpy()) - expected) / step)
        out[extra] = {"max": float(max(e.max() for e in errors)), "mean": float(np.mean([e.mean() for e in errors]))}
    return out


def run(args: argparse.Namespace) -> Dict[str, Any]:
    from dynaquant_brevitas.export.finn import export_finn
    from dynaquant_brevitas.transform import freeze

    os.environ.setdefault("FINN_BUILD_DIR", tempfile.mkdtemp(prefix="finn_build_"))
    model = build_codec(args.N, args.M, args.data, per_channel=args.activations == "per-channel")
    h, w = args.height, args.width
    target_cycles = int(1e9 / args.clock_ns / args.target_fps)
    shapes = {"g_a": ((1, 3, h, w), (1, 3, 32, 48)), "g_s": ((1, args.M, h // 16, w // 16), (1, args.M, 2, 3))}
    steps = {"g_a": 1.0, "g_s": 1.0 / 255}  # latents are rounded to integers; pixels are 8-bit
    report: Dict[str, Any] = {
        "model": f"FactorizedPriorReLU(N={args.N}, M={args.M})", "image": f"{w}x{h}",
        "clock_ns": args.clock_ns, "target_fps": args.target_fps, "target_cycles": target_cycles,
        "fpga_part": args.fpga_part, "mvau_wwidth_max": args.mvau_wwidth_max, "border_g_a": args.border_g_a,
        "activations": args.activations, "profiles": {},
        "command": "python " + " ".join(sys.argv),
    }
    for label, profile in PROFILES.items():
        frozen = freeze(model, profile)
        report["profiles"][label] = {"bits": frozen.dynaquant_profile}
        with tempfile.TemporaryDirectory() as tmp:
            for part, (full, small) in shapes.items():
                start = time.time()
                border = args.border_g_a if part == "g_a" else "map"
                build = export_finn(getattr(frozen, part), os.path.join(tmp, f"{part}.onnx"), full,
                                    verify_shape=small, step=steps[part], target_cycles=target_cycles,
                                    border=border, tolerance_steps=float("inf") if border == "bias" else 1.0,
                                    clock_ns=args.clock_ns, fpga_part=args.fpga_part,
                                    mvau_wwidth_max=args.mvau_wwidth_max)
                summary = summarize(part, getattr(frozen, part), build)
                summary["seconds"] = round(time.time() - start, 1)
                summary["integer_weight_errors"] = integer_weight_errors(getattr(frozen, part), small, steps[part])
                report["profiles"][label][part] = summary
                print(f"{label} {part}: {summary['fps']:.1f} fps, {summary['totals']}, FINN vs QONNX "
                      f"{build.max_error_steps:.3g} steps, vs PyTorch max {build.approximation_max_steps:.3g} "
                      f"mean {build.approximation_mean_steps:.3g} steps, {summary['seconds']} s", flush=True)
    return report


def markdown(report: Dict[str, Any]) -> str:
    """Side-by-side tables of the report."""
    labels = list(report["profiles"])
    if report.get("activations", "per-channel") == "per-tensor":
        weights_note = "one activation step per tensor: integer weights keep their trained bits, exact up to float rounding"
    else:
        weights_note = "weights re-quantized with 4 extra bits to absorb per-channel activation steps"
    lines = [
        f"# FINN estimates: {report['model']}, {report['image']} image",
        "",
        f"Clock {1e3 / report['clock_ns']:.0f} MHz ({report['clock_ns']} ns), SetFolding target "
        f"{report['target_fps']} fps ({report['target_cycles']} cycles/frame, mvau_wwidth_max "
        f"{report['mvau_wwidth_max']}), part {report['fpga_part']}. "
        "Estimates from FINN's exp_cycles_per_layer, res_estimation and dataflow_performance "
        "(no synthesis). FINN estimates 0 LUT/BRAM/DSP for its HLS elementwise layers; the float32 "
        "zero-point correction maps they hold are listed separately (map Mbit, not in BRAM18). "
        f"g_a zero-point correction: {report['border_g_a']} (g_s: map). Activation steps: "
        f"{report.get('activations', 'per-channel')}.",
        "",
        f"Command: `{report['command']}`",
        "",
    ]
    for part in ("g_a", "g_s"):
        lines += [f"## {part}", "", "| layer | " + " | ".join(
            f"{lab} bits (hw in/w) | {lab} cycles | {lab} LUT | {lab} BRAM18 | {lab} DSP | {lab} map Mbit"
            for lab in labels
        ) + " |", "|---" * (1 + 6 * len(labels)) + "|"]
        rows = zip(*(report["profiles"][lab][part]["layers"] for lab in labels))
        for per_label in rows:
            cells = [per_label[0]["layer"]]
            for r in per_label:
                cells += [f"{r['bits']} ({r['hw_input']}/{r['hw_weight']})", str(r["cycles"]),
                          f"{r['LUT']:.0f}", f"{r['BRAM_18K']:.0f}", f"{r['DSP']:.0f}", f"{r['map_kbit'] / 1e3:.1f}"]
            lines.append("| " + " | ".join(cells) + " |")
        cells = ["**total**"]
        for lab in labels:
            s = report["profiles"][lab][part]
            t = s["totals"]
            cells += [f"{s['fps']:.1f} fps", str(s["max_cycles"]), f"{t['LUT']:.0f}", f"{t['BRAM_18K']:.0f}",
                      f"{t['DSP']:.0f}", f"{t['map_kbit'] / 1e3:.1f}"]
        lines += ["| " + " | ".join(cells) + " |", ""]
        for lab in labels:
            s = report["profiles"][lab][part]
            lines.append(
                f"- {lab}: verified at a small size, in output steps of {s['output_step']:.4g}: FINN Python "
                f"execution vs the integer-weight QONNX graph max {s['finn_vs_qonnx_max_steps']:.2g}; "
                f"that graph vs PyTorch max {s['integer_weights_vs_torch_max_steps']:.2g}, "
                f"mean {s['integer_weights_vs_torch_mean_steps']:.2g} ({weights_note})."
            )
        lines += ["", f"Integer-weight approximation of {part} vs PyTorch (max / mean, output steps) by extra "
                  "weight bits:", "", "| profile | " + " | ".join(
                      f"+{b} bits" for b in report["profiles"][labels[0]][part]["integer_weight_errors"]) + " |"]
        lines.append("|---" * (1 + len(report["profiles"][labels[0]][part]["integer_weight_errors"])) + "|")
        for lab in labels:
            sweep = report["profiles"][lab][part]["integer_weight_errors"]
            lines.append(f"| {lab} | " + " | ".join(f"{v['max']:.2g} / {v['mean']:.2g}" for v in sweep.values()) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-N", type=int, default=128)
    parser.add_argument("-M", type=int, default=192)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--clock-ns", type=float, default=5.0)
    parser.add_argument("--target-fps", type=float, default=30.0)
    parser.add_argument("--fpga-part", default="xczu7ev-ffvc1156-2-e")
    parser.add_argument("--mvau-wwidth-max", type=int, default=4096,
                        help="SetFolding's cap on SIMD x weight bits (FINN's default 36 caps SIMD at 3 "
                             "for 12-bit weights and leaves the 3-channel output layer of g_s at <1 fps)")
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/kodak")
    parser.add_argument("--border-g-a", choices=("map", "bias"), default="map",
                        help="zero-point correction of g_a: exact output-sized maps, or their channel medians "
                             "as a bias (borders approximate; g_s always uses maps)")
    parser.add_argument("--activations", choices=("per-channel", "per-tensor"), default="per-channel",
                        help="activation steps of the quantized model (DynaQuantConfig.activation_per_channel); "
                             "per-tensor needs no weight re-quantization, so FINN equals PyTorch")
    parser.add_argument("--out", type=Path, required=True, help="output path without extension")
    args = parser.parse_args(argv)
    report = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    args.out.with_suffix(".md").write_text(markdown(report))
    print(f"wrote {args.out.with_suffix('.json')} and {args.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
