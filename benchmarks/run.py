"""The comparison against baselines: every method fine-tuned from the float references, evaluated
with real bitstreams on Kodak and a second photo set, measured (bits, packed size, latency,
training-step time, per-image oracle).

Writes, under ``--output`` (default ``benchmarks/results``):

* ``runs/<method>/q<quality>[.seed<S>][.<set>].json``: one (method, quality, seed, evaluation set)
  point (evaluation with per-image records; on Kodak also bits and sizes); ``latency.json``,
  ``train_step.json`` and (dynamic methods) ``oracle.json`` per method. Models of another family
  than ScaleHyperprior(64, 96) go under ``runs/<model>/<method>/``. These are the cache: a rerun
  skips every file whose settings key still matches, so an interrupted run continues where it
  stopped (training itself resumes from its last checkpoint). Training is keyed on the training
  settings only, so a new evaluation set evaluates the trained checkpoints without training;
* ``summary.json`` (one row per model and method, field meanings in ``fields``; a run of some
  methods keeps the other rows, each with the command, date and settings it was measured with),
  ``summary.md`` (the tables, generated from the JSON), ``rd.png`` (rate-distortion) and
  ``pareto.png``/``.pdf`` (BD-rate against BitOPs bits and against weight bits).

Training checkpoints, sensitivities, generated images, packed files and ONNX graphs go to ``--work``
(default ``runs/bench``, not committed). Methods: ``benchmarks/bench_methods.py``; settings:
``benchmarks/config.yaml``; generated evaluation sets: ``benchmarks/datasets.py``.

Usage::

    python benchmarks/run.py                                   # full run: hours, resumable
    python benchmarks/run.py --quick --output /tmp/bench       # smoke test, every method, a few minutes
    python benchmarks/run.py --methods float,dynaquant-int8 --references checkpoints/reference/a.pt,...
    python benchmarks/run.py --methods dynaquant-int8 --seeds 0,1,2   # seed spread of the BD-rate
    python benchmarks/run.py --eval-sets kodak --no-timing --no-oracle
    python benchmarks/run.py --list                            # the methods
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported: one thread, stable timings

import argparse  # noqa: E402
import contextlib  # noqa: E402
import copy  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Dict, Iterator, List, Optional, Tuple  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402
import yaml  # noqa: E402

import bench_measure  # noqa: E402
import bench_methods  # noqa: E402
import bench_report  # noqa: E402

DEFAULT_OUTPUT = ROOT / "benchmarks" / "results"
#: the model family whose results live directly under runs/<method>/ (others under runs/<model>/<method>/)
PRIMARY_MODEL = "bmshj2018-hyperprior-N64-M96"
#: --quick: 2 fine-tuning steps on tiny batches, 2 crops per evaluation set, one reference, small timings.
QUICK = {
    "train": {"steps": 2, "batch_size": 2, "patch_size": 128, "calibration_batches": 2},
    "eval": {"max_images": 2, "crop": 256},
    "eval_sets": {"max_images": 2, "crop": 256},  # applied to every further set
    "latency": {"height": 256, "width": 256, "repeats": 3, "warmup": 1, "int8_calibration_images": 2,
                "int8_calibration_size": 128},
    "train_step": {"batch_size": 2, "patch_size": 64, "repeats": 3, "warmup": 1},
    "sensitivity": {"crops": 2, "crop_size": 64},
    "ptq": {"crops": 2, "crop_size": 64, "progress": False},
    "oracle": {"max_profiles": 3},
    "selector_fit": {"images": 2, "crops": 4, "crop_size": 64},
}
QUICK_METHODS = "all"  # every method, each on the tiny settings above: 3-6 minutes on one core
LAMBDAS = {1: 0.0018, 2: 0.0035, 3: 0.0067, 4: 0.013, 5: 0.025, 6: 0.0483, 7: 0.0932, 8: 0.18}
key_of = bench_methods.key_of
#: changes when evaluation.oracle's definition does, so that cached oracle results are recomputed
ORACLE_DEFINITION = "oracle at the single profile's cost"


# --------------------------------------------------------------------------- settings


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke test: 2 steps, 2 crops of 256 px per evaluation set, one "
                   "reference, small timings; never writes into benchmarks/results")
    p.add_argument("--methods", help="comma-separated method names, or 'all' (default: all; float, the anchor, is always run)")
    p.add_argument("--references", help="comma-separated float reference checkpoints (default: config.yaml's list)")
    p.add_argument("--config", type=Path, default=HERE / "config.yaml", help="settings file (default: %(default)s)")
    p.add_argument("--steps", type=int, help="fine-tuning steps per method and quality (overrides the config)")
    p.add_argument("--seeds", help="comma-separated training seeds, each trained separately (default: train.seed); "
                   "rows report the BD-rate's mean, standard deviation and per-seed values")
    p.add_argument("--eval-sets", help="comma-separated evaluation sets (default: eval.sets of the config); Kodak is "
                   "always evaluated (bits, sizes and the main BD-rate come from it)")
    p.add_argument("--no-timing", action="store_true", help="measure no latency and no training-step time (cached "
                   "timings that still match are reported)")
    p.add_argument("--no-oracle", action="store_true", help="skip the per-image oracle bound of dynamic methods")
    p.add_argument("--output", type=Path, help="results folder (default: benchmarks/results; --quick: runs/bench-quick)")
    p.add_argument("--work", type=Path, help="checkpoints, packed files, ONNX (default: runs/bench, or OUTPUT/work)")
    p.add_argument("--force", action="store_true", help="recompute even where a cached result matches")
    p.add_argument("--list", action="store_true", help="list the methods and exit")
    return p.parse_args(argv)


def _resolve(path: Any) -> Path:
    path = Path(path)
    return path if path.is_absolute() else ROOT / path


def _rel(path: Any) -> str:
    from bench_measure import repo_relative

    return repo_relative(path)


#: the keys every settings file must define, per section
REQUIRED_SETTINGS = {
    "train": ("data", "steps", "lr", "batch_size", "patch_size", "calibration_batches", "seed"),
    "eval": ("images", "max_images", "crop"),
    "latency": ("quality", "height", "width", "repeats", "warmup", "int8_kernel", "int8_calibration_images",
                "int8_calibration_size"),
    "train_step": ("batch_size", "patch_size", "repeats", "warmup"),
    "sensitivity": ("crops", "crop_size", "seed"),
    "ptq": ("crops", "crop_size"),
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
    settings.setdefault("eval_sets", {})
    settings.setdefault("oracle", {"max_profiles": 8})
    settings.setdefault("selector_fit", {"images": 96, "crops": 384, "crop_size": 128})
    if args.quick:
        for section, values in QUICK.items():
            if section == "eval_sets":
                for spec in settings["eval_sets"].values():
                    spec.update(values)
            else:
                settings[section].update(values)
    if args.steps:
        settings["train"]["steps"] = args.steps
    # one spelling of the training data, whatever the config or the working folder: the cache key
    settings["train"]["data"] = os.path.realpath(_resolve(settings["train"]["data"]))
    return settings


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def references(settings: Dict[str, Any], args: argparse.Namespace) -> List[Dict[str, Any]]:
    """The reference families: quality, lambda, checkpoint, whether it exists (its SHA-256 and model)."""
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
        ref["model"] = _model_of(path)
    return sorted(refs, key=lambda r: (r["model"] != PRIMARY_MODEL, r["model"], r["quality"]))


def _model_of(path: Path) -> str:
    """The model family of a reference: ``<arch>-N64-M96`` from the checkpoint (or its file name)."""
    if path.is_file():
        from dynaquant_brevitas.io.checkpoint import load_checkpoint

        ckpt = load_checkpoint(path)
        if ckpt.get("arch"):
            return "-".join([ckpt["arch"]] + [f"{k}{v}" for k, v in (ckpt.get("model_kwargs") or {}).items()])
    return re.sub(r"-q\d+$", "", path.stem)


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


def _cached(path: Path, key: str, force: bool, then: str = "recomputing") -> Optional[Dict[str, Any]]:
    if force or not path.exists():
        return None
    data = json.loads(path.read_text())
    if data.get("key") == key:
        return data
    print(f"  {_rel(path)}: settings changed since it was written, {then}", flush=True)
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


# --------------------------------------------------------------------------- evaluation sets


def eval_sets(settings: Dict[str, Any], names: Optional[str]) -> Dict[str, Dict[str, Any]]:
    """The evaluation sets to run, Kodak first: ``{name: {"images" | "generate", "max_images", "crop"}}``."""
    wanted = [n.strip() for n in (names.split(",") if names else settings["eval"].get("sets") or ["kodak"]) if n.strip()]
    known = {"kodak": {k: settings["eval"][k] for k in ("images", "max_images", "crop")}, **settings["eval_sets"]}
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise SystemExit(f"unknown evaluation set(s) {unknown}; known: {', '.join(known)} (config.yaml eval_sets)")
    return {name: dict(known[name]) for name in ["kodak"] + [n for n in wanted if n != "kodak"]}


def source_images(name: str, spec: Dict[str, Any], settings: Dict[str, Any], work: Path) -> List[Path]:
    """A set's image files before cropping: a folder, or written by ``dynaquant_brevitas.evaluation.datasets``."""
    from dynaquant_brevitas.io.images import list_images

    if spec.get("generate"):
        from dynaquant_brevitas.evaluation import datasets

        writer = datasets.GENERATED[spec["generate"]]
        folder = work / "datasets" / name
        if spec["generate"] == "photos2":
            return writer(folder, train=Path(settings["train"]["data"]))
        return writer(folder)
    return list_images(_resolve(spec["images"]))


def set_images(name: str, spec: Dict[str, Any], settings: Dict[str, Any], work: Path) -> List[Path]:
    """A set's evaluation images: its first ``max_images``, centre-cropped to ``crop`` pixels when set
    (smaller sides are kept: the evaluation pads to a multiple of 64)."""
    from PIL import Image

    files = source_images(name, spec, settings, work)
    if spec.get("max_images"):
        files = files[: int(spec["max_images"])]
    crop = spec.get("crop")
    if not crop:
        return files
    folder = work / "images" / f"{name}-crop{crop}"
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for f in files:
        target = folder / f"{f.stem}.png"
        if not target.exists():
            with Image.open(f) as img:
                w, h = img.size
                cw, ch = min(crop, w), min(crop, h)
                left, top = (w - cw) // 2, (h - ch) // 2
                img.convert("RGB").crop((left, top, left + cw, top + ch)).save(target)
        out.append(target)
    return out


def _files_digest(files: List[Path]) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        h.update(_sha256(f).encode())
    return h.hexdigest()[:16]


def latency_image(settings: Dict[str, Any], candidates: List[Path]) -> Tuple[Optional[torch.Tensor], Optional[str], Optional[str]]:
    """The first candidate image at least the latency size (either orientation), landscape and
    centre-cropped to it: ``((1, 3, H, W), its name, None)``; ``(None, None, reason)`` when none is."""
    from dynaquant_brevitas.io.images import read_image

    h, w = int(settings["latency"]["height"]), int(settings["latency"]["width"])
    for path in candidates:
        x = read_image(path)
        if x.shape[2] > x.shape[3]:
            x = x.transpose(2, 3)
        if x.shape[2] < h or x.shape[3] < w:
            continue
        top, left = (x.shape[2] - h) // 2, (x.shape[3] - w) // 2
        return x[:, :, top : top + h, left : left + w].contiguous(), path.name, None
    return None, None, (f"no evaluation image is at least {w}x{h} in either orientation ({len(candidates)} tried): "
                        "latency not measured")


# --------------------------------------------------------------------------- one (method, quality, seed)


class Run:
    """One (method, reference, seed): its training key, run folder and ``TrainConfig``."""

    def __init__(self, method, ref: Dict[str, Any], seed: int, settings: Dict[str, Any], work: Path) -> None:
        self.method, self.ref, self.seed, self.settings, self.work = method, ref, seed, settings, work
        self.train = dict(settings["train"], seed=seed)
        # a method with `fit` shares the training of the method it follows
        self.trained_as = trained_as = bench_methods.BY_NAME[method.fit["after"]] if method.fit else method
        self.train["steps"] = int(self.train["steps"]) * trained_as.steps_factor
        extra: Dict[str, Any] = {}
        if trained_as.kind == "mixed":
            extra["sensitivity"] = settings["sensitivity"]
        if trained_as.kind == "ptq":
            extra["ptq"] = {k: v for k, v in settings["ptq"].items() if k != "progress"}
        # an `around` method starts from the trained static model of another row
        self.static = Run(bench_methods.BY_NAME[method.around], ref, seed, settings, work) if method.around else None
        if self.static:
            extra["around"] = self.static.key
        trains = trained_as.trained or trained_as.kind in bench_methods.POST_TRAINING_KINDS
        self.key = key_of("train", trained_as.spec(), ref["sha256"], self.train if trains else None, extra)
        self.dir = work / "train" / trained_as.name / f"q{ref['quality']}-{self.key[:8]}"
        if method.fit:
            self.key = key_of("fit", self.key, method.spec(), settings["selector_fit"])
        self.mixed: Optional[Dict[str, Any]] = None

    def config(self, with_profile: bool = True):
        """The ``TrainConfig`` (``None`` for the float reference); a mixed method's profile is
        computed from the (cached) sensitivity when ``with_profile``."""
        if self.method.kind == "float":
            return None
        profile = None
        if self.trained_as.kind == "mixed" and with_profile:
            sens = bench_methods.sensitivity_of(self.ref, self.settings["sensitivity"], self.train["data"], self.work,
                                                  self.trained_as)
            self.mixed = bench_methods.mixed_profile_of(self.trained_as, sens)
            profile = self.mixed["profile"]
        return bench_methods.train_config(self.trained_as, self.ref, self.train, self.dir, profile=profile)

    def obtain(self) -> Dict[str, Any]:
        if self.method.dynamic and self.ref.get("available"):
            from dynaquant_brevitas.io.checkpoint import load_model

            bench_methods.check_target(load_model(self.ref["checkpoint"]), self.method)
        static = self.static.obtain()["checkpoint"] if self.static else None
        cfg = self.config()
        got = bench_methods.obtain_model(self.trained_as, self.ref, cfg, int(self.settings["train"]["calibration_batches"]),
                                         self.settings["ptq"], static)
        if self.method.fit:
            got = bench_methods.refit_selectors(self.method, got, self.ref, cfg, self.settings["selector_fit"])
        return got


def run_point(run: Run, got: Dict[str, Any], set_name: str, images: List[Path], work: Path, key: str,
              machine: Dict[str, Any]) -> Dict[str, Any]:
    """Evaluate one model on one set with real bitstreams; on Kodak also count bits and pack."""
    from dynaquant_brevitas.evaluation import LoadedModel, evaluate_model
    from dynaquant_brevitas.transform.cost import layer_macs

    method, ref = run.method, run.ref
    model = got["model"]
    start = time.time()
    evaluation = evaluate_model(LoadedModel(model, method.name, got["checkpoint"] or method.name), images)
    eval_seconds = time.time() - start
    summary = evaluation["summary"]
    point = {
        "method": method.name,
        "model": ref["model"],
        "eval_set": set_name,
        "quality": ref["quality"],
        "lmbda": ref["lmbda"],
        "seed": run.seed,
        "reference": _rel(ref["checkpoint"]),
        "reference_sha256": ref["sha256"],
        "key": key,
        "train_key": run.key,
        "bpp": summary["bpp"],
        "psnr": summary["psnr-rgb"],
        "ms_ssim": summary.get("ms-ssim-rgb"),
        "avg_dynamic_layer_bits": summary.get("avg_bits"),
        "diversity": summary.get("diversity"),
        "training_steps": run.train["steps"] if method.trained else 0,
        "train_seconds": got["train_seconds"],
        "trained_now": got["trained_now"],
        "checkpoint": _rel(got["checkpoint"]) if got["checkpoint"] else None,
        "eval_seconds": eval_seconds,
        "images": [p.name for p in images],
        "evaluation": evaluation,
        "machine_line": bench_measure.machine_line(machine),
    }
    if run.mixed:
        point["mixed_profile"] = run.mixed
    if got.get("fit"):
        point["selector_fit"] = got["fit"]
    if set_name == "kodak":
        size = bench_measure.read_size(images[0])
        macs = layer_macs(model, (1, 3, size[1], size[0]))
        mean_profile, mode_profile = bench_measure.profiles_from_eval(evaluation)
        point.update(
            bits=bench_measure.bit_figures(model, macs, mean_profile),
            bits_macs_input=[1, 3, size[1], size[0]],
            mode_profile=mode_profile,
            size=bench_measure.size_figures(model, evaluation, work / "packed" / ref["model"] / method.name
                                            / f"q{ref['quality']}-s{run.seed}"),
        )
    return point


def run_latency(run: Run, got: Dict[str, Any], point: Dict[str, Any], image: torch.Tensor, settings: Dict[str, Any],
                work: Path, key: str) -> Dict[str, Any]:
    from dynaquant_brevitas.io.checkpoint import load_model

    lat = settings["latency"]
    float_model = load_model(run.ref["checkpoint"]).eval()
    model = None if run.method.kind == "float" else got["model"]
    calibration = None
    if model is not None:
        calibration = bench_measure.calibration_crops(
            settings["train"]["data"], int(lat["int8_calibration_images"]), int(lat["int8_calibration_size"]))
    result = bench_measure.measure_latency(
        model, float_model, image, work / "onnx" / run.ref["model"] / run.method.name, int(lat["repeats"]),
        int(lat["warmup"]), profile=point.get("mode_profile"), calibration=calibration,
        int8_kernels=(str(lat["int8_kernel"]),),
    )
    machine = bench_measure.machine_info()
    result.update(key=key, method=run.method.name, quality=run.ref["quality"], machine=machine,
                  machine_line=bench_measure.machine_line(machine))
    return result


def run_train_step(run: Run, settings: Dict[str, Any], work: Path, key: str) -> Dict[str, Any]:
    from dynaquant_brevitas.io.checkpoint import load_checkpoint, load_model
    from dynaquant_brevitas.io.images import ImageFolderCrops
    from dynaquant_brevitas.training.data_order import batches_from, seed_everything
    from dynaquant_brevitas.training.distributed import Dist
    from dynaquant_brevitas.training.state import make_state

    ts = settings["train_step"]
    timing = dict(run.train, batch_size=ts["batch_size"], patch_size=ts["patch_size"])
    folder = work / "train-step" / run.ref["model"]
    timed = Run(run.method, run.ref, run.seed, dict(settings, train=timing), work)
    timed.dir = folder / run.method.name
    cfg = timed.config()
    float_cfg = bench_methods.train_config(bench_methods.BY_NAME["float"], run.ref, timing, folder / "float")
    seed_everything(cfg.train.seed)
    dataset = ImageFolderCrops(cfg.data.root, cfg.data.patch_size)
    batches = batches_from(dataset, cfg, 0, Dist())
    x = next(batches)
    float_model = load_model(run.ref["checkpoint"])
    model = bench_methods.fresh_quantized(run.method, float_model, cfg, [next(batches)])
    ckpt = load_checkpoint(run.ref["checkpoint"])
    arch, kwargs = ckpt["arch"], dict(ckpt["model_kwargs"])
    float_state = make_state(copy.deepcopy(float_model), float_cfg, arch, kwargs)
    state = make_state(model, cfg, arch, kwargs)
    result = bench_measure.measure_train_step(float_state, float_cfg, state, cfg, x, int(ts["repeats"]), int(ts["warmup"]))
    machine = bench_measure.machine_info()
    result.update(key=key, method=run.method.name, quality=run.ref["quality"], machine=machine,
                  machine_line=bench_measure.machine_line(machine))
    return result


def run_oracle(run: Run, got: Dict[str, Any], point: Dict[str, Any], images: List[Path], settings: Dict[str, Any],
               key: str) -> Dict[str, Any]:
    cost = run.method.schedule.get("bit_cost", "layers")
    result = bench_measure.oracle_figures(got["model"], point, images, float(run.ref["lmbda"]),
                                          "size" if cost == "size" else "bitops",
                                          int(settings["oracle"].get("max_profiles") or 8))
    result.update(key=key, method=run.method.name, quality=run.ref["quality"], seed=run.seed)
    return result


# --------------------------------------------------------------------------- main


def method_dir(output: Path, model: str, method_name: str) -> Path:
    return output / "runs" / (method_name if model == PRIMARY_MODEL else f"{model}/{method_name}")


def point_name(quality: int, seed: int, default_seed: int, set_name: str) -> str:
    return (f"q{quality}" + (f".seed{seed}" if seed != default_seed else "")
            + (f".{set_name}" if set_name != "kodak" else "") + ".json")


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if args.list:
        for m in bench_methods.METHODS:
            print(f"{m.name:<26} {m.description}")
        for alias, name in bench_methods.ALIASES.items():
            print(f"{alias:<26} (selects {name})")
        return 0
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=UserWarning)
    output = (args.output or (ROOT / "runs" / "bench-quick" if args.quick else DEFAULT_OUTPUT)).resolve()
    if args.quick and output == DEFAULT_OUTPUT.resolve():
        raise SystemExit("--quick must not write into benchmarks/results (the committed results): pass --output")
    work = (args.work or (ROOT / "runs" / "bench" if output == DEFAULT_OUTPUT.resolve() else output / "work")).resolve()
    settings = load_settings(args)
    sets = eval_sets(settings, args.eval_sets)
    default_seed = int(settings["train"]["seed"])
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else [default_seed]
    refs = references(settings, args)
    available = [r for r in refs if r["available"]]
    if not available:
        raise SystemExit("no reference checkpoint exists: " + ", ".join(r["checkpoint"] for r in refs))
    families: Dict[str, List[Dict[str, Any]]] = {}
    for ref in available:
        families.setdefault(ref["model"], []).append(ref)
    if args.quick:  # one reference per model, the latency quality when present
        for model, group in families.items():
            preferred = [r for r in group if r["quality"] == settings["latency"].get("quality")]
            families[model] = (preferred or group)[:1]
    methods = bench_methods.select(args.methods or (QUICK_METHODS if args.quick else None))
    if all(m.kind != "float" for m in methods):
        methods = [bench_methods.BY_NAME["float"]] + methods  # the anchor of every comparison
    machine = bench_measure.machine_info()
    images = {name: set_images(name, spec, settings, work) for name, spec in sets.items()}
    # an evaluation set is known by its images' contents (not where they lie), max_images and crop
    set_keys = {name: key_of("eval-set", name, {k: v for k, v in spec.items() if k != "images"}, _files_digest(images[name]))
                for name, spec in sets.items()}
    # chosen even with --no-timing: its name is part of the timings' cache key
    timing_image, timing_image_name, latency_note = latency_image(settings, source_images("kodak", sets["kodak"], settings, work))
    if latency_note and not args.no_timing:
        print(f"latency: {latency_note}", flush=True)
    print(f"benchmark: {len(methods)} methods x {sum(len(g) for g in families.values())} references "
          f"({', '.join(f'{m}: ' + ','.join('q%d' % r['quality'] for r in g) for m, g in families.items())}), "
          f"seeds {seeds}, sets {', '.join(f'{n} ({len(v)} images)' for n, v in images.items())}, "
          f"{settings['train']['steps']} steps; output {_rel(output)}, work {_rel(work)}", flush=True)
    started = time.time()
    # results[model][method][seed][set][quality] = point
    results: Dict[str, Dict[str, Dict[int, Dict[str, Dict[int, Dict[str, Any]]]]]] = {}
    extras: Dict[Tuple[str, str], Dict[str, Any]] = {}
    errors: List[Dict[str, Any]] = []
    for model, group in families.items():
        for method in methods:
            runs_by_seed: Dict[int, Dict[str, Dict[int, Dict[str, Any]]]] = {}
            method_seeds = seeds if (method.trained or method.kind in bench_methods.POST_TRAINING_KINDS) else seeds[:1]
            folder = method_dir(output, model, method.name)
            models_of: Dict[Tuple[int, int], Dict[str, Any]] = {}
            for seed in method_seeds:
                for ref in group:
                    run = Run(method, ref, seed, settings, work)
                    got, failed = None, False
                    for set_name in sets:
                        key = key_of("point", run.key, set_keys[set_name])
                        path = folder / point_name(ref["quality"], seed, default_seed, set_name)
                        point = _cached(path, key, args.force)
                        label = f"{method.name} q{ref['quality']}" + (f" seed {seed}" if len(seeds) > 1 else "") + f" {set_name}"
                        if point is None and failed:
                            continue  # the model could not be obtained: one error is enough
                        if point is None:
                            print(f"- {label}: running", flush=True)
                            t0 = time.time()
                            try:
                                failed = got is None
                                got = got or run.obtain()
                                failed = False
                                point = run_point(run, got, set_name, images[set_name], work, key, machine)
                            except Exception as err:  # keep going: one failed method must not lose a night's run
                                traceback.print_exc()
                                errors.append({"model": model, "method": method.name, "quality": ref["quality"],
                                               "seed": seed, "set": set_name, "stage": "point", "error": repr(err)})
                                continue
                            _write_json(path, point)
                            print(f"  {point['bpp']:.4f} bpp, {point['psnr']:.2f} dB ({time.time() - t0:.0f} s)", flush=True)
                        else:
                            print(f"- {label}: cached", flush=True)
                        runs_by_seed.setdefault(seed, {}).setdefault(set_name, {})[ref["quality"]] = point
                    if got is not None:
                        models_of[(seed, ref["quality"])] = got
            if not runs_by_seed:
                continue
            results.setdefault(model, {})[method.name] = runs_by_seed
            extras[(model, method.name)] = _extras(method, group, seeds[0], runs_by_seed, models_of, settings, args,
                                                   work, folder, timing_image, timing_image_name, images["kodak"], errors)
    summary = build_summary(methods, results, extras, settings, refs, machine, sets, images, seeds, errors, args,
                            output, latency_note)
    with _summary_lock(output):  # runs of other methods may finish at the same time: merge one at a time
        summary = bench_report.merge_summaries(_previous(output / "summary.json"), summary,
                                               [m.name for m in bench_methods.METHODS],
                                               {m.name: m.kind for m in bench_methods.METHODS})
        _write_json(output / "summary.json", summary)
        (output / "summary.md").write_text(bench_report.markdown_table(summary))
        bench_report.plot(summary, output / "rd.png")
        figures = bench_report.pareto(summary, output / "pareto.png")
        if output == DEFAULT_OUTPUT.resolve() and bench_report.update_readme(ROOT / "README.md", summary):
            print("updated the README's benchmark table", flush=True)
    print(bench_report.markdown_table(summary))
    print(f"wrote {_rel(output / 'summary.json')}, summary.md, rd.png, {', '.join(p.name for p in figures)} in "
          f"{time.time() - started:.0f} s" + (f"; {len(errors)} failure(s)" if errors else ""), flush=True)
    return 1 if errors else 0


def _extras(method, group, first_seed, runs_by_seed, models_of, settings, args, work, folder, timing_image,
            timing_image_name, kodak_images, errors) -> Dict[str, Any]:
    """Latency, training-step time and (dynamic methods) the oracle bound of one method, each on
    the latency quality's model of the first seed; cached like the points."""
    out: Dict[str, Any] = {"latency": None, "train_step": None, "oracle": None}
    done = runs_by_seed.get(first_seed, {}).get("kodak", {})
    if not done:
        return out
    ref = next((r for r in group if r["quality"] == settings["latency"].get("quality") and r["quality"] in done),
               next(r for r in group if r["quality"] in done))
    point = done[ref["quality"]]
    run = Run(method, ref, first_seed, settings, work)
    timed = method.kind != "float-ft"  # a float model: its timings are float's
    stages = []
    if timed:
        stages.append(("latency", "latency.json", key_of("latency", method.spec(), ref["sha256"], settings["latency"],
                                                          run.key, point.get("mode_profile"), timing_image_name)))
    if timed and method.trained:
        stages.append(("train_step", "train_step.json", key_of("train_step", method.spec(), ref["sha256"],
                                                              settings["train_step"], run.key)))
    if method.dynamic and not args.no_oracle:
        stages.append(("oracle", "oracle.json", key_of("oracle", point["key"], settings["oracle"], ORACLE_DEFINITION)))
    got = models_of.get((first_seed, ref["quality"]))
    for stage, fname, key in stages:
        path = folder / fname
        skipped = stage != "oracle" and (args.no_timing or timing_image is None)
        result = _cached(path, key, args.force, "not measured" if skipped else "recomputing")
        if result is None and skipped:
            continue  # nothing measured; the row says why
        if result is None:
            print(f"- {method.name}: {stage}", flush=True)
            try:
                if stage != "train_step" and got is None:
                    got = run.obtain()
                if stage == "latency":
                    result = run_latency(run, got, point, timing_image, settings, work, key)
                    result["image"] = timing_image_name
                elif stage == "train_step":
                    result = run_train_step(run, settings, work, key)
                else:
                    result = run_oracle(run, got, point, kodak_images, settings, key)
            except Exception as err:
                traceback.print_exc()
                errors.append({"model": ref["model"], "method": method.name, "quality": ref["quality"], "stage": stage,
                               "error": repr(err)})
                continue
            _write_json(path, result)
        out[stage] = result
    return out


@contextlib.contextmanager
def _summary_lock(output: Path) -> Iterator[None]:
    """Wait for, then hold, the lock on ``output``'s summary files."""
    import fcntl

    with open(output / ".summary.lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _previous(path: Path) -> Optional[Dict[str, Any]]:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        return None


def _latency_of(method, model: str, extras: Dict[Tuple[str, str], Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """A method's timings; the fine-tuned float model has float's graph, so it shares float's."""
    own = (extras.get((model, method.name)) or {}).get("latency")
    return own or ((extras.get((model, "float")) or {}).get("latency") if method.kind == "float-ft" else None)


def build_summary(methods, results, extras, settings, refs, machine, sets, images, seeds, errors, args, output,
                  latency_note) -> Dict[str, Any]:
    command = ("python benchmarks/run.py" + "".join(f" {a}" for a in (sys.argv[1:] if argv_is_cli() else []))).strip()
    generated = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    mode = "quick" if args.quick else "full"
    rows = []
    for model, by_method in results.items():
        float_runs = by_method.get("float", {})
        float_points = next(iter(float_runs.values()), {}) if float_runs else {}
        finetuned = by_method.get("float-finetuned")
        finetuned_points = next(iter(finetuned.values())).get("kodak") if finetuned else None
        for method in methods:
            if method.name not in by_method:
                continue
            ex = extras.get((model, method.name)) or {}
            row = bench_report.method_row(method, by_method[method.name], float_points, _latency_of(method, model, extras),
                                          ex.get("train_step"), finetuned_points, oracle=ex.get("oracle"), model=model)
            if row.get("latency") is None and method.kind != "float-ft":
                row["latency_reason"] = ("--no-timing" if args.no_timing else latency_note) or None
            row["run"] = {"command": command, "generated": generated, "mode": mode, "settings": settings}
            rows.append(row)
    models = list(results)
    return {
        "mode": mode,
        "command": command,
        "generated": generated,
        "model": models[0] if len(models) == 1 else ", ".join(models),
        "models": models,
        "references": [{k: (_rel(v) if k == "checkpoint" else v) for k, v in r.items()} for r in refs],
        "eval_images": _rel(_resolve(settings["eval"]["images"])),
        "eval_image_count": len(images["kodak"]),
        "eval_sets": {name: {"source": _rel(_resolve(spec["images"])) if spec.get("images") else
                             f"benchmarks/datasets.py {spec['generate']}",
                             "images": [p.name for p in images[name]], "max_images": spec.get("max_images"),
                             "crop": spec.get("crop")} for name, spec in sets.items()},
        "seeds": seeds,
        "timing": not args.no_timing,
        "latency_note": latency_note,
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
