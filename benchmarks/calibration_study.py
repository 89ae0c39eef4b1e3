"""Why 8-bit activations cost so much after calibration: offsets, percentiles, and how batches combine.

For the float reference, every layer's input is quantized alone at 8 bits (the others float),
with the ranges calibrated on training crops, and the RD-cost increase over float is summed over
the layers (``dynaquant_brevitas.transform.sensitivity``). Settings: learned offsets or not, the
calibration percentile 99.99 or 100 (the maximum).

    python benchmarks/calibration_study.py [--crops 8] [--label after]
    -> benchmarks/results/calibration_study.json (one entry per --label)

Run it at two commits to compare the calibration code of each (the results file keeps both).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from dynaquant_brevitas import DynaQuantConfig, load_model  # noqa: E402
from dynaquant_brevitas.io.images import ImageFolderCrops  # noqa: E402
from dynaquant_brevitas.transform.sensitivity import sensitivity  # noqa: E402

SETTINGS = {
    "offsets, 99.99th percentile": {},
    "no offsets, 99.99th percentile": {"learn_offset": False},
    "offsets, maximum": {"activation_percentile": 100.0},
    "no offsets, maximum": {"learn_offset": False, "activation_percentile": 100.0},
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reference", type=Path, default=ROOT / "checkpoints/reference/bmshj2018-hyperprior-N64-M96-q4.pt")
    p.add_argument("--crops", type=int, default=8)
    p.add_argument("--label", default="after")
    p.add_argument("--output", type=Path, default=ROOT / "benchmarks/results/calibration_study.json")
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    dataset = ImageFolderCrops(ROOT.parent / "shared/data/train", 256)
    crops = torch.stack([dataset[i] for i in range(args.crops)])
    batches = [crops[i : i + 4] for i in range(0, len(crops), 4)]
    model = load_model(args.reference)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    entry = {"commit": commit, "settings": {}}
    for name, fields in SETTINGS.items():
        start = time.time()
        sens = sensitivity(model, batches, widths=(8,), lmbda=0.013, config=DynaQuantConfig(**fields), progress=False)
        per_layer = {n: round(100 * sens.activation[n][8].cost / sens.base.cost, 3) for n in sens.layers}
        entry["settings"][name] = {"sum_pct": round(sum(per_layer.values()), 2), "per_layer_pct": per_layer,
                                   "seconds": round(time.time() - start, 1)}
        print(f"{args.label} {name}: {entry['settings'][name]['sum_pct']} % of the float RD cost", flush=True)
    results = json.loads(args.output.read_text()) if args.output.exists() else {}
    results.update(command="python benchmarks/calibration_study.py", reference=str(args.reference.relative_to(ROOT)),
                   crops=f"{args.crops} random 256 px training crops (seed 0), 2 calibration batches",
                   machine="the project's 2-core CPU machine, one thread")
    results.setdefault("runs", {})[args.label] = entry
    args.output.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
