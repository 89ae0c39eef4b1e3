"""Export a frozen DynaQuant encoder to QONNX and through FINN's front end, verified at each step.

Uses :mod:`dynaquant_brevitas.export` (see docs/finn.md for what each step does):

1. ``FactorizedPriorReLU``, CompressAI's GDN-free model (FINN cannot map GDN), dynaquantized with
   candidates 4/6/8 and calibrated on scikit-image photos; the committed reference checkpoint
   ``checkpoints/reference/bmshj2018-factorized-relu-N64-M96-q4.pt`` is used when present,
   otherwise random weights (the export mechanics are the same);
2. ``freeze`` with the most frequent bit choice per layer over the photos;
3. ``check_finn`` on the GDN model, to show the pre-check naming what FINN cannot map;
4. ``export_qonnx`` of the encoder ``g_a`` (zero points folded, executed with qonnx, compared with
   PyTorch; raises if off by a quantization step or more);
5. ``export_finn`` (with ``--finn``; needs finn-plus, installed by ``make setup``): FINN's graph,
   verified, with its cycle and resource estimates.

Run: ``python examples/export_for_finn.py [--size 64] [--finn] [--out runs/examples/export]``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import List, Optional

import torch
from compressai.models import FactorizedPrior, FactorizedPriorReLU
from sample_images import holdout_image, train_images
from torch import nn

from dynaquant_brevitas import DynaQuantConfig, calibrate, dynaquantize, freeze
from dynaquant_brevitas.io.checkpoint import load_model
from dynaquant_brevitas.export import export_qonnx
from dynaquant_brevitas.export.precheck import FinnUnsupportedError, check_finn
from dynaquant_brevitas.transform import resolve_profile

REFERENCE = Path(__file__).resolve().parents[1] / "checkpoints" / "reference" / "bmshj2018-factorized-relu-N64-M96-q4.pt"
CONFIG = DynaQuantConfig(candidate_bits=(4, 6, 8))


def float_codec(channels: Optional[List[int]]) -> nn.Module:
    if channels is None and REFERENCE.is_file():
        print(f"weights: trained checkpoint {REFERENCE}")
        return load_model(REFERENCE)
    n, m = channels or (64, 96)
    print(f"weights: random FactorizedPriorReLU({n}, {m}) (the export works the same on trained ones)")
    torch.manual_seed(0)
    return FactorizedPriorReLU(n, m)


def show_precheck() -> None:
    """The GDN model is refused before anything is exported, naming each GDN layer."""
    gdn = freeze(dynaquantize(FactorizedPrior(8, 12), CONFIG.replace(candidate_bits=(8,))), "max")
    try:
        check_finn(gdn.g_a)
    except FinnUnsupportedError as error:
        lines = str(error).splitlines()
        print("pre-check on the GDN model refuses it, as it should:", lines[0], lines[1].strip() if len(lines) > 1 else "")


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64, help="input side the graph is exported for (multiple of 16)")
    parser.add_argument("--channels", type=int, nargs=2, metavar=("N", "M"), help="random model of this width")
    parser.add_argument("--finn", action="store_true", help="also run FINN's front end (slower)")
    parser.add_argument("--out", type=Path, default=Path("runs/examples/export"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("FINN_BUILD_DIR", str((args.out / "finn_build").resolve()))

    model = dynaquantize(float_codec(args.channels), CONFIG)
    photos = train_images(args.size)
    calibrate(model, photos)
    profile = resolve_profile(model, "mode", images=photos + [holdout_image(args.size)])
    frozen = freeze(model, profile).eval()
    print(f"frozen profile: {profile}")
    show_precheck()

    shape = (1, 3, args.size, args.size)
    check_finn(frozen.g_a)  # raises FinnUnsupportedError naming every module FINN cannot map
    result = export_qonnx(frozen.g_a, str(args.out / "g_a.onnx"), shape, step=1.0)  # latents: integer grid
    print("QONNX:", result.summary())

    if args.finn:
        from dynaquant_brevitas.export.finn import export_finn

        build = export_finn(frozen.g_a, str(args.out / "g_a_finn_input.onnx"), shape, step=1.0,
                            verify_shape=(1, 3, 16, 16))
        mvaus = [row for row in build.layers if row["op"].startswith("MVAU")]
        print(f"FINN: {len(build.partition.graph.node)} hardware layers ({len(mvaus)} MVAU), max error "
              f"{build.max_error_steps:.2g} steps against the integer QONNX graph")
        print("FINN estimate:", {k: build.estimate[k] for k in ("max_cycles", "fps") if k in build.estimate})


if __name__ == "__main__":
    main()
