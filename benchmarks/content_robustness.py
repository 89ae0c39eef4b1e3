"""Content robustness: how much PSNR quantized codecs lose against their float reference on content
the training photographs do not cover (gradients, saturated colour, text, screen content, noise,
very dark and very bright images), per image, at the same quality setting (same lambda).

Every image is coded for real (``dynaquant_brevitas.evaluation``) by the float reference and by
each quantized model; the report gives, per image and model, the quantized-minus-float PSNR
[dB] and bpp [%] (dynamic models also their average chosen bits), and per model the mean, the
worst image and, with ``--baseline``, how far each image falls below the mean loss on a
photograph set (e.g. Kodak).

Writes ``benchmarks/results/content_robustness.json`` (with the command that produced it).
The images are written by ``benchmarks/datasets.py unusual`` into the work folder unless
``--images`` names a folder.

Usage::

    python benchmarks/content_robustness.py --float checkpoints/reference/bmshj2018-hyperprior-N64-M96-q4.pt \\
        --model ptq-int8=runs/bench/train/ptq-w8a8/q4-<key>/final.pt \\
        --model qat-int8=runs/bench/train/dynaquant-int8/q4-<key>/final.pt \\
        --model dynamic=runs/bench/train/dyn-w468-a8-bitops7/q4-<key>/final.pt --baseline ../shared/data/kodak
    # or take the checkpoints the comparison recorded (benchmarks/results/runs/<method>/q4.json):
    python benchmarks/content_robustness.py --methods ptq-w8a8,dynaquant-int8,dyn-w468-a8-bitops7 --quality 4
    python benchmarks/content_robustness.py --quick ...        # 128 px images, for a smoke test
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Dict, List, Optional, Tuple  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

DEFAULT_OUTPUT = ROOT / "benchmarks" / "results" / "content_robustness.json"
DEFAULT_RESULTS = ROOT / "benchmarks" / "results"


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--float", dest="float_checkpoint", type=Path,
                   help="float reference checkpoint (default with --methods: the one the results record)")
    p.add_argument("--model", action="append", default=[], metavar="NAME=CHECKPOINT",
                   help="a quantized model to compare (repeatable); a NAME that is a brevitas method of "
                        "benchmarks/bench_methods.py is rebuilt with Brevitas's stock layers")
    p.add_argument("--methods", help="comma-separated methods of benchmarks/run.py whose checkpoints its results "
                   "record (runs/<method>/q<quality>.json under --results)")
    p.add_argument("--quality", type=int, default=4, help="with --methods: the reference quality (default 4)")
    p.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help="with --methods: results folder of run.py")
    p.add_argument("--images", type=Path, help="folder of images (default: the unusual-content set, generated)")
    p.add_argument("--size", type=int, default=512, help="side of the generated images (default 512)")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated images (default 0)")
    p.add_argument("--baseline", type=Path, help="photo folder (e.g. ../shared/data/kodak) whose mean PSNR loss "
                   "each image is compared with")
    p.add_argument("--baseline-images", type=int, default=6, help="first N images of --baseline (default 6)")
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "bench" / "datasets",
                   help="where the generated images go (default runs/bench/datasets)")
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON report (default %(default)s)")
    p.add_argument("--quick", action="store_true", help="128 px images and 2 baseline images: a smoke test")
    return p.parse_args(argv)


def _rel(path: Any) -> str:
    from bench_measure import repo_relative

    return repo_relative(path)


def models_from_args(args: argparse.Namespace) -> Tuple[Path, Dict[str, Path], Optional[float]]:
    """The float checkpoint and ``{name: checkpoint}`` from ``--model`` and ``--methods``."""
    models: Dict[str, Path] = {}
    float_checkpoint = args.float_checkpoint
    lmbda = None
    for item in args.model:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"--model takes NAME=CHECKPOINT, got {item!r}")
        models[name] = Path(path)
    for name in (args.methods or "").split(","):
        name = name.strip()
        if not name:
            continue
        record = args.results / "runs" / name / f"q{args.quality}.json"
        if not record.exists():
            raise SystemExit(f"{record} does not exist: run benchmarks/run.py --methods {name} first")
        point = json.loads(record.read_text())
        if not point.get("checkpoint"):
            raise SystemExit(f"{record} records no checkpoint")
        models[name] = _resolve(point["checkpoint"])
        float_checkpoint = float_checkpoint or _resolve(point["reference"])
        lmbda = point.get("lmbda")
    if float_checkpoint is None:
        raise SystemExit("give --float (or --methods, whose results name the reference)")
    if not models:
        raise SystemExit("give at least one --model NAME=CHECKPOINT or --methods")
    for name, path in [("float", float_checkpoint), *models.items()]:
        if not Path(path).is_file():
            raise SystemExit(f"{name}: checkpoint {path} does not exist")
    return Path(float_checkpoint), models, lmbda


def _resolve(path: Any) -> Path:
    path = Path(path)
    return path if path.is_absolute() else ROOT / path


def load(name: str, checkpoint: Path, float_checkpoint: Path) -> Any:
    """A model ready for coding; Brevitas baselines are rebuilt from the float reference."""
    from dynaquant_brevitas.evaluation import prepare_for_coding
    from dynaquant_brevitas.io.checkpoint import load_model

    import bench_methods

    method = bench_methods.BY_NAME.get(bench_methods.ALIASES.get(name, name))
    if method is not None and method.kind == "brevitas":
        return prepare_for_coding(bench_methods.brevitas_from_checkpoint(str(float_checkpoint), checkpoint))
    return prepare_for_coding(load_model(checkpoint))


def code_all(model: Any, images: List[Path]) -> List[Dict[str, Any]]:
    from dynaquant_brevitas.evaluation.evaluate import evaluate_image

    return [evaluate_image(model, path) for path in images]


def _lmbda_of(checkpoint: Path) -> Optional[float]:
    from dynaquant_brevitas.io.checkpoint import load_checkpoint

    return (load_checkpoint(checkpoint).get("train_config") or {}).get("train", {}).get("lmbda")


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if args.quick and args.output.resolve() == DEFAULT_OUTPUT.resolve():
        raise SystemExit("--quick must not write the committed benchmarks/results/content_robustness.json: pass --output")
    import torch

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=UserWarning)
    import bench_measure
    from dynaquant_brevitas.evaluation import datasets
    from dynaquant_brevitas.io.images import list_images

    float_checkpoint, checkpoints, lmbda = models_from_args(args)
    size = 128 if args.quick else args.size
    if args.images:
        images, manifest = list_images(args.images), None
    else:
        folder = args.work / f"unusual-{size}-seed{args.seed}"
        images = datasets.unusual(folder, size, args.seed)
        manifest = json.loads((folder / "MANIFEST.json").read_text())
    baseline = list_images(args.baseline)[: 2 if args.quick else args.baseline_images] if args.baseline else []
    started = time.time()
    print(f"content robustness: float + {len(checkpoints)} model(s) on {len(images)} images"
          + (f" and {len(baseline)} baseline images" if baseline else ""), flush=True)
    float_model = load("float", float_checkpoint, float_checkpoint)
    reference = code_all(float_model, images + baseline)
    per_image = [{"image": r["image"], "float": {"bpp": r["bpp"], "psnr": r["psnr-rgb"]}, "models": {}}
                 for r in reference[: len(images)]]
    summary: Dict[str, Any] = {}
    for name, checkpoint in checkpoints.items():
        print(f"- {name}: {_rel(checkpoint)}", flush=True)
        records = code_all(load(name, checkpoint, float_checkpoint), images + baseline)
        deltas = []
        for i, (rec, ref) in enumerate(zip(records, reference)):
            entry = {"bpp": rec["bpp"], "psnr": rec["psnr-rgb"], "delta_psnr_db": rec["psnr-rgb"] - ref["psnr-rgb"],
                     "delta_bpp_pct": 100.0 * (rec["bpp"] / ref["bpp"] - 1.0) if ref["bpp"] else None}
            if "avg_bits" in rec:
                entry["avg_bits"] = rec["avg_bits"]
                entry["avg_weight_bits"] = rec.get("avg_weight_bits")
            if i < len(images):
                per_image[i]["models"][name] = entry
            deltas.append(entry)
        unusual_deltas, baseline_deltas = deltas[: len(images)], deltas[len(images):]
        worst = min(range(len(images)), key=lambda i: unusual_deltas[i]["delta_psnr_db"])
        base = (sum(d["delta_psnr_db"] for d in baseline_deltas) / len(baseline_deltas)) if baseline_deltas else None
        summary[name] = {
            "checkpoint": _rel(checkpoint),
            "mean_delta_psnr_db": sum(d["delta_psnr_db"] for d in unusual_deltas) / len(images),
            "mean_delta_bpp_pct": sum(d["delta_bpp_pct"] or 0.0 for d in unusual_deltas) / len(images),
            "worst_image": per_image[worst]["image"],
            "worst_delta_psnr_db": unusual_deltas[worst]["delta_psnr_db"],
            "baseline_mean_delta_psnr_db": base,
        }
        if base is not None:
            for i in range(len(images)):
                per_image[i]["models"][name]["delta_psnr_vs_baseline_db"] = unusual_deltas[i]["delta_psnr_db"] - base
        print(f"  mean {summary[name]['mean_delta_psnr_db']:+.2f} dB, worst {summary[name]['worst_image']} "
              f"{summary[name]['worst_delta_psnr_db']:+.2f} dB" + (f", photos {base:+.2f} dB" if base is not None else ""),
              flush=True)
    command = "python benchmarks/content_robustness.py" + "".join(
        f" {a}" for a in (sys.argv[1:] if Path(sys.argv[0]).name == "content_robustness.py" else argv or []))
    machine = bench_measure.machine_info()
    report = {
        "command": command.strip(),
        "generated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "what": "per image, quantized minus float PSNR [dB] and bpp [%] at the same quality setting (same lambda), "
                "real bitstreams (dynaquant_brevitas.evaluation)",
        "float": _rel(float_checkpoint),
        "lmbda": lmbda or _lmbda_of(float_checkpoint),
        "images": {"folder": _rel(images[0].parent), "names": [p.name for p in images],
                   "manifest": manifest},
        "baseline": {"folder": _rel(args.baseline), "names": [p.name for p in baseline]} if baseline else None,
        "models": {name: _rel(path) for name, path in checkpoints.items()},
        "summary": summary,
        "per_image": per_image,
        "machine": machine,
        "seconds": time.time() - started,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    tmp.replace(args.output)
    print(_table(report))
    print(f"wrote {_rel(args.output)} in {report['seconds']:.0f} s", flush=True)
    return 0


def _table(report: Dict[str, Any]) -> str:
    names = list(report["models"])
    lines = ["| image | float PSNR [dB] | " + " | ".join(f"{n}: ΔPSNR [dB] / Δbpp [%]" for n in names) + " |",
             "|---|---|" + "---|" * len(names)]
    for row in report["per_image"]:
        cells = [f"{row['models'][n]['delta_psnr_db']:+.2f} / {row['models'][n]['delta_bpp_pct']:+.1f}" for n in names]
        lines.append(f"| {row['image']} | {row['float']['psnr']:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
