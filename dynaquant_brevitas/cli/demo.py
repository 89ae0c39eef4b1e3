"""``dynaquant demo``: the main job on a built-in default (``make demo``)."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = ("evaluate the committed reference family, float and quantized, with real bitstreams: RD curves, "
        "robustness, a live post-training quantization, the dynamic model's bit choices")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("demo", help=HELP, description=HELP)
    p.add_argument("-o", "--output", type=Path, default=Path("runs/demo"), help="output folder (default runs/demo)")
    p.add_argument("--checkpoints", type=Path, default=Path("checkpoints"),
                   help="folder with reference/ and quantized/ (default: the repository's checkpoints/)")
    p.add_argument("--kodak", type=Path, default=Path("../shared/data/kodak"), help="Kodak folder")
    p.add_argument("--kodak-images", type=int, default=6, help="how many of the fixed Kodak subset (1-6, default 6)")
    p.add_argument("--unusual-size", type=int, default=512, help="side of the unusual-content images (default 512)")
    p.add_argument("--ptq-crops", type=int, default=8, help="calibration crops of the live PTQ step (default 8)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: robust on a shared machine)")
    return p


def run(args: argparse.Namespace) -> int:
    from .demo_job import DemoError, run_demo

    if args.threads <= 0 or args.ptq_crops <= 0 or args.unusual_size < 64:
        raise DemoError("--threads and --ptq-crops must be positive, --unusual-size at least 64")
    run_demo(args.output, args.checkpoints, args.kodak, args.kodak_images, args.unusual_size, args.ptq_crops,
             args.threads)
    return 0
