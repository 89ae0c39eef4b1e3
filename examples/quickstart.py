"""Quickstart: DynaQuant on a CompressAI ScaleHyperprior, from float model to frozen integer widths.

1. take a float ``ScaleHyperprior(N=64, M=96)``: the committed reference checkpoint if there is
   one, otherwise random weights (then the numbers show the mechanics only);
2. ``dynaquantize`` it: content-aware quantizers with DGM rounding in every conv, a bit-width
   selector per side choosing 4, 6 or 8 bits per image and layer;
3. ``calibrate`` the activation ranges on photos that ship with scikit-image;
4. compress and decompress a held-out photo with real bitstreams: float, static INT8 and dynamic;
5. ``freeze`` the most frequent choice per layer into a static model and code the photo again.

Run from the repository root: ``python examples/quickstart.py``.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
from compressai.models import ScaleHyperprior
from sample_images import holdout_image, train_images
from torch import nn

from dynaquant_brevitas import DynaQuantConfig, calibrate, dynaquantize, freeze, model_size_bytes
from dynaquant_brevitas.io.checkpoint import load_model
from dynaquant_brevitas.io.images import to_uint8
from dynaquant_brevitas.evaluation.coding import decode_image, encode_image, last_choice, prepare_for_coding
from dynaquant_brevitas.evaluation.metrics import psnr
from dynaquant_brevitas.transform import resolve_profile

REFERENCE = Path(__file__).resolve().parents[1] / "checkpoints" / "reference" / "bmshj2018-hyperprior-N64-M96-q4.pt"


def float_model(checkpoint: Optional[Path], random_weights: bool) -> Tuple[nn.Module, str]:
    """The float codec and a sentence saying where its weights come from."""
    path = checkpoint or REFERENCE
    if not random_weights and path.is_file():
        model = load_model(path)
        if hasattr(model, "dynaquant"):
            raise SystemExit(f"{path} holds a dynaquantized model; the quickstart starts from a float one")
        return model, f"weights: trained checkpoint {path}"
    if checkpoint is not None and not random_weights:
        raise SystemExit(f"checkpoint not found: {checkpoint}")
    torch.manual_seed(0)
    return ScaleHyperprior(N=64, M=96), (
        "weights: RANDOM (no reference checkpoint at checkpoints/reference/ yet): rates and PSNRs\n"
        "below only show the mechanics (real bitstreams, chosen bits, sizes), not compression quality"
    )


def quantized(model: nn.Module, config: DynaQuantConfig, calibration: List[torch.Tensor]) -> nn.Module:
    """A calibrated DynaQuant copy of ``model``, ready to code."""
    result = dynaquantize(copy.deepcopy(model), config)
    calibrate(result, calibration)
    return prepare_for_coding(result)


def code(model: nn.Module, image: torch.Tensor) -> Dict[str, object]:
    """Compress and decompress ``image`` for real; bpp from the bitstream, PSNR on 8-bit output."""
    coded = encode_image(model, image)
    decoded = decode_image(model, coded.strings, coded.shape, coded.size)
    h, w = coded.size
    record = {"bpp": 8 * coded.num_bytes / (h * w), "psnr": psnr(image, to_uint8(decoded).float() / 255)}
    bits = last_choice(model)
    if bits is not None:
        record["profile"] = dict(zip(bits["layers"], bits["weight_bits"]))
    return record


def describe_bits(profile: Optional[Dict[str, object]]) -> str:
    """Average and per-layer widths; a (weight, activation) pair counts as its weight width."""
    if not profile:
        return "32 (float)"
    values = [v[0] if isinstance(v, (tuple, list)) else v for v in profile.values()]
    return f"{sum(values) / len(values):.2f} avg: " + " ".join(str(int(b)) for b in values)


def table(rows: List[Tuple[str, Dict[str, object], int]]) -> str:
    header = f"{'model':<26}{'bpp':>8}{'PSNR dB':>9}{'size KiB':>10}  chosen bits (dynamic layers)"
    lines = [header, "-" * len(header)]
    for name, r, size in rows:
        lines.append(
            f"{name:<26}{r['bpp']:>8.3f}{r['psnr']:>9.2f}{size / 1024:>10.1f}  "
            f"{describe_bits(r.get('profile'))}"
        )
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="side of the square crops (multiple of 64)")
    parser.add_argument("--checkpoint", type=Path, help=f"float checkpoint (default: {REFERENCE.name} if present)")
    parser.add_argument("--random-weights", action="store_true", help="ignore any checkpoint")
    args = parser.parse_args(argv)
    if args.size <= 0 or args.size % 64:
        parser.error("--size must be a positive multiple of 64")
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))

    model, origin = float_model(args.checkpoint, args.random_weights)
    print(origin)
    image, calibration = holdout_image(args.size), train_images(args.size)
    print(f"images: skimage.data crops of {args.size}x{args.size}; calibration on 4 photos, coding the astronaut")

    rows = [("float (FP32)", code(prepare_for_coding(model), image), model_size_bytes(model))]

    static = quantized(model, DynaQuantConfig(candidate_bits=(8,)), calibration)  # one width: no selector
    result = code(static, image)
    result["profile"] = resolve_profile(static, "max")
    rows.append(("DynaQuant static INT8", result, model_size_bytes(static)))

    config = DynaQuantConfig(candidate_bits=(4, 6, 8), fixed_bits=8)
    dynamic = quantized(model, config, calibration)
    result = code(dynamic, image)
    rows.append(("DynaQuant (dynamic)", result, model_size_bytes(dynamic, result["profile"])))

    profile = resolve_profile(dynamic, "mode", images=calibration + [image])  # most frequent choice
    frozen = prepare_for_coding(freeze(dynamic, profile))
    result = code(frozen, image)
    result["profile"] = profile
    rows.append(("DynaQuant frozen (mode)", result, model_size_bytes(frozen)))

    print()
    print(table(rows))
    print(
        f"\nFixed-precision layers (selector taps, hyper transforms) run at {config.fixed_bits} bits. Sizes pack "
        "weights at their bit widths,\neverything else as FP32 (the dynamic model's size includes its two "
        "selectors; the frozen one has none).\nHere the quantizers are only calibrated and the selectors are "
        "untrained, so their choices are arbitrary;\nfine-tuning (dynaquant train with quant.config, see "
        "examples/finetune_and_evaluate.py) trains both."
    )

if __name__ == "__main__":
    main()
