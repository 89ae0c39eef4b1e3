"""Write an evaluation set (``dynaquant_brevitas.evaluation.datasets``) into a folder.

Usage::

    python benchmarks/datasets.py photos2 runs/bench/datasets/photos2
    python benchmarks/datasets.py unusual runs/bench/datasets/unusual --size 512 --seed 0
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import List, Optional

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TRAIN = ROOT.parent / "shared" / "data" / "train"


def main(argv: Optional[List[str]] = None) -> int:
    from dynaquant_brevitas.evaluation.datasets import photos2, unusual

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("set", choices=("photos2", "unusual"), help="which set to write")
    p.add_argument("folder", type=Path, help="where the PNGs and MANIFEST.json go")
    p.add_argument("--train", type=Path, default=DEFAULT_TRAIN, help="photos2: training folder to check against")
    p.add_argument("--size", type=int, default=512, help="unusual: side in pixels (default 512)")
    p.add_argument("--seed", type=int, default=0, help="unusual: seed (default 0)")
    args = p.parse_args(argv)
    files = photos2(args.folder, args.train) if args.set == "photos2" else unusual(args.folder, args.size, args.seed)
    manifest = json.loads((args.folder / "MANIFEST.json").read_text())
    for entry in manifest.get("excluded", []):
        print(f"left out {entry['name']}: {entry['reason']}")
    print(f"wrote {len(files)} images to {args.folder}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
