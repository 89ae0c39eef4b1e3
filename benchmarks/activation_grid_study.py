"""Activation grids after calibration: headroom, and ranges that follow each image.

Training calibrates every activation range on its first batches: small crops (8 batches of 8
crops of 128 px in the benchmark). Larger images reach further, and at 8 bits a clipped value
costs more than a coarser step; quieter images waste the levels a busy crop needed. For each float
reference the whole model is quantized at 8 bits (no offsets, the recommended setting), calibrated
on such crops of half the training photographs, and scored on 384-px centre crops of the other
half (estimated RD cost, bpp from the likelihoods + lambda 255^2 MSE, against float) for several
``activation_headroom`` factors and for each ``activation_range``. No training and no Kodak: the
benchmark's headroom (1.25) and per-image rows are chosen here.

    python benchmarks/activation_grid_study.py [--references a.pt,b.pt] [--factors 1,1.1,1.25,1.5,2]
    -> benchmarks/results/activation_grid_study.json
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from dynaquant_brevitas import DynaQuantConfig, calibrate, dynaquantize, load_model  # noqa: E402
from dynaquant_brevitas.io.files import write_json  # noqa: E402
from dynaquant_brevitas.io.images import list_images, read_image_uint8  # noqa: E402
from dynaquant_brevitas.quant import IMAGE_RANGES  # noqa: E402
from dynaquant_brevitas.transform.ptq import calibration_crops  # noqa: E402
from dynaquant_brevitas.transform.sensitivity import estimated_rd  # noqa: E402

REFERENCES = ("bmshj2018-hyperprior-N64-M96-q4.pt", "mbt2018-mean-N64-M96-q4.pt")
EVAL_SIZE = 384


def split_photos(folder: Path) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Calibration images (every other photo) and centre crops of the rest that are large enough."""
    files = list_images(folder)
    calibration = [read_image_uint8(f) for f in files[0::2]]
    evaluation = []
    for f in files[1::2]:
        image = read_image_uint8(f)
        h, w = image.shape[-2:]
        if min(h, w) >= EVAL_SIZE:
            top, left = (h - EVAL_SIZE) // 2, (w - EVAL_SIZE) // 2
            crop = image[:, top : top + EVAL_SIZE, left : left + EVAL_SIZE]
            evaluation.append(crop.unsqueeze(0).float().div(255.0))
    return calibration, evaluation


def variants(factors: list[float]) -> dict[str, dict]:
    """The settings scored: each headroom factor with static ranges, then each per-image mode."""
    rows = {str(factor): {"activation_headroom": factor} for factor in factors}
    rows.update({mode: {"activation_range": mode} for mode in IMAGE_RANGES if mode != "static"})
    return rows


def study(reference: Path, factors: list[float], calibration: list[torch.Tensor], evaluation: list[torch.Tensor],
          lmbda: float) -> dict:
    crops = calibration_crops(calibration, 64, 128, torch.Generator().manual_seed(0))
    batches = [torch.cat(crops[i : i + 8]) for i in range(0, len(crops), 8)]
    float_model = load_model(reference).eval()
    with torch.no_grad():
        base = estimated_rd(float_model, evaluation, lmbda)
        rows = {}
        for label, setting in variants(factors).items():
            config = DynaQuantConfig(candidate_bits=(8,), learn_offset=False, calibration_batches=len(batches),
                                     **setting)
            model = dynaquantize(load_model(reference), config)
            calibrate(model, batches)
            got = estimated_rd(model.eval(), evaluation, lmbda)
            rows[label] = {"rd_cost_pct": round(100 * (got.cost / base.cost - 1), 3),
                           "bpp_pct": round(100 * (got.bpp / base.bpp - 1), 3),
                           "mse_pct": round(100 * (got.mse / base.mse - 1), 3)}
            print(f"{reference.name} {label}: RD cost {rows[label]['rd_cost_pct']:+.2f} %", flush=True)
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--references", help="comma-separated float checkpoints (default: the q4 hyperprior and mbt2018-mean)")
    p.add_argument("--factors", default="1,1.1,1.25,1.5,2")
    p.add_argument("--lmbda", type=float, default=0.013)
    p.add_argument("--output", type=Path, default=ROOT / "benchmarks/results/activation_grid_study.json")
    args = p.parse_args()
    torch.set_num_threads(1)
    references = ([Path(r) for r in args.references.split(",")] if args.references
                  else [ROOT / "checkpoints/reference" / name for name in REFERENCES])
    factors = [float(f) for f in args.factors.split(",")]
    calibration, evaluation = split_photos(ROOT.parent / "shared/data/train")
    start = time.time()
    results = {reference.name: study(reference, factors, calibration, evaluation, args.lmbda) for reference in references}
    write_json(args.output, {
        "command": "python benchmarks/activation_grid_study.py",
        "calibration": f"8 batches of 8 random 128-px crops (seed 0) of {len(calibration)} training photos",
        "evaluation": f"{len(evaluation)} centre crops of {EVAL_SIZE} px of the other training photos",
        "measure": "estimated RD cost (bpp + lambda 255^2 MSE) against float, percent; W8A8, no offsets; "
                   "rows: activation_headroom factors (static ranges), then activation_range modes (headroom 1)",
        "machine": "the project's 2-core CPU machine, one thread",
        "seconds": round(time.time() - start, 1),
        "results": results,
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
