"""``dynaquant eval``: real-bitstream rate-distortion evaluation in CompressAI's JSON format."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._common import add_arch_argument, device_name, positive_int

HELP = "evaluate checkpoints on an image folder with real bitstreams (CompressAI JSON)"

EPILOG = """examples:
  dynaquant eval --checkpoint checkpoints/reference/bmshj2018-hyperprior-N64-M96-q4.pt \\
      --images ../shared/data/kodak --output benchmarks/results/ref.json --per-image
  dynaquant eval --checkpoint q1.pt --checkpoint q2.pt --checkpoint q3.pt --images DIR -o curve.json
  dynaquant eval --checkpoint zoo:bmshj2018-hyperprior:3 --images DIR -o zoo.json   (needs internet)
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "eval",
        help=HELP,
        description=HELP,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--checkpoint",
        action="append",
        required=True,
        metavar="PATH|zoo:NAME:QUALITY[:METRIC]",
        help="checkpoint file or CompressAI zoo model; repeat for several rate-distortion points",
    )
    add_arch_argument(p)
    p.add_argument("--images", required=True, type=Path, help="folder of images to code")
    p.add_argument("-o", "--output", required=True, type=Path, help="result JSON file to write")
    p.add_argument("--per-image", action="store_true", help="also record every image (and per-layer bits)")
    p.add_argument("--name", help="curve name in the JSON (default: first checkpoint's file name)")
    p.add_argument("--description", default="", help="free-text description in the JSON")
    p.add_argument("--device", default="cpu", type=device_name,
                   help="cpu, cuda or cuda:N: device for the networks (entropy coding runs on CPU)")
    p.add_argument("--threads", type=positive_int, help="torch CPU threads")
    return p


def run(args: argparse.Namespace) -> int:
    import torch

    from ..evaluation import evaluate
    from ..io.files import write_json

    if args.threads:
        torch.set_num_threads(args.threads)
    result = evaluate(
        args.checkpoint,
        args.images,
        name=args.name,
        description=args.description,
        per_image=args.per_image,
        device=args.device,
        progress=True,
        arch=args.arch,
    )
    write_json(args.output, result)
    res = result["results"]
    for i, spec in enumerate(args.checkpoint):
        avg_bits = (res.get("avg_bits") or [None] * len(args.checkpoint))[i]
        bits = f", {avg_bits:.2f} bits" if avg_bits is not None else ""
        print(f"{spec}: {res['bpp'][i]:.4f} bpp, {res['psnr-rgb'][i]:.3f} dB PSNR{bits}")
    print(f"wrote {args.output}")
    return 0
