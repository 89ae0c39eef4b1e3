"""``dynaquant train``: float training or DynaQuant fine-tuning from a YAML configuration."""

from __future__ import annotations

import argparse
import json

from ._common import add_config_arguments, apply_overrides, load_config

HELP = "train a CompressAI model (float, or DynaQuant QAT when quant.config is set)"

EPILOG = """examples:
  dynaquant train -c configs/reference/bmshj2018-hyperprior-N64-M96-q4.yaml
  dynaquant train -c configs/reference/bmshj2018-hyperprior-N64-M96-q4.yaml --resume
  dynaquant train -c configs/reference/bmshj2018-hyperprior-N64-M96-q4.yaml \
      --resume checkpoints/resume/bmshj2018-hyperprior-N64-M96-q4.pt
  dynaquant train -c configs/dynaquant/bmshj2018-hyperprior-N64-M96-q4-dynamic.yaml
  dynaquant train --arch bmshj2018-factorized --set model.N=8 --set model.M=12 --steps 10 --output runs/tiny
  torchrun --nproc-per-node 2 -m dynaquant_brevitas train -c CONFIG.yaml   (DistributedDataParallel)
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "train",
        help=HELP,
        description=HELP,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(p)
    p.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        metavar="CHECKPOINT",
        help="continue from <train.output>/last.pt, or from CHECKPOINT (writing to train.output)",
    )
    p.add_argument("--overwrite", action="store_true",
                   help="start again in a train.output that already holds a run (its checkpoints are replaced)")
    p.add_argument("--arch", help="CompressAI architecture name (= --set model.arch=...)")
    p.add_argument("--data", help="training image folder (= --set data.root=...)")
    p.add_argument("--steps", type=int, help="total optimisation steps (= --set train.steps=...)")
    p.add_argument("--batch-size", type=int, help="images per batch and process (= --set data.batch_size=...)")
    p.add_argument("--lr", type=float, help="main learning rate (= --set train.lr=...)")
    p.add_argument("--lmbda", type=float, help="rate-distortion trade-off (= --set train.lmbda=...)")
    p.add_argument("--output", help="run directory for checkpoints and logs (= --set train.output=...)")
    p.add_argument("--device", help="cpu, cuda, cuda:N or auto (= --set train.device=...)")
    p.add_argument("--init-from", help="float checkpoint to start from (= --set train.init_from=...)")
    p.add_argument(
        "--target-bits",
        type=float,
        help="steer gamma to this average bit width (= --set quant.target_bits=...); needs quant.config, "
        "i.e. quantization-aware training: with a float config it is refused",
    )
    p.add_argument(
        "--stop-at",
        type=int,
        metavar="STEP",
        help="stop (with a checkpoint) at this global step; the schedule still follows train.steps",
    )
    p.add_argument(
        "--time-limit",
        type=float,
        metavar="MINUTES",
        help="stop (with a checkpoint) after this many minutes; SIGTERM does the same at once",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


FLAG_KEYS = {
    "arch": "model.arch",
    "data": "data.root",
    "steps": "train.steps",
    "batch_size": "data.batch_size",
    "lr": "train.lr",
    "lmbda": "train.lmbda",
    "output": "train.output",
    "device": "train.device",
    "init_from": "train.init_from",
    "target_bits": "quant.target_bits",
}


def run(args: argparse.Namespace) -> int:
    from ..training import TrainConfig, train

    flags = [
        f"{key}={json.dumps(getattr(args, name))}"
        for name, key in FLAG_KEYS.items()
        if getattr(args, name) is not None
    ]
    if args.no_progress:
        flags.append("train.progress=false")
    cfg = TrainConfig.from_dict(apply_overrides(load_config(args), flags))
    time_limit_s = args.time_limit * 60 if args.time_limit else None
    summary = train(cfg, resume=args.resume, stop_at=args.stop_at, time_limit_s=time_limit_s, overwrite=args.overwrite)
    if summary.get("main", True):
        print(json.dumps(summary, indent=2))
    return 0
