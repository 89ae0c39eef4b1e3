"""``dynaquant fit-selector``: refit a dynamic model's selectors to a per-image choice table of
training crops at a bit budget (:mod:`dynaquant_brevitas.training.selector_fit`), the codec fixed."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._common import UsageError, finite_float, positive_int, seeded_crops, training_lambda

HELP = "refit a dynamic model's bit-width selectors to measured per-image costs at a budget"

EPILOG = """examples:
  dynaquant fit-selector --checkpoint runs/dyn/final.pt --images ../shared/data/train --budget 6 -o runs/dyn/fitted.pt
  dynaquant fit-selector --checkpoint dyn.pt --images train/ --budget 6.5 --cost size --crops 512 -o fitted.pt
      (also writes fitted.fit.json: the fitted selectors against the best single profile and the
       per-image oracle on held-out crops)
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("fit-selector", help=HELP, description=HELP, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, type=Path, help="a dynamic DynaQuant checkpoint (dynaquant train)")
    p.add_argument("--images", required=True, type=Path, help="folder of images the crops come from (not the test set)")
    p.add_argument("-o", "--output", required=True, type=Path, help="the refitted model (.pt); OUT.fit.json beside it")
    p.add_argument("--budget", required=True, type=finite_float, help="average bits the choices may cost")
    p.add_argument("--cost", choices=("bitops", "size", "layers"), default="bitops",
                   help="what --budget averages: BitOPs bits (compute), weight bits (size) or the plain layer "
                        "average; default bitops")
    p.add_argument("--crops", type=positive_int, default=384, help="training crops in the table (default 384)")
    p.add_argument("--crop-size", type=positive_int, default=128, help="crop side, a multiple of 64 (default 128)")
    p.add_argument("--lmbda", type=finite_float, help="RD trade-off (default: the checkpoint's training lambda)")
    p.add_argument("--seed", type=int, default=0, help="seed of the crops and the fit (default 0)")
    return p


def run(args: argparse.Namespace) -> int:
    import torch

    from ..io.checkpoint import load_model, save_model
    from ..io.files import write_json
    from ..training.selector_fit import choice_table, fit_selectors

    if args.output.resolve() == args.checkpoint.resolve():
        raise UsageError("-o must differ from --checkpoint (the trained model is kept)")
    crops = torch.cat(seeded_crops(args.images, args.crops, args.crop_size, args.seed, max_images=args.crops // 4))
    model = load_model(args.checkpoint)
    if not getattr(getattr(model, "dynaquant", None), "selectors", None):
        raise UsageError(f"{args.checkpoint} has no bit-width selectors: give a dynamic DynaQuant checkpoint")
    lmbda = training_lambda(args.checkpoint, args.lmbda)
    print(f"measuring the choice table on {args.crops} crops of {args.crop_size} px ...", flush=True)
    table = choice_table(model, crops, lmbda)
    report = fit_selectors(model, table, args.budget, args.cost, seed=args.seed)
    dynamic, static, oracle = report["dynamic"], report["static"], report["oracle"]
    print(f"held-out crops, RD-cost change from the base profile ({report['base_rd']:.4f}) at {dynamic['cost']:.3f} bits ({args.cost}): "
          f"selectors {dynamic['delta_rd']:+.4f}, best single profile {static['delta_rd']:+.4f}, "
          f"per-image oracle {oracle['delta_rd']:+.4f}; images off the most common profile: encoder "
          f"{dynamic.get('diversity_encoder', 0):.0%}, decoder {dynamic.get('diversity_decoder', 0):.0%}")
    written = [save_model(model, args.output),
               write_json(args.output.with_name(args.output.stem + ".fit.json"), dict(report, base=table.base))]
    for path in written:
        print(f"wrote {path}")
    return 0
