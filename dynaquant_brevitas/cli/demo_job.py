"""``dynaquant demo``: the project's main job on a built-in default (what ``make demo`` runs).

Nothing is trained, so the same command gives the same numbers on any machine:

1. rate-distortion curves over the four qualities of the committed ScaleHyperprior(64, 96)
   reference family, float and three of the benchmark's quantized versions
   (``checkpoints/quantized/``: DynaQuant int8, post-training int8, static mixed precision at
   5.5 weight bits), each coded with real bitstreams on a fixed subset of Kodak, with JPEG and
   WebP (Pillow) on the same images for scale, and BD-rates against float;
2. robustness at quality 4: the same models on photographs never used in training
   (``photos2``) and on synthetic unusual content (gradients, text, noise, ...), as the change
   in PSNR and rate against float;
3. one live ``dynaquant quantize`` (post-training quantization) of the q4 reference;
4. the bit widths the dynamic model (weights {3,4,6,8} x activations {6,8}) picks for each image.

It prints the tables, writes ``summary.json``, ``rd.png``/``.pdf`` and ``bits.png``/``.pdf``,
and compares its rows with the committed run (``docs/demo/summary.json``) within
:data:`TOLERANCE`.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import torch

from ..evaluation import bd_rate, evaluate
from ..evaluation.classic import classic_curve
from ..evaluation.datasets import photos2, unusual
from ..evaluation.plot import plot_bit_heatmap, plot_rd
from ..io.checkpoint import load_model
from ..io.files import folder_lock, write_json
from ..transform import average_bits, layer_macs, model_size_bytes

__all__ = ["DEMO_MODELS", "DemoError", "TOLERANCE", "compare_rows", "find_reference", "quantized_checkpoint_name",
           "run_demo"]

FAMILY = "bmshj2018-hyperprior-N64-M96"
QUALITIES = (2, 3, 4, 5)
#: benchmark method -> (label, qualities committed); methods as in ``benchmarks/bench_methods.py``
DEMO_MODELS: Tuple[Tuple[str, Tuple[int, ...]], ...] = (
    ("ablation-int8-no-offset", QUALITIES),  # DynaQuant int8 with the default config (no offsets)
    ("ptq-w8a8", QUALITIES),
    ("mixed-w5.5-a8", QUALITIES),
    ("dyn-w3468-a68-bitops6", (4,)),
)
LABELS = {
    "float": "float",
    "ablation-int8-no-offset": "DynaQuant int8",
    "ptq-w8a8": "PTQ int8",
    "mixed-w5.5-a8": "mixed W5.5A8",
    "dyn-w3468-a68-bitops6": "dynamic ~6 bits",
}
#: a fixed spread of Kodak (every fourth image), to fit the time; the benchmark uses all 24
KODAK_SUBSET = ("kodim01", "kodim05", "kodim09", "kodim13", "kodim17", "kodim21")
SHARED = Path("../shared/data")
#: how far a rerun may differ from the committed run: coding is deterministic, but float kernels
#: differ across CPUs and libraries in the last bits, which can move a rounding decision
TOLERANCE = {"bpp": 0.002, "psnr": 0.02, "bd_rate_pct": 0.2}
COMMITTED = Path("docs/demo/summary.json")


class DemoError(ValueError):
    """The demo cannot run with what it was given."""


def quantized_checkpoint_name(method: str, quality: int) -> str:
    """File name of a committed quantized model, e.g. ``bmshj2018-hyperprior-N64-M96-ptq-w8a8-q4.pt``."""
    return f"{FAMILY}-{method}-q{quality}.pt"


def find_reference(root: Path = Path("checkpoints/reference"), quality: int = 4) -> Path:
    """The committed float reference of :data:`FAMILY` at ``quality``."""
    path = root / f"{FAMILY}-q{quality}.pt"
    if not path.is_file():
        raise DemoError(f"no reference checkpoint {path}: run the demo from the repository's root (--checkpoints)")
    return path


def _checkpoints(root: Path) -> Dict[str, List[Path]]:
    paths = {"float": [find_reference(root / "reference", q) for q in QUALITIES]}
    for method, qualities in DEMO_MODELS:
        paths[method] = [root / "quantized" / quantized_checkpoint_name(method, q) for q in qualities]
    missing = [str(p) for ps in paths.values() for p in ps if not p.is_file()]
    if missing:
        raise DemoError(f"missing committed checkpoints: {', '.join(missing[:3])} (scripts/publish_quantized.py)")
    return paths


def _image_sets(output: Path, kodak: Path, kodak_images: int, unusual_size: int) -> Dict[str, Path]:
    names = KODAK_SUBSET[:kodak_images]
    found = [kodak / f"{n}.png" for n in names]
    if not all(p.is_file() for p in found):
        raise DemoError(f"Kodak images {', '.join(names)} not found in {kodak}/ (pass --kodak DIR)")
    folder = output / "images" / "kodak"
    folder.mkdir(parents=True, exist_ok=True)
    for path in found:
        shutil.copyfile(path, folder / path.name)
    train = SHARED / "train"
    photos2(output / "images" / "photos2", train if train.is_dir() else None)
    unusual(output / "images" / "unusual", unusual_size)
    return {"kodak": folder, "photos2": output / "images" / "photos2", "unusual": output / "images" / "unusual"}


def _evaluate_all(jobs: Sequence[Tuple[str, List[str], Path, bool]], what: str) -> List[Dict[str, Any]]:
    """``evaluate`` each ``(key, checkpoints, folder, per_image)`` job under one progress bar."""
    from tqdm.auto import tqdm

    results = []
    for key, specs, folder, per_image in tqdm(jobs, desc=what, unit="model"):
        results.append(evaluate(specs, folder, name=LABELS[key], per_image=per_image))
    return results


def _benchmark_bd_rates(path: Path = Path("benchmarks/results/summary.json")) -> Dict[str, float]:
    """Full-Kodak BD-rates against float of the demo's models (seed 0, the committed ones), from the
    committed benchmark."""
    if not path.is_file():
        return {}
    rows = json.loads(path.read_text()).get("rows", [])
    return {r["method"]: (r.get("bd_rate_vs_float_pct_per_seed") or {}).get("0", r["bd_rate_vs_float_pct"])
            for r in rows if r.get("model") == FAMILY and r.get("bd_rate_vs_float_pct") is not None}


def _bits(path: Path) -> Dict[str, float]:
    model = load_model(path)
    averages = average_bits(model, layer_macs(model))
    return {"weight_bits": averages["bits_per_param"], "bitops_bits": averages["bits_bitops"],
            "size_kb": model_size_bytes(model) / 1000}


def _curve_rows(curves: Dict[str, Dict[str, Any]], paths: Dict[str, List[Path]]) -> List[Dict[str, Any]]:
    anchor = curves["float"]["results"]
    full = _benchmark_bd_rates()
    rows = []
    for key, result in curves.items():
        r = result["results"]
        q4 = len(r["bpp"]) // 2 if len(r["bpp"]) > 1 else 0
        bd = None if key == "float" else bd_rate(anchor["bpp"], anchor["psnr-rgb"], r["bpp"], r["psnr-rgb"])
        rows.append({"model": LABELS[key], "bd_rate_pct": bd, "bd_rate_full_kodak_pct": full.get(key), "bpp_q4": r["bpp"][q4], "psnr_q4": r["psnr-rgb"][q4],
                     **_bits(paths[key][q4])})
    return rows


def _robustness_rows(per_set: Dict[str, Dict[str, Dict[str, Any]]]) -> List[Dict[str, Any]]:
    rows = []
    for set_name, results in per_set.items():
        base = {r["image"]: r for r in results["float"]["models"][0]["per_image"]}
        for key, result in results.items():
            if key == "float":
                continue
            deltas = [(r["psnr-rgb"] - base[r["image"]]["psnr-rgb"], r["bpp"] / base[r["image"]]["bpp"] - 1, r["image"])
                      for r in result["models"][0]["per_image"]]
            worst = min(deltas)
            rows.append({"set": set_name, "model": LABELS[key], "images": len(deltas),
                         "mean_delta_psnr_db": sum(d[0] for d in deltas) / len(deltas),
                         "mean_delta_bpp_pct": 100 * sum(d[1] for d in deltas) / len(deltas),
                         "worst_delta_psnr_db": worst[0], "worst_image": worst[2]})
    return rows


def _live_ptq(reference: Path, output: Path, crops: int, kodak: Path) -> Dict[str, Any]:
    from . import main

    train = SHARED / "train"
    if not train.is_dir():
        raise DemoError(f"training photos not found in {train}/: the live PTQ step calibrates on them")
    target = output / "ptq-live-q4.pt"
    argv = ["quantize", "--checkpoint", str(reference), "--images", str(train), "-o", str(target),
            "--crops", str(crops), "--crop-size", "128"]
    print("$ dynaquant " + " ".join(argv))
    start = time.perf_counter()
    if main(argv) != 0:
        raise DemoError("the live dynaquant quantize step failed (its error is above)")
    seconds = time.perf_counter() - start
    r = evaluate([str(target)], kodak, name="PTQ int8 (live)")["results"]
    return {"model": f"PTQ int8, live ({crops} crops)", "command": "dynaquant " + " ".join(argv),
            "bpp_q4": r["bpp"][0], "psnr_q4": r["psnr-rgb"][0], "seconds": seconds}


def _references(folder: Path) -> List[Dict[str, Any]]:
    """JPEG and WebP (Pillow) on the same images, named as such."""
    return [dict(classic_curve(folder, codec), name=f"{codec.upper()} (Pillow, same images)")
            for codec in ("jpeg", "webp")]


def _print_tables(summary: Dict[str, Any]) -> None:
    print(f"\nKodak subset ({summary['kodak_images']} of 24 images), ScaleHyperprior(64, 96) q2-q5, real bitstreams")
    print("BD-rate against float on the subset, and on all 24 images (benchmarks/results/summary.json, seed 0)")
    print(f"{'model':<26}{'BD-rate':>9}{'all 24':>9}{'bpp q4':>8}{'PSNR q4':>9}{'w bits':>8}{'BitOPs b':>10}{'size kB':>9}")
    for row in summary["rows"]:
        bd = "anchor" if row["bd_rate_pct"] is None else f"{row['bd_rate_pct']:+.2f} %"
        full = row.get("bd_rate_full_kodak_pct")
        full = "" if full is None else f"{full:+.2f} %"
        print(f"{row['model']:<26}{bd:>9}{full:>9}{row['bpp_q4']:>8.3f}{row['psnr_q4']:>9.2f}{row['weight_bits']:>8.2f}"
              f"{row['bitops_bits']:>10.2f}{row['size_kb']:>9.0f}")
    live = summary["ptq_live"]
    print(f"{live['model']:<26}{'':>18}{live['bpp_q4']:>8.3f}{live['psnr_q4']:>9.2f}   ({live['seconds']:.0f} s)")
    dyn = summary["dynamic_q4"]
    print(f"{LABELS['dyn-w3468-a68-bitops6']:<26}{'':>18}{dyn['bpp'][0]:>8.3f}{dyn['psnr-rgb'][0]:>9.2f}"
          f"   ({dyn['avg_bits'][0]:.2f} average chosen bits; heat map in bits.png)")
    print("\nAt q4 against float, per set: mean PSNR change, mean rate change, worst image")
    for row in summary["robustness"]:
        print(f"{row['set']:<9}{row['model']:<18}{row['mean_delta_psnr_db']:+7.2f} dB{row['mean_delta_bpp_pct']:+7.1f} %"
              f"   worst {row['worst_delta_psnr_db']:+.2f} dB ({row['worst_image']})")


def compare_rows(rows: Sequence[Dict[str, Any]], committed: Sequence[Dict[str, Any]]) -> List[str]:
    """Differences beyond :data:`TOLERANCE` between this run's curve rows and the committed ones."""
    problems = []
    old = {row["model"]: row for row in committed}
    for row in rows:
        if row["model"] not in old:
            problems.append(f"{row['model']}: not in the committed run")
            continue
        for key, tolerance in (("bpp_q4", TOLERANCE["bpp"]), ("psnr_q4", TOLERANCE["psnr"]),
                               ("bd_rate_pct", TOLERANCE["bd_rate_pct"])):
            a, b = row.get(key), old[row["model"]].get(key)
            if (a is None) != (b is None) or (a is not None and abs(a - b) > tolerance):
                problems.append(f"{row['model']} {key}: {a} here, {b} committed")
    return problems


def run_demo(
    output: Path,
    checkpoints: Path = Path("checkpoints"),
    kodak: Path = SHARED / "kodak",
    kodak_images: int = len(KODAK_SUBSET),
    unusual_size: int = 512,
    ptq_crops: int = 8,
    threads: int = 1,
) -> Dict[str, Any]:
    """Run the demo (see the module docstring); returns the summary written to ``summary.json``.

    ``threads`` sets torch's intra-op threads: one is the safe default on a small machine, where
    two OpenMP threads slow down many times over as soon as another process competes.
    """
    if not 1 <= kodak_images <= len(KODAK_SUBSET):
        raise DemoError(f"--kodak-images must be 1 to {len(KODAK_SUBSET)}")
    torch.set_num_threads(threads)
    paths = _checkpoints(checkpoints)
    with folder_lock(output):  # a second demo into the same folder stops at once, naming it
        return _demo(output, paths, kodak, kodak_images, unusual_size, ptq_crops)


def _demo(output: Path, paths: Dict[str, List[Path]], kodak: Path, kodak_images: int, unusual_size: int,
          ptq_crops: int) -> Dict[str, Any]:
    start = time.perf_counter()
    sets = _image_sets(output, kodak, kodak_images, unusual_size)
    curve_keys = ["float", "ablation-int8-no-offset", "ptq-w8a8", "mixed-w5.5-a8"]
    jobs = [(k, [str(p) for p in paths[k]], sets["kodak"], False) for k in curve_keys]
    curves = dict(zip(curve_keys, _evaluate_all(jobs, f"1/4 RD curves, {kodak_images} Kodak images")))
    q4 = QUALITIES.index(4)
    jobs = [(k, [str(paths[k][q4])], sets[s], True) for s in ("photos2", "unusual") for k in curve_keys]
    done = iter(_evaluate_all(jobs, "2/4 robustness at q4, photos2 + unusual"))
    robustness = {s: {k: next(done) for k in curve_keys} for s in ("photos2", "unusual")}
    print("3/4 post-training quantization of the q4 reference, live:")
    live = _live_ptq(paths["float"][q4], output, ptq_crops, sets["kodak"])
    jobs = [("dyn-w3468-a68-bitops6", [str(paths["dyn-w3468-a68-bitops6"][0])], sets[s], True)
            for s in ("kodak", "photos2", "unusual")]
    dynamic = _evaluate_all(jobs, "4/4 the dynamic model's bit choices")
    for extra in dynamic[1:]:
        dynamic[0]["models"][0]["per_image"] += extra["models"][0]["per_image"]
    figures = plot_rd(list(curves.values()), output / "rd", references=_references(sets["kodak"]),
                      title=f"ScaleHyperprior(64, 96), Kodak subset ({kodak_images} images)", zoom=True)
    figures += plot_bit_heatmap(dynamic[0], output / "bits")
    summary = {
        "kodak_images": kodak_images, "kodak_subset": list(KODAK_SUBSET[:kodak_images]),
        "rows": _curve_rows(curves, paths), "ptq_live": live, "robustness": _robustness_rows(robustness),
        "dynamic_q4": dynamic[0]["results"], "figures": [p.name for p in figures],
        "curves": curves, "seconds": time.perf_counter() - start,
    }
    _print_tables(summary)
    write_json(output / "summary.json", summary)
    if COMMITTED.is_file() and kodak_images == len(KODAK_SUBSET):
        problems = compare_rows(summary["rows"], json.loads(COMMITTED.read_text())["rows"])
        print(f"\ncompared with the committed run ({COMMITTED}): "
              + ("the same within tolerance" if not problems else "DIFFERENT: " + "; ".join(problems)))
    print(f"\nwrote {output / 'summary.json'} and " + ", ".join(str(p) for p in figures)
          + f" in {summary['seconds']:.0f} s")
    return summary
