"""Publish the benchmark's quantized models of the reference family into ``checkpoints/quantized/``.

The demo (``dynaquant demo``) evaluates these files live. Each one is the ``final.pt`` that
``benchmarks/run.py`` trained (or calibrated) for a method and quality, saved with
``compact=True``: the quantized weights as integers, so a static int8 model takes 1.4 MB instead
of 5.2 MB, and loads back to exactly the same model. A dynamic model keeps float weights (each
image may quantize them at another width). ``SHA256SUMS`` beside them lists the files.

Usage (after ``python benchmarks/run.py --methods M ...`` has produced ``runs/bench/train/M/``)::

    python scripts/publish_quantized.py            # the demo's models
    python scripts/publish_quantized.py --methods ptq-w8a8 --qualities 4
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path
from typing import List, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dynaquant_brevitas.cli.demo_job import DEMO_MODELS, quantized_checkpoint_name  # noqa: E402
from dynaquant_brevitas.io.checkpoint import (  # noqa: E402
    compact_checkpoint, load_checkpoint, model_from_checkpoint, save_atomic, weights_only,
)


def publish(method: str, quality: int, runs: Path, out: Path) -> Path:
    found = sorted((runs / method).glob(f"q{quality}-*/final.pt"))
    if not found:  # a method whose selectors were fitted after another's training (benchmarks' `fit`)
        found = sorted(runs.glob(f"*/q{quality}-*/fit-{method}-*/final.pt"))
    if len(found) != 1:
        raise SystemExit(f"expected one final.pt of {method} at q{quality} under {runs}, found {len(found)}")
    ckpt = weights_only(load_checkpoint(found[0]))
    ckpt["train_config"] = {}  # machine-specific paths; the method's recipe is in benchmarks/bench_methods.py
    target = out / quantized_checkpoint_name(method, quality)
    save_atomic(compact_checkpoint(ckpt, model_from_checkpoint(ckpt, found[0])), target)
    return target


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", default=",".join(m for m, _ in DEMO_MODELS))
    p.add_argument("--qualities", default="2,3,4,5")
    p.add_argument("--runs", type=Path, default=ROOT / "runs" / "bench" / "train")
    p.add_argument("--output", type=Path, default=ROOT / "checkpoints" / "quantized")
    args = p.parse_args(argv)
    qualities = {m: q for m, q in DEMO_MODELS}
    for method in args.methods.split(","):
        for quality in [int(q) for q in args.qualities.split(",")]:
            if quality in qualities.get(method, (quality,)):
                path = publish(method, quality, args.runs, args.output)
                print(f"{path.relative_to(ROOT)}: {path.stat().st_size / 1e6:.2f} MB")
    sums = sorted(args.output.glob("*.pt"))
    lines = [f"{hashlib.sha256(f.read_bytes()).hexdigest()}  {f.name}\n" for f in sums]
    (args.output / "SHA256SUMS").write_text("".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
