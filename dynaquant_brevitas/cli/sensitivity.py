"""``dynaquant sensitivity``: per-layer sensitivity of a float checkpoint, its heat map, and a static
mixed-precision profile at a budget."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._common import UsageError, finite_float, positive_int, seeded_crops, training_lambda

HELP = "measure each layer's sensitivity to its weight and activation widths; a mixed profile at a budget"

EPILOG = """examples:
  dynaquant sensitivity --checkpoint checkpoints/reference/bmshj2018-hyperprior-N64-M96-q4.pt \\
      --images ../shared/data/train -o runs/sens/q4
  dynaquant sensitivity --checkpoint q4.pt --images train/ -o runs/sens/q4 --budget 5 --cost bitops \\
      --weight-bits 2,3,4,5,6,8 --activation-bits 6,8       (writes q4.profile.json for train/export)
"""


def _widths(text: str) -> list[int]:
    try:
        widths = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected widths like 4,6,8, got {text!r}") from None
    if not widths or not all(2 <= b <= 16 for b in widths):
        raise argparse.ArgumentTypeError(f"widths are integers from 2 to 16, got {text!r}")
    return widths


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("sensitivity", help=HELP, description=HELP, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, type=Path, help="float checkpoint")
    p.add_argument("--images", required=True, type=Path, help="folder of images the crops come from (not the test set)")
    p.add_argument("-o", "--output", required=True, type=Path, help="output prefix: OUT.json, OUT.png/.pdf (heat map)")
    p.add_argument("--widths", type=_widths, default=[2, 3, 4, 5, 6, 8], help="widths to measure (default 2,3,4,5,6,8)")
    p.add_argument("--crops", type=positive_int, default=8, help="random crops to measure on (default 8)")
    p.add_argument("--crop-size", type=positive_int, default=256, help="crop side, a multiple of 64 (default 256)")
    p.add_argument("--lmbda", type=finite_float, help="RD trade-off (default: the checkpoint's training lambda)")
    p.add_argument("--budget", type=finite_float, help="also write OUT.profile.json: the best static profile at this average")
    p.add_argument("--cost", choices=("bitops", "size"), default="bitops",
                   help="what --budget averages: bits in BitOPs (compute) or weight bits (size); default bitops")
    p.add_argument("--weight-bits", type=_widths, help="weight widths the profile may use (default: --widths)")
    p.add_argument("--activation-bits", type=_widths, help="activation widths the profile may use (default: --widths)")
    p.add_argument("--seed", type=int, default=0, help="seed of the crops (default 0)")
    return p


def run(args: argparse.Namespace) -> int:
    import torch

    from ..evaluation.plot import plot_sensitivity
    from ..io.checkpoint import load_model
    from ..io.files import write_json
    from ..transform.mixed import mixed_profile, profile_cost
    from ..transform.sensitivity import sensitivity

    crops = seeded_crops(args.images, args.crops, args.crop_size, args.seed)
    model = load_model(args.checkpoint)
    if hasattr(model, "dynaquant") or hasattr(model, "dynaquant_profile"):
        raise UsageError(f"{args.checkpoint} is quantized; give the float checkpoint")
    lmbda = training_lambda(args.checkpoint, args.lmbda)
    sens = sensitivity(model, [torch.cat(crops[i : i + 4]) for i in range(0, len(crops), 4)], args.widths, lmbda)
    sens.extra.update(checkpoint=str(args.checkpoint), images=str(args.images), crops=args.crops, crop_size=args.crop_size)
    written = [write_json(args.output.with_name(args.output.name + ".json"), sens.to_dict())]
    written += plot_sensitivity(sens, args.output)
    if args.budget is not None:
        profile = mixed_profile(sens, args.budget, args.cost, args.weight_bits, args.activation_bits)
        average = profile_cost(sens, profile, args.cost)
        print(f"profile at {average:.3f} average bits ({args.cost}): {profile}")
        profile_path = args.output.with_name(args.output.name + ".profile.json")
        written.append(write_json(profile_path, {name: list(pair) for name, pair in profile.items()}))
    for path in written:
        print(f"wrote {path}")
    return 0
