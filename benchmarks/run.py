"""The comparison against baselines: every method fine-tuned from the float references, evaluated
with real bitstreams on Kodak, measured (bits, packed size, latency, training-step time).

Writes, under ``--output`` (default ``benchmarks/results``):

* ``runs/<method>/q<quality>.json``: one (method, quality) point (evaluation with per-image
  records, bits, sizes); ``runs/<method>/latency.json`` and ``train_step.json`` per method.
  These are the cache: a rerun skips every file whose settings key still matches, so an
  interrupted run continues where it stopped (training itself resumes from its last checkpoint);
* ``summary.json`` (one row per method, field meanings in ``fields``), ``summary.md`` (the table,
  generated from the JSON) and ``rd.png`` (the RD plot of all methods).

Training checkpoints, packed files and ONNX graphs go to ``--work`` (default ``runs/bench``,
not committed). Methods: ``benchmarks/bench_methods.py``; settings: ``benchmarks/config.yaml``.

Usage::

    python benchmarks/run.py                                   # full run: hours, resumable
    python benchmarks/run.py --quick --output /tmp/bench       # smoke test, every method, 1-2 minutes
    python benchmarks/run.py --methods float,dynaquant-int8 --references checkpoints/reference/a.pt,...
    python benchmarks/run.py --list                            # the methods
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported: one thread, stable timings

import argparse  # noqa: E402
import copy  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Dict, List, Optional  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402
import yaml  # noqa: E402

import bench_measure  # noqa: E402
import bench_methods  # noqa: E402
import bench_report  # noqa: E402

DEFAULT_OUTPUT = ROOT / "benchmarks" / "results"
#: --quick: 2 fine-tuning steps on tiny batches, 2 Kodak crops, one reference, small timings.
QUICK = {
    "train": {"steps": 2, "batch_size": 2, "patch_size": 128, "calibration_batches": 2},
    "eval": {"max_images": 2, "crop": 256},
    "latency": {"height": 256, "width": 256, "repeats": 3, "warmup": 1, "int8_calibration_images": 2,
                "int8_calibration_size": 128},
    "train_step": {"batch_size": 2, "patch_size": 64, "repeats": 3, "warmup": 1},
}
QUICK_METHODS = "all"  # every method, each on the tiny settings above: about 1.5 minutes on one core
LAMBDAS = {1: 0.0018, 2: 0.0035, 3: 0.0067, 4: 0.013, 5: 0.025, 6: 0.0483, 7: 0.0932, 8: 0.18}


# --------------------------------------------------------------------------- settings


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke test: 2 steps, 2 Kodak crops of 256 px, one reference, "
                   "small timings; never writes into benchmarks/results")
    p.add_argument("--methods", help="comma-separated method names, or 'all' (default: all; float, the anchor, is always run)")
    p.add_argument("--references", help="comma-separated float reference checkpoints (default: config.yaml's list)")
    p.add_argument("--config", type=Path, default=HERE / "config.yaml", help="settings file (default: %(default)s)")
    p.add_argument("--steps", type=int, help="fine-tuning steps per method and quality (overrides the config)")
    p.add_argument("--output", type=Path, help="results folder (default: benchmarks/results; --quick: runs/bench-quick)")
    p.add_argument("--work", type=Path, help="checkpoints, packed files, ONNX (default: runs/bench, or OUTPUT/work)")
    p.add_argument("--force", action="store_true", help="recompute even where a cached result matches")
    p.add_argument("--list", action="store_true", help="list the methods and exit")
    return p.parse_args(argv)


def _resolve(path: Any) -> Path:
    path = Path(path)
    return path if path.is_absolute() else ROOT / path


def _rel(path: Any) -> str:
    """``path`` relative to the repository root (``../shared/...`` for the shared data)."""
    return os.path.relpath(Path(path).resolve(), ROOT)


#: the keys every settings file must define, per section
REQUIRED_SETTINGS = {
    "train": ("data", "steps", "lr", "batch_size", "patch_size", "calibration_batches", "seed"),
    "eval": ("images", "max_images", "crop"),
    "latency": ("quality", "height", "width", "repeats", "warmup", "int8_kernel", "int8_calibration_images",
                "int8_calibration_size"),
    "train_step": ("batch_size", "patch_size", "repeats", "warmup"),
}


def load_settings(args: argparse.Namespace) -> Dict[str, Any]:
    """The settings file, checked for every key the run reads (a clear error names what is missing)."""
    try:
        settings = yaml.safe_load(args.config.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise SystemExit(f"cannot read the settings file {args.config}: {err}") from None
    if not isinstance(settings, dict):
        raise SystemExit(f"{args.config}: expected a mapping of sections, got {type(settings).__name__}")
    missing = [f"{section}.{key}" for section, keys in REQUIRED_SETTINGS.items()
               for key in keys if key not in (settings.get(section) or {})]
    if missing:
        raise SystemExit(f"{args.config}: missing setting(s) {', '.join(missing)} (see benchmarks/config.yaml)")
    if args.quick:
        for section, values in QUICK.items():
            settings[section].update(values)
    if args.steps:
        settings["train"]["steps"] = args.steps
    return settings


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def references(settings: Dict[str, Any], args: argparse.Namespace) -> List[Dict[str, Any]]:
    """The reference family: quality, lambda, checkpoint, whether it exists (and its SHA-256)."""
    if args.references:
        refs = []
        for item in args.references.split(","):
            path = _resolve(item.strip())
            quality, lmbda = _quality_of(path)
            refs.append({"quality": quality, "lmbda": lmbda, "checkpoint": str(path)})
    else:
        refs = [dict(r, checkpoint=str(_resolve(r["checkpoint"]))) for r in settings["references"]]
    for ref in refs:
        path = Path(ref["checkpoint"])
        ref["available"] = path.is_file()
        ref["sha256"] = _sha256(path) if ref["available"] else None
    return sorted(refs, key=lambda r: r["quality"])


def _quality_of(path: Path) -> tuple:
    """Quality and lambda of a reference checkpoint: lambda from its training config, quality from
    CompressAI's lambda table (or a ``-q<N>`` in the file name)."""
    lmbda = quality = None
    if path.is_file():
        from dynaquant_brevitas.io.checkpoint import load_checkpoint

        lmbda = (load_checkpoint(path).get("train_config") or {}).get("train", {}).get("lmbda")
    match = re.search(r"-q(\d+)", path.stem)
    if match:
        quality = int(match.group(1))
    elif lmbda is not None:
        quality = min(LAMBDAS, key=lambda q: abs(LAMBDAS[q] - lmbda))
    if quality is None:
        raise SystemExit(f"cannot tell the quality of {path}: name it ...-q<N>.pt or store train.lmbda in it")
    return quality, lmbda if lmbda is not None else LAMBDAS[quality]


def key_of(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _cached(path: Path, key: str, force: bool) -> Optional[Dict[str, Any]]:
    if force or not path.exists():
        return None
    data = json.loads(path.read_text())
    if data.get("key") == key:
        return data
    print(f"  {_rel(path)}: settings changed since it was written, recomputing", flush=True)
    return None


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=_jsonable) + "\n")
    tmp.replace(path)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


# --------------------------------------------------------------------------- images


def eval_images(settings: Dict[str, Any], work: Path) -> List[Path]:
    """Kodak (or its first ``max_images``), centre-cropped to ``crop`` pixels when set."""
    from PIL import Image

    from dynaquant_brevitas.io.images import list_images

    files = list_images(_resolve(settings["eval"]["images"]))
    if settings["eval"].get("max_images"):
        files = files[: int(settings["eval"]["max_images"])]
    crop = settings["eval"].get("crop")
    if not crop:
        return files
    folder = work / f"images-crop{crop}"
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for f in files:
        target = folder / f"{f.stem}.png"
        if not target.exists():
            with Image.open(f) as img:
                w, h = img.size
                left, top = (w - crop) // 2, (h - crop) // 2
                img.convert("RGB").crop((left, top, left + crop, top + crop)).save(target)
        out.append(target)
    return out


def latency_image(settings: Dict[str, Any]) -> torch.Tensor:
    """The first Kodak image, landscape, centre-cropped to the latency size: ``(1, 3, H, W)``."""
    from dynaquant_brevitas.io.images import list_images, read_image

    x = read_image(list_images(_resolve(settings["eval"]["images"]))[0])
    if x.shape[2] > x.shape[3]:
        x = x.transpose(2, 3)
    h, w = int(settings["latency"]["height"]), int(settings["latency"]["width"])
    top, left = (x.shape[2] - h) // 2, (x.shape[3] - w) // 2
    if top < 0 or left < 0:
        raise SystemExit(f"latency size {w}x{h} is larger than the image {x.shape[3]}x{x.shape[2]}")
    return x[:, :, top : top + h, left : left + w].contiguous()


# --------------------------------------------------------------------------- one point


def run_point(method, ref: Dict[str, Any], settings: Dict[str, Any], images: List[Path], work: Path, key: str,
              machine: Dict[str, Any]) -> Dict[str, Any]:
    """Train (if the method trains), evaluate with real bitstreams, count bits, pack."""
    from dynaquant_brevitas.transform.cost import layer_macs
    from dynaquant_brevitas.evaluation import LoadedModel, evaluate_model

    run_dir = work / "train" / method.name / f"q{ref['quality']}-{key[:8]}"
    cfg = None if method.kind == "float" else bench_methods.train_config(method, ref, settings["train"], run_dir)
    got = bench_methods.obtain_model(method, ref, cfg, int(settings["train"]["calibration_batches"]))
    model = got["model"]
    start = time.time()
    evaluation = evaluate_model(LoadedModel(model, method.name, got["checkpoint"] or method.name), images)
    eval_seconds = time.time() - start
    summary = evaluation["summary"]
    size = bench_measure.read_size(images[0])
    macs = layer_macs(model, (1, 3, size[1], size[0]))
    mean_profile, mode_profile = bench_measure.profiles_from_eval(evaluation)
    return {
        "method": method.name,
        "quality": ref["quality"],
        "lmbda": ref["lmbda"],
        "reference": _rel(ref["checkpoint"]),
        "reference_sha256": ref["sha256"],
        "key": key,
        "bpp": summary["bpp"],
        "psnr": summary["psnr-rgb"],
        "ms_ssim": summary.get("ms-ssim-rgb"),
        "avg_dynamic_layer_bits": summary.get("avg_bits"),
        "bits": bench_measure.bit_figures(model, macs, mean_profile),
        "bits_macs_input": [1, 3, size[1], size[0]],
        "mode_profile": mode_profile,
        "size": bench_measure.size_figures(model, evaluation, work / "packed" / method.name / f"q{ref['quality']}"),
        "training_steps": cfg.train.steps if method.trained else 0,
        "train_seconds": got["train_seconds"],
        "checkpoint": _rel(got["checkpoint"]) if got["checkpoint"] else None,
        "eval_seconds": eval_seconds,
        "images": [p.name for p in images],
        "evaluation": evaluation,
        "machine_line": bench_measure.machine_line(machine),
    }


def run_latency(method, ref: Dict[str, Any], point: Dict[str, Any], settings: Dict[str, Any], work: Path,
                key: str) -> Dict[str, Any]:
    from dynaquant_brevitas.io.checkpoint import load_model

    lat = settings["latency"]
    float_model = load_model(ref["checkpoint"]).eval()
    model = None
    if method.kind != "float":
        run_dir = work / "train" / method.name / f"q{ref['quality']}-{point['key'][:8]}"
        cfg = bench_methods.train_config(method, ref, settings["train"], run_dir)
        model = bench_methods.obtain_model(method, ref, cfg, int(settings["train"]["calibration_batches"]))["model"]
    calibration = None
    if model is not None:
        calibration = bench_measure.calibration_crops(
            str(_resolve(settings["train"]["data"])), int(lat["int8_calibration_images"]), int(lat["int8_calibration_size"]))
    result = bench_measure.measure_latency(
        model, float_model, latency_image(settings), work / "onnx" / method.name, int(lat["repeats"]),
        int(lat["warmup"]), profile=point.get("mode_profile"), calibration=calibration,
        int8_kernels=(str(lat["int8_kernel"]),),
    )
    machine = bench_measure.machine_info()
    result.update(key=key, method=method.name, quality=ref["quality"], machine=machine,
                  machine_line=bench_measure.machine_line(machine))
    return result


def run_train_step(method, ref: Dict[str, Any], settings: Dict[str, Any], work: Path, key: str) -> Dict[str, Any]:
    from dynaquant_brevitas.io.checkpoint import load_model
    from dynaquant_brevitas.io.images import ImageFolderCrops
    from dynaquant_brevitas.training.data_order import batches_from, seed_everything
    from dynaquant_brevitas.training.distributed import Dist
    from dynaquant_brevitas.training.state import make_state

    ts = settings["train_step"]
    timing = dict(settings["train"], batch_size=ts["batch_size"], patch_size=ts["patch_size"])
    cfg = bench_methods.train_config(method, ref, timing, work / "train-step" / method.name)
    float_cfg = bench_methods.train_config(bench_methods.BY_NAME["float"], ref, timing, work / "train-step" / "float")
    seed_everything(cfg.train.seed)
    dataset = ImageFolderCrops(cfg.data.root, cfg.data.patch_size)
    batches = batches_from(dataset, cfg, 0, Dist())
    x = next(batches)
    float_model = load_model(ref["checkpoint"])
    model = bench_methods.fresh_quantized(method, float_model, cfg, [next(batches)])
    arch, kwargs = "bmshj2018-hyperprior", {}
    float_state = make_state(copy.deepcopy(float_model), float_cfg, arch, kwargs)
    state = make_state(model, cfg, arch, kwargs)
    result = bench_measure.measure_train_step(float_state, float_cfg, state, cfg, x, int(ts["repeats"]), int(ts["warmup"]))
    machine = bench_measure.machine_info()
    result.update(key=key, method=method.name, quality=ref["quality"], machine=machine,
                  machine_line=bench_measure.machine_line(machine))
    return result


# --------------------------------------------------------------------------- main


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if args.list:
        for m in bench_methods.METHODS:
            print(f"{m.name:<26} {m.description}")
        return 0
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=UserWarning)
    output = (args.output or (ROOT / "runs" / "bench-quick" if args.quick else DEFAULT_OUTPUT)).resolve()
    if args.quick and output == DEFAULT_OUTPUT.resolve():
        raise SystemExit("--quick must not write into benchmarks/results (the committed results): pass --output")
    work = (args.work or (ROOT / "runs" / "bench" if output == DEFAULT_OUTPUT.resolve() else output / "work")).resolve()
    settings = load_settings(args)
    refs = references(settings, args)
    available = [r for r in refs if r["available"]]
    if not available:
        raise SystemExit("no reference checkpoint exists: " + ", ".join(r["checkpoint"] for r in refs))
    if args.quick:  # one reference, the latency quality when present
        preferred = [r for r in available if r["quality"] == settings["latency"].get("quality")]
        available = (preferred or available)[:1]
    methods = bench_methods.select(args.methods or (QUICK_METHODS if args.quick else None))
    if all(m.kind != "float" for m in methods):
        methods = [bench_methods.BY_NAME["float"]] + methods  # the anchor of every comparison
    machine = bench_measure.machine_info()
    images = eval_images(settings, work)
    print(f"benchmark: {len(methods)} methods x {len(available)} qualities "
          f"({', '.join('q%d' % r['quality'] for r in available)}), {len(images)} images, "
          f"{settings['train']['steps']} steps; output {_rel(output)}, work {_rel(work)}", flush=True)
    started = time.time()
    points: Dict[str, Dict[int, Dict[str, Any]]] = {}
    latencies: Dict[str, Dict[str, Any]] = {}
    steps: Dict[str, Dict[str, Any]] = {}
    errors: List[Dict[str, str]] = []
    eval_key = {k: settings["eval"][k] for k in ("max_images", "crop")}
    for method in methods:
        train_key = settings["train"] if method.trained or method.kind == "ptq" else None
        for ref in available:
            key = key_of(method.spec(), ref["sha256"], train_key, eval_key, [p.name for p in images])
            path = output / "runs" / method.name / f"q{ref['quality']}.json"
            point = _cached(path, key, args.force)
            if point is None:
                print(f"- {method.name} q{ref['quality']}: running", flush=True)
                t0 = time.time()
                try:
                    point = run_point(method, ref, settings, images, work, key, machine)
                except Exception as err:  # keep going: one failed method must not lose a night's run
                    traceback.print_exc()
                    errors.append({"method": method.name, "quality": ref["quality"], "stage": "point", "error": repr(err)})
                    continue
                _write_json(path, point)
                print(f"  {point['bpp']:.4f} bpp, {point['psnr']:.2f} dB ({time.time() - t0:.0f} s)", flush=True)
            else:
                print(f"- {method.name} q{ref['quality']}: cached", flush=True)
            points.setdefault(method.name, {})[ref["quality"]] = point
        done = points.get(method.name, {})
        if not done:
            continue
        lat_ref = next((r for r in available if r["quality"] == settings["latency"].get("quality") and r["quality"] in done),
                       next(r for r in available if r["quality"] in done))
        timed = method.kind != "float-ft"  # a float model: its timings are float's
        for stage, fname, needed in (("latency", "latency.json", timed),
                                     ("train_step", "train_step.json", timed and method.trained)):
            if not needed:
                continue
            section = settings["latency"] if stage == "latency" else settings["train_step"]
            key = key_of(stage, method.spec(), lat_ref["sha256"], section, done[lat_ref["quality"]]["key"])
            path = output / "runs" / method.name / fname
            result = _cached(path, key, args.force)
            if result is None:
                print(f"- {method.name}: {stage}", flush=True)
                try:
                    if stage == "latency":
                        result = run_latency(method, lat_ref, done[lat_ref["quality"]], settings, work, key)
                    else:
                        result = run_train_step(method, lat_ref, settings, work, key)
                except Exception as err:
                    traceback.print_exc()
                    errors.append({"method": method.name, "quality": lat_ref["quality"], "stage": stage, "error": repr(err)})
                    continue
                _write_json(path, result)
            (latencies if stage == "latency" else steps)[method.name] = result
    summary = build_summary(methods, points, latencies, steps, settings, refs, machine, images, errors, args, output)
    _write_json(output / "summary.json", summary)
    (output / "summary.md").write_text(bench_report.markdown_table(summary))
    bench_report.plot(summary, output / "rd.png")
    if output == DEFAULT_OUTPUT.resolve() and bench_report.update_readme(ROOT / "README.md", summary):
        print("updated the README's benchmark table", flush=True)
    print(bench_report.markdown_table(summary))
    print(f"wrote {_rel(output / 'summary.json')}, summary.md, rd.png in {time.time() - started:.0f} s"
          + (f"; {len(errors)} failure(s)" if errors else ""), flush=True)
    return 1 if errors else 0


def _latency_of(method, latencies: Dict[str, Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """A method's timings; the fine-tuned float model has float's graph, so it shares float's."""
    return latencies.get(method.name) or (latencies.get("float") if method.kind == "float-ft" else None)


def build_summary(methods, points, latencies, steps, settings, refs, machine, images, errors, args, output) -> Dict[str, Any]:
    float_points = points.get("float", {})
    rows = [
        bench_report.method_row(m, points[m.name], float_points, _latency_of(m, latencies), steps.get(m.name),
                                points.get("float-finetuned"))
        for m in methods
        if points.get(m.name)
    ]
    command = "python benchmarks/run.py" + "".join(f" {a}" for a in (sys.argv[1:] if argv_is_cli() else []))
    return {
        "mode": "quick" if args.quick else "full",
        "command": command.strip(),
        "generated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": "ScaleHyperprior(N=64, M=96) (bmshj2018-hyperprior)",
        "references": [{k: (_rel(v) if k == "checkpoint" else v) for k, v in r.items()} for r in refs],
        "eval_images": _rel(_resolve(settings["eval"]["images"])),
        "eval_image_count": len(images),
        "settings": settings,
        "machine": machine,
        "finn": bench_report.finn_summary(ROOT / "benchmarks" / "results" / "finn_report.json", _rel),
        "fields": bench_report.FIELDS,
        "rows": rows,
        "errors": errors,
        "runs": _rel(output / "runs"),
    }


def argv_is_cli() -> bool:
    return Path(sys.argv[0]).name == "run.py"


if __name__ == "__main__":
    sys.exit(main())
