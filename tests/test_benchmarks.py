"""benchmarks/: the quick mode of run.py writes the summary schema, evaluates a new set without
training again, keeps the rows of a partial run and reruns from its cache; the reports, the
datasets and the content-robustness benchmark on tiny inputs."""

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
    "model": str,
    "method": str,
    "bd_rate_vs_float_pct": (float, type(None)),
    "avg_bits_per_param": float,
    "avg_weight_bits": float,
    "avg_activation_bits": float,
    "avg_bits_bitops": float,
    "packed_size_bytes": int,
    "bitops_ratio": float,
    "encoder_latency_ms": float,
    "decoder_latency_ms": float,
    "train_step_ratio_vs_float": float,
    "machine": str,
    "run": dict,
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


def _checkpoints(work: Path) -> dict:
    return {str(p.relative_to(work)): p.stat().st_mtime_ns for p in (work / "train").rglob("*.pt")}


@needs_data
def test_quick_mode_summary_new_set_without_training_partial_run_and_cache(tmp_path):
    out = tmp_path / "bench"
    common = ("--quick", "--references", str(REFERENCE), "--output", str(out))
    # 1. three methods on Kodak, timed
    first = _run(*common, "--methods", "float,float-finetuned,dynaquant-int8", "--eval-sets", "kodak")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "quick" and summary["errors"] == []
    assert [row["method"] for row in summary["rows"]] == ["float", "float-finetuned", "dynaquant-int8"]
    for row in summary["rows"]:
        for name, kind in ROW_FIELDS.items():
            assert isinstance(row[name], kind), (row["method"], name, row[name])
        assert row["model"] == "bmshj2018-hyperprior-N64-M96"
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
    assert quant_row["avg_weight_bits"] == quant_row["avg_activation_bits"] == 8.0
    assert quant_row["bitops_ratio"] == pytest.approx(1 / 16)
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
    for name in ("summary.md", "rd.png", "pareto.png", "pareto.pdf", "runs/float/q4.json", "runs/dynaquant-int8/q4.json",
                 "runs/dynaquant-int8/latency.json", "runs/dynaquant-int8/train_step.json"):
        assert (out / name).is_file(), name
    assert (out / "rd.png").read_bytes()[:4] == b"\x89PNG" and (out / "pareto.pdf").read_bytes()[:4] == b"%PDF"
    table = (out / "summary.md").read_text()
    assert "| dynaquant-int8 |" in table and "| float |" in table
    trained = _checkpoints(out / "work")
    first_command = summary["command"]

    # 2. a second evaluation set, a mixed and a dynamic method, no timing: dynaquant-int8 is
    #    evaluated on photos2 from its checkpoint, float-finetuned's row is kept
    args = (*common, "--methods", "dynaquant-int8,mixed-bitops5,dyn-w3468-a68-bitops6,dyn-w3468-a68-bitops6-fit",
            "--eval-sets", "kodak,photos2", "--no-timing")
    second = _run(*args)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "fine-tuning dynaquant-int8" not in second.stdout and "fine-tuning mixed-bitops5" in second.stdout
    after = _checkpoints(out / "work")
    assert {k: v for k, v in after.items() if k in trained} == trained  # nothing trained again
    assert not [k for k in after if k.startswith("dynaquant-int8/") and k not in trained]
    photos2 = json.loads((out / "runs/dynaquant-int8/q4.photos2.json").read_text())
    assert photos2["trained_now"] is False and photos2["eval_set"] == "photos2"
    assert photos2["train_key"] == json.loads((out / "runs/dynaquant-int8/q4.json").read_text())["train_key"]
    manifest = json.loads((out / "work/datasets/photos2/MANIFEST.json").read_text())
    assert [e["name"] for e in manifest["excluded"]] == ["cat"]  # scikit-image's cat is a training image
    summary = json.loads((out / "summary.json").read_text())
    assert summary["errors"] == []
    rows = {row["method"]: row for row in summary["rows"]}
    assert list(rows) == ["float", "float-finetuned", "dynaquant-int8", "mixed-bitops5", "dyn-w3468-a68-bitops6",
                          "dyn-w3468-a68-bitops6-fit"]
    # the refit shares dyn-w3468-a68-bitops6's training and reports its choice table's held-out comparison
    assert second.stdout.count("fine-tuning dyn-w3468-a68-bitops6") == 1 and "refitting the selectors" in second.stdout
    fit = rows["dyn-w3468-a68-bitops6-fit"]["selector_fit"]["4"]
    assert fit["oracle"]["delta_rd"] <= fit["static"]["delta_rd"] + 1e-9 and fit["dynamic"]["cost"] <= 6.0 + 1e-6
    assert summary["kept_rows"] == ["bmshj2018-hyperprior-N64-M96/float-finetuned"]
    assert rows["float-finetuned"]["run"]["command"] == first_command
    assert "--no-timing" in rows["mixed-bitops5"]["run"]["command"]
    for name in ("dynaquant-int8", "mixed-bitops5", "dyn-w3468-a68-bitops6"):
        assert "bd_rate_vs_float_pct_photos2" in rows[name] and rows[name]["per_quality_photos2"][0]["bpp"] > 0
    assert rows["dynaquant-int8"]["latency"] is not None  # measured in run 1, still valid
    mixed, dynamic = rows["mixed-bitops5"], rows["dyn-w3468-a68-bitops6"]
    assert mixed["latency"] is None and mixed["latency_reason"] == "--no-timing"
    assert not (out / "runs/mixed-bitops5/latency.json").exists()
    assert mixed["avg_bits_bitops"] == pytest.approx(5.0, abs=0.05) and mixed["avg_activation_bits"] < 8
    assert mixed["diversity_encoder"] is None and mixed["mixed_profiles"]["4"]["bits_bitops"] <= 5.0 + 1e-6
    assert 0 <= dynamic["diversity_encoder"] <= 1 and 0 <= dynamic["diversity_decoder"] <= 1
    assert dynamic["oracle_gain_pct"] is not None and dynamic["oracle"]["profiles"] >= 8
    assert dynamic["avg_weight_bits"] < 8 and dynamic["avg_activation_bits"] <= 8
    # 3. a rerun takes everything from the cache
    third = _run(*args)
    assert third.returncode == 0, third.stderr[-3000:]
    assert "running" not in third.stdout and third.stdout.count(": cached") == 10
    assert "dyn-w3468-a68-bitops6: oracle" not in third.stdout


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


def test_latency_image_skips_small_images_and_says_why(tmp_path):
    from PIL import Image

    run = _bench_module("run")
    settings = {"latency": {"height": 64, "width": 96}}
    small, large = tmp_path / "a.png", tmp_path / "b.png"
    Image.new("RGB", (40, 30)).save(small)
    Image.new("RGB", (64, 100)).save(large)  # portrait: used turned landscape
    image, name, reason = run.latency_image(settings, [small, large])
    assert image.shape == (1, 3, 64, 96) and name == "b.png" and reason is None
    image, name, reason = run.latency_image(settings, [small])
    assert image is None and "no evaluation image is at least 96x64" in reason


def test_paths_outside_the_repository_are_absolute():
    run = _bench_module("run")
    assert run._rel(REPO / "benchmarks" / "config.yaml") == "benchmarks/config.yaml"
    assert run._rel("/tmp") == os.path.realpath("/tmp")


def test_bd_rate_only_with_four_points_per_curve():
    report = _bench_module("bench_report")
    rates, psnrs = [0.2, 0.4, 0.8, 1.6], [28.0, 31.0, 34.0, 37.0]
    anchor = {q: {"bpp": r, "psnr": d} for q, r, d in zip((2, 3, 4, 5), rates, psnrs)}
    worse = {q: {"bpp": p["bpp"] * 1.1, "psnr": p["psnr"]} for q, p in anchor.items()}
    full = report.compare_to_float(anchor, worse)
    assert full["bd_rate_vs_float_pct"] == pytest.approx(10.0, abs=0.5) and full["bd_rate_reason"] is None
    assert full["bd_rate_overlap"] == pytest.approx(1.0) and full["bd_rate_warning"] is None
    one = report.compare_to_float({4: anchor[4]}, {4: worse[4]})
    assert one["bd_rate_vs_float_pct"] is None and "float has 1" in one["bd_rate_reason"]
    assert one["per_quality"][0]["delta_bpp_pct"] == pytest.approx(10.0)
    assert one["rate_diff_at_equal_psnr_pct"] is None  # a single float point has no curve to interpolate
    two = report.compare_to_float({3: anchor[3], 4: anchor[4]}, {4: worse[4]})
    assert two["bd_rate_vs_float_pct"] is None
    assert two["rate_diff_at_equal_psnr_pct"] == pytest.approx(10.0)
    shifted = {q: {"bpp": p["bpp"], "psnr": p["psnr"] + 7.0} for q, p in anchor.items()}
    low = report.compare_to_float(anchor, shifted)  # little overlap: a warning, recorded
    assert low["bd_rate_overlap"] < 0.75 and "less than 75%" in low["bd_rate_warning"]


def _points(factor: float, psnr_shift: float = 0.0) -> dict:
    rates, psnrs = [0.2, 0.4, 0.8, 1.6], [28.0, 31.0, 34.0, 37.0]
    return {q: {"bpp": r * factor, "psnr": d + psnr_shift, "bits": {"bits_per_param": 8.0, "avg_activation_bits": 8.0,
                                                                    "bits_bitops": 8.0, "bitops_ratio": 1 / 16},
                "diversity": {"encoder": 0.25, "decoder": 0.5}}
            for q, r, d in zip((2, 3, 4, 5), rates, psnrs)}


def test_rows_report_every_set_and_the_seed_spread():
    report = _bench_module("bench_report")
    methods = _bench_module("bench_methods")
    floats = {"kodak": _points(1.0), "photos2": _points(1.0)}
    runs = {0: {"kodak": _points(1.10), "photos2": _points(1.20)}, 1: {"kodak": _points(1.12), "photos2": _points(1.20)},
            2: {"kodak": _points(1.14), "photos2": _points(1.20)}}
    row = report.method_row(methods.BY_NAME["dyn-w468-a8-bitops7"], runs, floats, None, None, model="m")
    values = row["bd_rate_vs_float_pct_per_seed"]
    assert list(values) == ["0", "1", "2"] and values["0"] == pytest.approx(10.0, abs=0.5)
    assert row["bd_rate_vs_float_pct"] == pytest.approx(sum(values.values()) / 3)
    assert row["bd_rate_vs_float_pct_std"] == pytest.approx(values["1"] - values["0"], rel=0.1)
    assert row["bd_rate_vs_float_pct_photos2"] == pytest.approx(20.0, abs=1.0)
    assert row["bd_rate_vs_float_pct_photos2_std"] == pytest.approx(0.0, abs=1e-9)
    assert row["diversity_encoder"] == 0.25 and row["diversity_decoder"] == 0.5 and row["seeds"] == [0, 1, 2]
    assert row["seed_spread"]["delta_bpp_pct_std"] > 0
    summary = {"mode": "full", "settings": {"train": {"steps": 200}}, "eval_sets": {"kodak": {}, "photos2": {}},
               "rows": [row], "models": ["m"]}
    table = report.readme_table(summary)
    assert table.splitlines()[0].count("|") == 11 and "BD-rate photos2" in table and "±" in table
    assert "±" in report.markdown_table(summary)


def test_a_partial_run_keeps_the_other_rows_with_their_own_run():
    report = _bench_module("bench_report")
    previous = {"mode": "full", "command": "python benchmarks/run.py --steps 200", "generated": "2026-01-01T00:00:00Z",
                "settings": {"train": {"steps": 200}}, "model": "ScaleHyperprior(N=64, M=96)",
                "references": [{"checkpoint": "checkpoints/reference/bmshj2018-hyperprior-N64-M96-q2.pt"}],
                "rows": [{"method": "float"}, {"method": "lsq-int4"}, {"method": "dynaquant-int8"}]}
    new = {"mode": "full", "command": "python benchmarks/run.py --methods dynaquant-int8", "generated": "now",
           "models": ["bmshj2018-hyperprior-N64-M96"],
           "rows": [{"model": "bmshj2018-hyperprior-N64-M96", "method": m, "run": {"command": "new"}}
                    for m in ("float", "dynaquant-int8")]}
    merged = report.merge_summaries(previous, new, ["float", "lsq-int4", "dynaquant-int8"], {"lsq-int4": "dynaquant"})
    assert [r["method"] for r in merged["rows"]] == ["float", "lsq-int4", "dynaquant-int8"]
    kept = merged["rows"][1]
    assert kept["model"] == "bmshj2018-hyperprior-N64-M96" and kept["kind"] == "dynaquant"
    assert kept["run"]["command"] == previous["command"] and kept["run"]["settings"] == previous["settings"]
    assert merged["rows"][2]["run"]["command"] == "new"
    assert report.merge_summaries(dict(previous, mode="quick"), new) is new  # another mode: nothing merged


def test_readme_table_is_generated_from_the_committed_summary(tmp_path):
    report = _bench_module("bench_report")
    summary = json.loads((REPO / "benchmarks" / "results" / "summary.json").read_text())
    readme = (REPO / "README.md").read_text()
    section = readme.split(report.README_BEGIN, 1)[1].split(report.README_END, 1)[0]
    assert section.strip() == report.readme_table(summary).strip(), \
        "regenerate it: python benchmarks/bench_report.py --update-readme"
    copy = tmp_path / "README.md"
    copy.write_text(f"intro\n{report.README_BEGIN}\nstale\n{report.README_END}\noutro\n")
    assert report.update_readme(copy, summary)
    assert "stale" not in copy.read_text() and copy.read_text().startswith("intro\n")
    assert copy.read_text().endswith(f"{report.README_END}\noutro\n")
    plain = tmp_path / "PLAIN.md"
    plain.write_text("no markers\n")
    assert not report.update_readme(plain, summary) and plain.read_text() == "no markers\n"


def test_the_committed_summary_renders_and_plots(tmp_path):
    report = _bench_module("bench_report")
    summary = json.loads((REPO / "benchmarks" / "results" / "summary.json").read_text())
    assert "| dynaquant-int8 |" in report.markdown_table(summary)
    png, pdf = report.pareto(summary, tmp_path / "pareto.png")
    assert png.read_bytes()[:4] == b"\x89PNG" and pdf.read_bytes()[:4] == b"%PDF"


@needs_data
def test_dynamic_targets_lie_inside_the_reachable_range():
    from dynaquant_brevitas.io.checkpoint import load_model

    methods = _bench_module("bench_methods")
    model = load_model(REFERENCE)
    ranges = methods.reachable_bits(model, methods.BY_NAME["dyn-w468-a8-bitops7"], (1, 3, 256, 384))
    assert ranges["bitops"][0] == pytest.approx(5.99, abs=0.02) and ranges["bitops"][1] == pytest.approx(8.0)
    for method in methods.METHODS:
        if method.dynamic and not method.fit and method.schedule.get("bit_cost") in ("bitops", "size"):
            low, high = methods.reachable_bits(model, method, (1, 3, 256, 384))[method.schedule["bit_cost"]]
            assert low + 0.5 < method.schedule["target_bits"] < high, method.name
    too_low = methods.Method("x", "dynaquant", "", methods.BY_NAME["dyn-w468-a8-bitops7"].quant,
                             {"bit_cost": "bitops", "target_bits": 6.0})
    with pytest.raises(ValueError, match="outside the reachable range"):
        methods.check_target(model, too_low)


def test_unusual_content_set_is_deterministic(tmp_path):
    from dynaquant_brevitas.evaluation import datasets

    first = datasets.unusual(tmp_path / "a", size=64, seed=3)
    second = datasets.unusual(tmp_path / "b", size=64, seed=3)
    assert [p.name for p in first] == [f"{n}.png" for n in datasets.UNUSUAL] and len(first) == 8
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(first, second))
    manifest = json.loads((tmp_path / "a" / "MANIFEST.json").read_text())
    means = {e["name"]: e["mean"] for e in manifest["images"]}
    assert means["dark"] < 0.08 and means["bright"] > 0.9


def test_content_robustness_on_a_tiny_model(tmp_path):
    import torch
    from compressai.models import ScaleHyperprior

    from dynaquant_brevitas import DynaQuantConfig, calibrate, dynaquantize
    from dynaquant_brevitas.io.checkpoint import save_model
    from dynaquant_brevitas.transform.ptq import ptq

    torch.manual_seed(0)
    float_model = ScaleHyperprior(8, 12)
    paths = {"float": save_model(float_model, tmp_path / "float.pt")}
    images = [torch.rand(3, 96, 96) for _ in range(2)]
    paths["ptq-int8"] = save_model(ptq(_copy(float_model), images, crops=2, crop_size=64, progress=False),
                                   tmp_path / "ptq.pt")
    dynamic = dynaquantize(_copy(float_model), DynaQuantConfig(candidate_bits=(4, 8)))
    calibrate(dynamic, [torch.rand(2, 3, 64, 64)])
    paths["dynamic"] = save_model(dynamic, tmp_path / "dynamic.pt")
    robustness = _bench_module("content_robustness")
    output = tmp_path / "content_robustness.json"
    assert robustness.main(["--quick", "--float", str(paths["float"]), "--model", f"ptq-int8={paths['ptq-int8']}",
                            "--model", f"dynamic={paths['dynamic']}", "--work", str(tmp_path / "data"),
                            "--output", str(output)]) == 0
    result = json.loads(output.read_text())
    assert result["command"].startswith("python benchmarks/content_robustness.py --quick")
    assert len(result["per_image"]) == 8 and set(result["summary"]) == {"ptq-int8", "dynamic"}
    for row in result["per_image"]:
        for name, entry in row["models"].items():
            assert entry["delta_psnr_db"] == pytest.approx(entry["psnr"] - row["float"]["psnr"])
    assert "avg_bits" in result["per_image"][0]["models"]["dynamic"]


def _copy(model):
    import copy

    return copy.deepcopy(model)


@pytest.mark.skipif(not (REPO.parent / "shared/data/kodak").is_dir(), reason="needs ../shared/data/kodak")
def test_cross_platform_harness_on_one_image(tmp_path):
    """benchmarks/cross_platform.py end to end on one Kodak image: the integer path decodes its
    latents exactly under every perturbation (the float model's counts depend on the image)."""
    harness = _bench_module("cross_platform")
    assert harness.main(["--quick", "--images", "1", "--output", str(tmp_path / "cp.json")]) == 0
    rows = json.loads((tmp_path / "cp.json").read_text())["rows"]
    integer = [r for r in rows if r["path"] == "integer"]
    assert {r["perturbation"] for r in integer} == set(harness.PERTURBATIONS)
    assert all(r["exact"] == r["images"] == 1 for r in integer)
    assert {r["path"] for r in rows} == {"float", "fake-quant", "integer"}


def test_brevitas_baseline_keeps_a_context_models_mask():
    """The stock-Brevitas baseline swaps a checkerboard context model's masked convolution too, and
    the masked weights stay zero through training steps."""
    import torch
    from brevitas.nn import QuantConv2d
    from compressai.models import Cheng2020AnchorCheckerboard

    methods = _bench_module("bench_methods")
    torch.manual_seed(0)
    model = methods.brevitas_int8(Cheng2020AnchorCheckerboard(N=8))
    context = model.latent_codec["y"].context_prediction
    assert isinstance(context, QuantConv2d) and not bool(context.mask.all())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2):
        out = model(torch.rand(1, 3, 64, 64))
        optimizer.zero_grad()
        sum(lik.log().sum() for lik in out["likelihoods"].values()).neg().backward()
        optimizer.step()
        model(torch.rand(1, 3, 64, 64))
    assert float(context.weight.detach()[context.mask == 0].abs().max()) == 0.0


@needs_data
def test_selector_fit_study_quick_caches_its_table(tmp_path):
    """benchmarks/selector_fit_study.py on run.py --quick's settings: each variant's report
    compares the fitted selectors with the single profile and the oracle, and a second run reuses
    the measured choice table."""
    study = _bench_module("selector_fit_study")
    args = ["--quick", "--quality", "4", "--variants", "default,scale-long-fast,ridge", "--fit-steps", "20",
            "--work", str(tmp_path / "work"), "--output", str(tmp_path / "study.json")]
    assert study.main(args) == 0
    tables = list((tmp_path / "work" / "selector_fit_study").glob("*.pt"))
    assert len(tables) == 1
    result = json.loads((tmp_path / "study.json").read_text())
    assert result["command"].startswith("python benchmarks/selector_fit_study.py --quick")
    assert set(result["variants"]) == {"default", "scale-long-fast", "ridge"}
    assert result["table"]["crops"] == 4 and set(result["table"]["delta_rd"]) == set(result["table"]["base"])
    for report in result["variants"].values():
        # the oracle is the best per-crop choice at the selectors' own cost: never worse than one profile
        assert report["oracle"]["delta_rd"] <= report["static"]["delta_rd"] + 1e-9
        assert report["dynamic"]["cost"] <= report["budget"] + 0.5
    stamp = tables[0].stat().st_mtime_ns
    assert study.main(args[:4] + ["default"] + args[5:]) == 0
    assert tables[0].stat().st_mtime_ns == stamp
