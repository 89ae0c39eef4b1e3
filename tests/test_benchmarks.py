"""benchmarks/run.py: the quick mode on a tiny subset writes the summary schema, and reruns from its cache."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RUN = REPO / "benchmarks" / "run.py"
REFERENCE = REPO / "checkpoints" / "reference" / "bmshj2018-hyperprior-N64-M96-q4.pt"
DATA = REPO.parent / "shared" / "data"

ROW_FIELDS = {
    "method": str,
    "bd_rate_vs_float_pct": (float, type(None)),
    "avg_bits_per_param": float,
    "avg_bits_bitops": float,
    "packed_size_bytes": int,
    "bitops_ratio": float,
    "encoder_latency_ms": float,
    "decoder_latency_ms": float,
    "train_step_ratio_vs_float": float,
    "machine": str,
}

needs_data = pytest.mark.skipif(
    not (REFERENCE.exists() and (DATA / "kodak").is_dir() and (DATA / "train").is_dir()),
    reason="needs the committed q4 reference and ../shared/data (kodak, train)",
)


def _bench_module(name: str):
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up while it executes
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(REPO / "benchmarks"))


def _run(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, str(RUN), *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)


@needs_data
def test_quick_mode_writes_the_summary_and_resumes(tmp_path):
    out = tmp_path / "bench"
    args = ("--quick", "--methods", "float,float-finetuned,dynaquant-int8", "--references", str(REFERENCE), "--output", str(out))
    first = _run(*args)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "quick" and summary["errors"] == []
    assert [row["method"] for row in summary["rows"]] == ["float", "float-finetuned", "dynaquant-int8"]
    for row in summary["rows"]:
        for name, kind in ROW_FIELDS.items():
            assert isinstance(row[name], kind), (row["method"], name, row[name])
        assert set(bench_fields()) <= set(row) | {"per_quality"}
        # one reference point: no BD-rate, a reason, and the per-quality deltas instead
        assert row["bd_rate_vs_float_pct"] is None and "4 rate-distortion points" in row["bd_rate_reason"]
        (point,) = row["per_quality"]
        assert point["quality"] == 4 and point["bpp"] > 0 and point["delta_bpp_pct"] is not None
    float_row, finetuned_row, quant_row = summary["rows"]
    assert float_row["avg_bits_per_param"] == 32.0 and float_row["bitops_ratio"] == 1.0
    # the fine-tuned anchor trained (in float) with the quantized methods' recipe, and shares float's timings
    assert finetuned_row["training_steps"] == quant_row["training_steps"] > 0
    assert finetuned_row["avg_bits_per_param"] == 32.0 and finetuned_row["latency"] == float_row["latency"]
    assert finetuned_row["per_quality"][0]["bpp"] != float_row["per_quality"][0]["bpp"]
    assert quant_row["avg_bits_per_param"] == 8.0 and quant_row["bitops_ratio"] == pytest.approx(1 / 16)
    # the packed file is real: about a quarter of float, and close to the estimate
    assert quant_row["packed_size_bytes"] < 0.3 * float_row["packed_size_bytes"]
    assert abs(quant_row["packed_size_bytes"] / quant_row["model_size_estimate_bytes"] - 1) < 0.05
    latency = quant_row["latency"]
    assert {"torch_float.g_a", "ort_float.g_a", "ort_qcdq.g_a", "ort_qcdq.g_s"} <= set(latency["median_ms"])
    graph = latency["graphs"]["ort_qcdq.g_a"]
    assert graph["ops"]["DequantizeLinear"] > 0
    assert graph["max_abs_error_vs_torch"] < 0.05 * graph["output_max_abs"]  # the exported graph is the model
    assert quant_row["train_step"]["median_step_ms"]["method"] > 0
    # the integer-kernel variant was tried: per-channel activation steps leave QLinearConv nothing to fuse
    assert quant_row["int8_kernels"] == 0 and quant_row["encoder_int8_speedup_vs_float"] is None
    assert latency["export_notes"]["int8_calibration"] == "2 images"
    for name in ("summary.md", "rd.png", "runs/float/q4.json", "runs/dynaquant-int8/q4.json",
                 "runs/dynaquant-int8/latency.json", "runs/dynaquant-int8/train_step.json"):
        assert (out / name).is_file(), name
    assert (out / "rd.png").read_bytes()[:4] == b"\x89PNG"
    table = (out / "summary.md").read_text()
    assert "| dynaquant-int8 |" in table and "| float |" in table
    # a rerun takes everything from the cache
    second = _run(*args)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "running" not in second.stdout and second.stdout.count(": cached") == 3


def bench_fields():
    return _bench_module("bench_report").FIELDS


def test_quick_mode_refuses_the_committed_results_folder():
    run = _bench_module("run")
    with pytest.raises(SystemExit, match="must not write into benchmarks/results"):
        run.main(["--quick", "--output", str(REPO / "benchmarks" / "results")])


def test_a_settings_file_missing_keys_is_refused_naming_them(tmp_path):
    run = _bench_module("run")
    config = tmp_path / "config.yaml"
    config.write_text((REPO / "benchmarks" / "config.yaml").read_text().replace("  int8_kernel: u8s8\n", ""))
    with pytest.raises(SystemExit, match="missing setting.*latency.int8_kernel"):
        run.main(["--config", str(config)])
    config.write_text("- just a list\n")
    with pytest.raises(SystemExit, match="expected a mapping"):
        run.main(["--config", str(config)])


def test_bd_rate_only_with_four_points_per_curve():
    report = _bench_module("bench_report")
    rates, psnrs = [0.2, 0.4, 0.8, 1.6], [28.0, 31.0, 34.0, 37.0]
    anchor = {q: {"bpp": r, "psnr": d} for q, r, d in zip((2, 3, 4, 5), rates, psnrs)}
    worse = {q: {"bpp": p["bpp"] * 1.1, "psnr": p["psnr"]} for q, p in anchor.items()}
    full = report.compare_to_float(anchor, worse)
    assert full["bd_rate_vs_float_pct"] == pytest.approx(10.0, abs=0.5) and full["bd_rate_reason"] is None
    one = report.compare_to_float({4: anchor[4]}, {4: worse[4]})
    assert one["bd_rate_vs_float_pct"] is None and "float has 1" in one["bd_rate_reason"]
    assert one["per_quality"][0]["delta_bpp_pct"] == pytest.approx(10.0)
    assert one["rate_diff_at_equal_psnr_pct"] is None  # a single float point has no curve to interpolate
    two = report.compare_to_float({3: anchor[3], 4: anchor[4]}, {4: worse[4]})
    assert two["bd_rate_vs_float_pct"] is None
    assert two["rate_diff_at_equal_psnr_pct"] == pytest.approx(10.0)


def test_readme_table_is_generated_from_the_committed_summary(tmp_path):
    report = _bench_module("bench_report")
    summary = json.loads((REPO / "benchmarks" / "results" / "summary.json").read_text())
    readme = (REPO / "README.md").read_text()
    section = readme.split(report.README_BEGIN, 1)[1].split(report.README_END, 1)[0]
    assert section.strip() == report.readme_table(summary).strip(), "run benchmarks/run.py to regenerate the table"
    copy = tmp_path / "README.md"
    copy.write_text(f"intro\n{report.README_BEGIN}\nstale\n{report.README_END}\noutro\n")
    assert report.update_readme(copy, summary)
    assert "stale" not in copy.read_text() and copy.read_text().startswith("intro\n")
    assert copy.read_text().endswith(f"{report.README_END}\noutro\n")
    plain = tmp_path / "PLAIN.md"
    plain.write_text("no markers\n")
    assert not report.update_readme(plain, summary) and plain.read_text() == "no markers\n"
