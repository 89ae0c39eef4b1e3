"""``dynaquant quantize``: post-training quantization of a float checkpoint from a folder of images."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._common import UsageError, add_arch_argument, positive_int

HELP = "quantize a float checkpoint after training (calibration crops, range search, GPTQ rounding)"

EPILOG = """examples:
  dynaquant quantize --checkpoint checkpoints/reference/bmshj2018-hyperprior-N64-M96-q4.pt \\
      --images ../shared/data/train -o runs/ptq/q4-w8a8.pt
  dynaquant quantize --checkpoint FLOAT.pt --images DIR --bits 6 -o w6a6.pt
  dynaquant quantize --checkpoint FLOAT.pt --images DIR --weight-bits 6 --bits 8 -o w6a8.pt
  dynaquant quantize --checkpoint FLOAT.pt --images DIR --activation-range per-image-capped -o capped.pt

The output is an ordinary DynaQuant checkpoint: dynaquant eval, encode, decode and export take it.
Calibrate on training photos, not on the images you evaluate on.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "quantize", help=HELP, description=HELP, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--checkpoint", required=True, type=Path, help="float checkpoint (dynaquant or CompressAI state dict)")
    add_arch_argument(p)
    p.add_argument("--images", required=True, type=Path, help="folder of calibration images (training photos)")
    p.add_argument("-o", "--output", required=True, type=Path, help="quantized checkpoint to write")
    p.add_argument("--bits", type=positive_int, default=8,
                   help="bit width of the quantized layers (weights and inputs; default 8)")
    p.add_argument("--weight-bits", type=positive_int, metavar="N",
                   help="weights at N bits and layer inputs at --bits (default: --bits for both)")
    p.add_argument("--fixed-bits", type=positive_int, metavar="N",
                   help="bit width of the fixed-precision layers: the first layer of the analysis and synthesis "
                        "transforms and the hyper transforms (default 8)")
    p.add_argument("--offsets", action="store_true",
                   help="per-channel activation offsets (asymmetric grids): a little better on photographs, "
                        "far worse on unusual content (default: symmetric grids)")
    p.add_argument("--per-tensor", action="store_true", help="one activation range per tensor instead of per channel")
    p.add_argument("--activation-range", default="static", metavar="MODE",
                   help="static: the searched ranges (exportable); per-image-capped: each image's own reach per "
                        "channel, at most the searched range (better on photographs, PyTorch only: no ONNX or FINN "
                        "export); per-image, per-image-adaptive: see docs/concepts.md (default: static)")
    p.add_argument("--rounding", choices=("gptq", "adaround", "nearest"), default="gptq",
                   help="how weights are rounded (default: gptq)")
    p.add_argument("--rounding-iters", type=positive_int, default=300, help="steps per layer of --rounding adaround")
    p.add_argument("--no-search", action="store_true", help="keep the percentile and max |w| ranges of calibration")
    p.add_argument("--no-bias-correction", action="store_true", help="leave the biases as they are")
    p.add_argument("--crops", type=positive_int, default=32, help="random calibration crops (default 32)")
    p.add_argument("--crop-size", type=positive_int, default=256, help="their side, a multiple of 64 (default 256)")
    p.add_argument("--seed", type=int, default=0, help="seed of the crops (default 0)")
    p.add_argument("--integer-entropy-path", action="store_true",
                   help="compute the entropy model's scales (and means) in integers: bit-exact decoding across "
                        "platforms (ScaleHyperprior, MeanScaleHyperprior; docs/bit-exact.md)")
    p.add_argument("--threads", type=positive_int, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true", help="no time estimate and progress bar")
    return p


def config_from_args(args: argparse.Namespace):
    """The static ``DynaQuantConfig`` the options ask for.

    Example:
        >>> args = argparse.Namespace(bits=6, weight_bits=None, fixed_bits=None, offsets=False, per_tensor=False,
        ...                           activation_range="per-image-capped")
        >>> cfg = config_from_args(args)
        >>> cfg.candidate_bits, cfg.fixed_bits, cfg.learn_offset, cfg.activation_range
        ((6,), 8, False, 'per-image-capped')
    """
    import dataclasses

    from ..transform import DynaQuantConfig
    from ..transform.ptq import PTQ_CONFIG

    changes = dict(candidate_bits=(args.bits,), fixed_bits=args.fixed_bits or PTQ_CONFIG.fixed_bits, learn_offset=args.offsets,
                   activation_per_channel=not args.per_tensor, activation_range=args.activation_range)
    if args.weight_bits is not None and args.weight_bits != args.bits:
        if "weight_bits" not in {f.name for f in dataclasses.fields(DynaQuantConfig)}:
            raise UsageError("--weight-bits: this version's DynaQuantConfig has one width for weights and inputs")
        changes.update(weight_bits=(args.weight_bits,), activation_bits=(args.bits,))
    try:
        return PTQ_CONFIG.replace(**changes)
    except ValueError as error:
        raise UsageError(str(error)) from None


def read_images(folder: Path, count: int, seed: int) -> list:
    """``count`` images of ``folder`` (all when it has no more; otherwise a seeded sample, so that a
    large folder is not read whole) as ``(1, 3, H, W)`` uint8 tensors; a clear error for a folder
    without images."""
    import random

    from ..io.images import list_images, read_image_uint8

    paths = list_images(folder)
    if len(paths) > count:
        paths = sorted(random.Random(seed).sample(paths, count))
    return [read_image_uint8(path).unsqueeze(0) for path in paths]


def run(args: argparse.Namespace) -> int:
    import time

    import torch

    from ..io.checkpoint import load_any, model_from_checkpoint, save_model
    from ..io.files import check_distinct
    from ..transform.ptq import ptq

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.crop_size % 64:
        raise UsageError(f"--crop-size {args.crop_size}: must be a multiple of 64")
    if args.integer_entropy_path and args.activation_range != "static":
        raise UsageError(f"--integer-entropy-path needs static activation ranges, not --activation-range "
                         f"{args.activation_range}")
    check_distinct(args.output, args.checkpoint)
    config = config_from_args(args)
    ckpt = load_any(args.checkpoint, args.arch)
    if ckpt.get("dynaquant") is not None:
        raise UsageError(
            f"{args.checkpoint} holds a quantized model; dynaquant quantize needs the float checkpoint it came from"
        )
    images = read_images(args.images, args.crops, args.seed)
    model = model_from_checkpoint(ckpt, args.checkpoint)
    start = time.perf_counter()
    model = ptq(
        model, images, config, crops=args.crops, crop_size=args.crop_size, search=not args.no_search,
        bias_correction=not args.no_bias_correction, rounding=args.rounding, rounding_iters=args.rounding_iters,
        seed=args.seed, progress=not args.no_progress,
    )
    if args.integer_entropy_path:
        from ..nn.integer_path import install

        install(model)
        model.dynaquant.config = model.dynaquant.config.replace(integer_entropy_path=True)
    save_model(model, args.output, arch=ckpt["arch"], compact=True)
    widths = f"W{args.weight_bits or args.bits}A{args.bits}"
    print(f"wrote {args.output}: {widths}, {len(images)} images, {args.crops} crops of {args.crop_size} px, "
          f"{time.perf_counter() - start:.0f} s")
    return 0
