"""Does the selector give images different profiles, and does it pay? A study of training variants.

Each variant fine-tunes the same float reference with the library's loop (dynamic widths, the
bit loss weighted by BitOPs, a target) and is evaluated with real bitstreams on Kodak images:
bpp, PSNR, BitOPs-bits, and the diversity of the choices per side (share of images whose profile
differs from the most common one). Variants: the default, a larger learning rate for the
selectors, a reward for choices that depend on the image (``quant.diversity``), and the
scale-aware selector (features that keep the amount of detail).

    python benchmarks/selector_study.py [--steps 300] [--images 8] [--variants base,slr,div]
    -> benchmarks/results/selector_study.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from dynaquant_brevitas.evaluation import LoadedModel, evaluate_model, prepare_for_coding  # noqa: E402
from dynaquant_brevitas.evaluation.evaluate import chosen_profiles  # noqa: E402
from dynaquant_brevitas.io.checkpoint import load_model  # noqa: E402
from dynaquant_brevitas.io.files import write_json  # noqa: E402
from dynaquant_brevitas.io.images import list_images  # noqa: E402
from dynaquant_brevitas.training import FINAL, TrainConfig, train  # noqa: E402
from dynaquant_brevitas.transform.cost import average_bits, layer_macs  # noqa: E402

VARIANTS = {  # quant-section settings; "config" entries go into the DynaQuantConfig
    "base": {},
    "slr": {"selector_lr": 1e-3},
    "div": {"diversity": 0.05},
    "slr-div": {"selector_lr": 1e-3, "diversity": 0.05},
    "scale": {"config": {"selector": "scale-aware"}},
    "scale-div": {"config": {"selector": "scale-aware"}, "diversity": 0.05},
}


def config(reference: Path, variant: str, steps: int, target: float, output: Path, seed: int) -> TrainConfig:
    settings = dict(VARIANTS[variant])
    quant = {
        "config": {"weight_bits": [4, 6, 8], "activation_bits": [6, 8], "calibration_batches": 8,
                   **settings.pop("config", {})},
        "bit_cost": "bitops",
        "target_bits": target,
        "tau_decay_steps": max(1, int(0.8 * steps)),
        **settings,
    }
    return TrainConfig.from_dict({
        "data": {"root": str(ROOT.parent / "shared" / "data" / "train"), "patch_size": 128, "batch_size": 8},
        "train": {"init_from": str(reference), "steps": steps, "lr": 1e-4, "lmbda": 0.013, "seed": seed,
                  "output": str(output), "device": "cpu", "threads": 1, "checkpoint_every": 100, "log_every": 50},
        "quant": quant,
    })


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reference", type=Path, default=ROOT / "checkpoints/reference/bmshj2018-hyperprior-N64-M96-q4.pt")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--target", type=float, default=6.5, help="BitOPs-bits target (model level)")
    p.add_argument("--images", type=int, default=8, help="first N Kodak images")
    p.add_argument("--variants", default="base,slr,div")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "selector_study")
    p.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "selector_study.json")
    args = p.parse_args()
    torch.set_num_threads(1)
    images = list_images(ROOT.parent / "shared" / "data" / "kodak")[: args.images]
    results = json.loads(args.output.read_text()) if args.output.exists() else {"runs": {}}
    for variant in args.variants.split(","):
        out = args.work / f"{variant}-s{args.seed}"
        start = time.time()
        if not (out / FINAL).exists():
            train(config(args.reference, variant, args.steps, args.target, out, args.seed), resume=(out / "last.pt").exists(),
                  overwrite=True)
        model = prepare_for_coding(load_model(out / FINAL))
        evaluation = evaluate_model(LoadedModel(model, variant, str(out / FINAL)), images)
        summary = evaluation["summary"]
        mean_profile, _ = chosen_profiles(summary.get("layers") or [], evaluation["per_image"])
        state = model.dynaquant
        size = (1, 3, 512, 768)
        results["runs"][f"{variant}-s{args.seed}"] = {
            "variant": variant, "settings": VARIANTS[variant], "seed": args.seed, "steps": args.steps,
            "target_bitops_bits": args.target, "bpp": summary["bpp"], "psnr": summary["psnr-rgb"],
            "avg_weight_bits": summary.get("avg_weight_bits"), "diversity": summary.get("diversity"),
            "entropy": summary.get("entropy"), "seconds": time.time() - start,
            "bits_at_mean_choice": average_bits(model, layer_macs(model, size), mean_profile),
            "candidates": [list(p) for p in state.config.pairs],
        }
        print(variant, json.dumps(results["runs"][f"{variant}-s{args.seed}"], default=str)[:400], flush=True)
    results.update(command="python benchmarks/selector_study.py " + " ".join(sys.argv[1:]),
                   images=[p.name for p in images], machine="the project's 2-core CPU machine, one thread, loaded")
    write_json(args.output, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
