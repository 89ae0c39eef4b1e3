"""``dynaquant demo``: the main job on a built-in default (``make demo``)."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "dynaquantize a reference checkpoint, fine-tune briefly, evaluate float vs DynaQuant, plot"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("demo", help=HELP, description=HELP)
    p.add_argument("--checkpoint", type=Path, help="float checkpoint (default: the committed reference)")
    p.add_argument("--images", type=Path, help="evaluation images (default: scikit-image photos not used in training)")
    p.add_argument("-o", "--output", type=Path, default=Path("runs/demo"), help="output folder (default runs/demo)")
    p.add_argument("--minutes", type=float, default=5.0, help="fine-tuning time budget (default 5)")
    p.add_argument("--steps", type=int, default=400, help="fine-tuning steps at most (default 400)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: robust on a shared machine)")
    return p


def run(args: argparse.Namespace) -> int:
    from .demo_job import run_demo

    if args.minutes <= 0 or args.steps <= 0 or args.threads <= 0:
        raise ValueError("--minutes, --steps and --threads must be positive")
    run_demo(args.output, args.checkpoint, args.images, args.minutes, args.steps, threads=args.threads)
    return 0
