"""Where post-training int8 loses: ``transform.ptq`` variants on one float reference.

Each variant quantizes the reference with ``ptq`` (its own calibration crops, seed 0) and is scored
by the estimated RD cost (bpp from the likelihoods + lambda 255^2 MSE) on validation crops of the
training photographs drawn with another seed: never Kodak, so nothing here is tuned to the
evaluation set. Variants separate the weights from the activations (the other side at 16 bits)
and switch off one step of ``ptq`` at a time. ``--layers`` then takes the W16A8 model and gives
one layer at a time its input back at 16 bits: what each layer's 8-bit input costs.

    python benchmarks/ptq_study.py [--variants w8a8,w16a8,...] [--validation 16] [--layers]
    -> benchmarks/results/ptq_study.json (one entry per variant; reruns replace their entries)
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from dynaquant_brevitas import load_model  # noqa: E402
from dynaquant_brevitas.io.files import write_json  # noqa: E402
from dynaquant_brevitas.io.images import list_images, read_image_uint8  # noqa: E402
from dynaquant_brevitas.nn.layers import StaticWidths  # noqa: E402
from dynaquant_brevitas.transform.ptq import PTQ_CONFIG, calibration_crops, ptq  # noqa: E402
from dynaquant_brevitas.transform.sensitivity import estimated_rd  # noqa: E402

#: variant -> (weight bits, activation bits, ptq keyword arguments); symmetric activation grids
#: unless a variant turns the offsets on
VARIANTS = {
    "w8a8": (8, 8, {}),
    "w16a8": (16, 8, {}),
    "w8a16": (8, 16, {}),
    "w8a8-nearest": (8, 8, {"rounding": "nearest"}),
    "w8a8-no-search": (8, 8, {"search": False}),
    "w8a8-no-bias-correction": (8, 8, {"bias_correction": False}),
    "w8a8-128-crops": (8, 8, {"crops": 128}),
    "w8a8-offsets": (8, 8, {"learn_offset": True}),
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reference", type=Path, default=ROOT / "checkpoints/reference/bmshj2018-hyperprior-N64-M96-q4.pt")
    p.add_argument("--lmbda", type=float, default=0.013)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--validation", type=int, default=16, help="validation crops of 256 px (seed 1)")
    p.add_argument("--layers", action="store_true", help="only the per-layer activation costs of W16A8")
    p.add_argument("--output", type=Path, default=ROOT / "benchmarks/results/ptq_study.json")
    args = p.parse_args()
    torch.set_num_threads(1)
    images = [read_image_uint8(path) for path in list_images(ROOT.parent / "shared/data/train")]
    validation = torch.cat(calibration_crops(images, args.validation, 256, torch.Generator().manual_seed(1)))
    batches = list(validation.split(4))
    base = estimated_rd(load_model(args.reference).eval(), batches, args.lmbda)
    results = json.loads(args.output.read_text()) if args.output.exists() else {}
    results.update({
        "command": "python benchmarks/ptq_study.py",
        "reference": str(args.reference.relative_to(ROOT)) if args.reference.is_relative_to(ROOT) else str(args.reference),
        "validation": f"{args.validation} random 256 px crops of the training photographs (seed 1), estimated rate",
        "machine": "the project's 2-core CPU machine, one thread",
        "float": vars(base),
    })
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    if args.layers:
        results["activation_layers"] = layer_costs(args.reference, images, batches, args.lmbda, base, commit)
        write_json(args.output, results)
        return 0
    entries = results.setdefault("variants", {})
    for name in args.variants.split(","):
        weight_bits, activation_bits, options = VARIANTS[name]
        options = dict(options)
        config = PTQ_CONFIG.replace(weight_bits=(weight_bits,), activation_bits=(activation_bits,),
                                    learn_offset=options.pop("learn_offset", False))
        start = time.perf_counter()
        model = ptq(load_model(args.reference), images, config, progress=False, **options)
        seconds = time.perf_counter() - start
        rd = estimated_rd(model.eval(), batches, args.lmbda)
        entries[name] = {
            "commit": commit, "seconds": round(seconds, 1),
            "rd_cost_increase_pct": round(100 * (rd.cost / base.cost - 1), 3),
            "bpp_change_pct": round(100 * (rd.bpp / base.bpp - 1), 3),
            "psnr_change_db": round(10 * float(torch.log10(torch.tensor(base.mse / rd.mse))), 4),
        }
        print(name, entries[name], flush=True)
        write_json(args.output, results)
    return 0


def layer_costs(reference: Path, images, batches, lmbda: float, base, commit: str) -> dict:
    """RD-cost increase [%] of the W16A8 model, and of it with one layer's input at 16 bits."""
    model = ptq(load_model(reference), images,
                PTQ_CONFIG.replace(weight_bits=(16,), activation_bits=(8,), learn_offset=False),
                progress=False).eval()

    def increase() -> float:
        return round(100 * (estimated_rd(model, batches, lmbda).cost / base.cost - 1), 3)

    out = {"commit": commit, "all_inputs_at_8_bits": increase(), "with_this_input_at_16_bits": {}}
    for name, layer in model.named_modules():
        if isinstance(layer, StaticWidths):
            weight_bits, activation_bits = layer.widths
            layer.set_bit_width(weight_bits, 16)
            out["with_this_input_at_16_bits"][name] = increase()
            layer.set_bit_width(weight_bits, activation_bits)
            print(name, out["with_this_input_at_16_bits"][name], flush=True)
    return out


if __name__ == "__main__":
    raise SystemExit(main())
