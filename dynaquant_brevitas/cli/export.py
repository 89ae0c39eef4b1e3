"""``dynaquant export``: freeze a bit profile, export g_a/g_s to QONNX (verified), optionally through FINN,
or to QCDQ for onnxruntime (verified), optionally with integer convolution kernels."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Tuple, Union

from ..export.ort_int8 import KERNELS
from ._common import UsageError, finite_float

HELP = ("freeze a bit profile and export the transforms to QONNX (--finn runs FINN's flow) or to QCDQ "
        "for onnxruntime, verified")

EPILOG = """examples:
  dynaquant export --checkpoint model.pt --profile max -o export/
  dynaquant export --checkpoint model.pt --profile g_a.2=6,g_a.4=4,g_a.6=8,g_s.2=8,g_s.4=6,g_s.6=4 \\
      --size 768x512 --finn --clock-ns 5 --target-fps 30 -o export/
  dynaquant export --checkpoint model.pt --format qcdq --int8-kernels u8s8 --calibration train/ \\
      --size 768x512 -o export/
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("export", help=HELP, description=HELP, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, type=Path, help="dynaquant checkpoint")
    p.add_argument("--profile", default="max",
                   help="max, min, mode (with --images), a JSON file, or NAME=BITS,... (default: max)")
    p.add_argument("--images", type=Path, help="directory of images for --profile mode")
    p.add_argument("--part", nargs="+", default=["g_a", "g_s"], choices=("g_a", "g_s"),
                   help="transforms to export (default: g_a g_s)")
    p.add_argument("--size", default="768x512", type=_size, help="image WIDTHxHEIGHT (default: 768x512)")
    p.add_argument("--verify-size", default="48x32", type=_size,
                   help="image size FINN's Python execution is verified at (default: 48x32)")
    p.add_argument("--snap", type=finite_float, default=1e-3,
                   help="zero points this close to the integer grid are put on it (0: exact; default 1e-3)")
    p.add_argument("--border", choices=("map", "bias"), default="map",
                   help="zero-point correction: exact output-sized maps (default) or channel biases, exact "
                        "inside convolutions and off at borders (verified against --tolerance)")
    p.add_argument("--tolerance", type=finite_float, default=1.0, help="allowed error in output steps (default 1)")
    p.add_argument("--finn", action="store_true", help="also run FINN's front end and write its estimates")
    p.add_argument("--clock-ns", type=finite_float, default=5.0, help="clock period for the FPS estimate (default 5)")
    p.add_argument("--target-fps", type=finite_float, help="SetFolding target (default: fully serial layers)")
    p.add_argument("--mvau-wwidth-max", type=int, default=36,
                   help="SetFolding's cap on SIMD x weight bits (FINN's default: 36)")
    p.add_argument("--format", choices=("qonnx", "qcdq"), default="qonnx",
                   help="qonnx: QONNX/FINN graphs (default); qcdq: QuantizeLinear/DequantizeLinear graphs "
                        "for onnxruntime (bit widths above 8 are exported at 8)")
    p.add_argument("--int8-kernels", choices=("none",) + KERNELS, default="none",
                   help="qcdq only: also write a graph whose convolutions onnxruntime runs as QLinearConv; "
                        "s8s8 exact, u8s8 7-bit weights, fast on AVX2 (default: none)")
    p.add_argument("--calibration", type=Path, metavar="DIR",
                   help="images whose crops (at most --size) calibrate the convolution output ranges of "
                        "--int8-kernels (required with it)")
    p.add_argument("--ort-tolerance", type=finite_float, default=0.1,
                   help="qcdq: allowed max abs error of onnxruntime against PyTorch, as a fraction of the "
                        "largest output magnitude (default 0.1)")
    p.add_argument("-o", "--output", required=True, type=Path, help="output directory")
    return p


def _size(text: str) -> Tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got {text!r}") from None
    if width <= 0 or height <= 0 or width % 16 or height % 16:
        raise argparse.ArgumentTypeError(f"{text}: width and height must be positive multiples of 16")
    return width, height


def parse_profile(text: str) -> Union[str, Dict[str, int]]:
    """``max``/``min``/``mode``, a JSON file of ``{layer: bits}``, or ``name=bits,...``.

    Example:
        >>> parse_profile("g_a.2=6, g_s.4=4"), parse_profile("max")
        ({'g_a.2': 6, 'g_s.4': 4}, 'max')
    """
    if text in ("max", "min", "mode"):
        return text
    if "=" in text:
        pairs = [item.split("=") for item in text.split(",") if item.strip()]
        if any(len(pair) != 2 or not pair[1].strip().isdigit() for pair in pairs):
            raise UsageError(f"--profile {text!r}: expected NAME=BITS pairs separated by commas")
        return {name.strip(): int(bits) for name, bits in pairs}
    path = Path(text)
    if not path.is_file():
        raise UsageError(f"--profile {text!r}: not max/min/mode, NAME=BITS pairs, or an existing JSON file")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UsageError(f"--profile {path}: cannot read a JSON file: {err}") from None
    if not isinstance(data, dict) or not all(isinstance(v, int) and not isinstance(v, bool) for v in data.values()):
        raise UsageError(f"--profile {path}: expected a JSON object of layer name -> integer bits")
    return {str(k): v for k, v in data.items()}


def _images(directory: Path) -> List[Any]:
    from ..io.images import list_images, read_image

    return [read_image(p) for p in list_images(directory)]


def run(args: argparse.Namespace) -> int:
    from ..io.checkpoint import load_model
    from ..transform import freeze

    _check_options(args)
    model = load_model(args.checkpoint)
    if not hasattr(model, "dynaquant") and not hasattr(model, "dynaquant_profile"):
        raise UsageError(
            f"{args.checkpoint} holds a float model; quantize it first, e.g. "
            f"dynaquant quantize --checkpoint {args.checkpoint} --images DIR -o quantized.pt"
        )
    profile = parse_profile(args.profile)
    if profile == "mode" and args.images is None:
        raise UsageError("--profile mode needs --images DIR (the images whose most frequent choices are kept)")
    images = _images(args.images) if profile == "mode" else None
    frozen = freeze(model, profile, images) if hasattr(model, "dynaquant") else model
    args.output.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=args.output))
    try:  # everything is written to a staging folder first: a failed export leaves no file behind
        final, args.output = args.output, staging
        print(f"profile: {frozen.dynaquant_profile}")
        report: Dict[str, Any] = {"profile": frozen.dynaquant_profile}
        if args.format == "qcdq":
            report.update(_qcdq_parts(frozen, args))
        else:
            _qonnx_parts(frozen, args, report)
        args.output = final
        _publish(staging, final, report)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return 0


def _publish(staging: Path, final: Path, report: Dict[str, Any]) -> None:
    """Move the staged files into ``final``, ``export.json`` (the record of success) last."""
    from ..io.files import write_json

    text = json.dumps(report).replace(str(staging), str(final))
    write_json(staging / "profile.json", report["profile"])
    for path in sorted(staging.iterdir()):
        os.replace(path, final / path.name)
    write_json(final / "export.json", json.loads(text))


def _check_options(args: argparse.Namespace) -> None:
    """Options that only make sense together (a :class:`UsageError` otherwise)."""
    if args.format != "qcdq" and (args.int8_kernels != "none" or args.calibration):
        raise UsageError("--int8-kernels and --calibration apply to --format qcdq")
    if args.format == "qcdq" and args.finn:
        raise UsageError("--finn runs FINN's flow on QONNX graphs: leave out --format qcdq")
    if args.int8_kernels != "none" and args.calibration is None:
        raise UsageError(f"--int8-kernels {args.int8_kernels} needs --calibration DIR: images whose crops "
                         "calibrate the convolution output ranges")
    if args.calibration is not None and not args.calibration.is_dir():
        raise UsageError(f"--calibration {args.calibration}: not a directory of images")
    if args.format == "qcdq" and not set(args.part) <= {"g_a", "g_s"}:
        raise UsageError(f"--format qcdq exports g_a and g_s, not {sorted(set(args.part) - {'g_a', 'g_s'})}")


def _qonnx_parts(frozen: Any, args: argparse.Namespace, report: Dict[str, Any]) -> None:
    """Today's export: each part to verified QONNX (or through FINN), recorded in ``report``."""
    from ..export import export_qonnx

    for part in args.part:
        module = getattr(frozen, part, None)
        if module is None:
            raise ValueError(f"the model has no {part!r}")
        shape = _input_shape(frozen, part, args.size)
        path = args.output / f"{part}.onnx"
        if args.finn:
            report[part] = _finn(module, path, shape, _input_shape(frozen, part, args.verify_size), part, args)
        else:
            result = export_qonnx(module, str(path), shape, step=_step(part), snap=args.snap, border=args.border,
                                  tolerance_steps=args.tolerance)
            print(result.summary())
            report[part] = {"qonnx": str(path), "max_error_steps": result.max_error_steps}


def _qcdq_parts(frozen: Any, args: argparse.Namespace) -> Dict[str, Any]:
    """QCDQ graphs for onnxruntime (and integer-kernel ones), verified on one ``--size`` input:
    the first calibration image fitted to it, or a seeded random image."""
    from ..export import VerificationError
    from ..export.qcdq import export_onnxruntime

    kernel = None if args.int8_kernels == "none" else args.int8_kernels
    crops = [_crop(image, args.size) for image in _images(args.calibration)] if kernel else []
    width, height = args.size
    import torch

    noise = torch.Generator().manual_seed(0)
    image = _fit(crops[0], args.size) if crops else torch.rand(1, 3, height, width, generator=noise)
    try:
        report = export_onnxruntime(frozen, args.output, image, tuple(args.part), kernel, crops, args.ort_tolerance)
    except VerificationError as err:
        raise UsageError(f"{err}; check the calibration images or raise --ort-tolerance") from None
    for part in args.part:
        for graph, facts in report[part].items():
            print(f"{part} {graph}: {facts['file']}, {facts['int_kernels']} integer kernels, max abs error "
                  f"{facts['max_abs_error']:.3g} ({facts['relative_error']:.2%} of the largest output)")
    for note in report["notes"]:
        print(f"note: {note}")
    files = [facts["file"] for part in args.part for facts in report[part].values()]
    return dict(report, format="qcdq", files=files, size=list(args.size), calibration_images=len(crops))


def _crop(image: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """The centre of ``image`` at most ``size`` (WIDTH, HEIGHT), sides multiples of 16."""
    height, width = (min(have, want) // 16 * 16 for have, want in zip(image.shape[-2:], size[::-1]))
    if not height or not width:
        raise UsageError(f"calibration image of {image.shape[-1]}x{image.shape[-2]} px: at least 16x16 needed")
    top, left = (image.shape[-2] - height) // 2, (image.shape[-1] - width) // 2
    return image[..., top:top + height, left:left + width]


def _fit(image: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """``image`` (at most ``size``) padded to ``size`` by replicating its border."""
    width, height = size
    from torch.nn.functional import pad

    return pad(image, (0, width - image.shape[-1], 0, height - image.shape[-2]), mode="replicate")


def _step(part: str) -> float:
    """Output step of a CompressAI transform: latents are rounded to integers, pixels are 8-bit."""
    return {"g_a": 1.0, "g_s": 1.0 / 255}.get(part, None)


def _input_shape(model: Any, part: str, size: Tuple[int, int]) -> Tuple[int, ...]:
    width, height = size
    if part == "g_s":
        channels = next(m for m in getattr(model, part).modules() if hasattr(m, "in_channels")).in_channels
        return (1, channels, height // 16, width // 16)
    return (1, 3, height, width)


def _finn(module: Any, path: Path, shape: Tuple[int, ...], verify_shape: Tuple[int, ...], part: str,
          args: argparse.Namespace) -> Dict[str, Any]:
    from ..export.finn import export_finn

    target = int(1e9 / args.clock_ns / args.target_fps) if args.target_fps else None
    build = export_finn(module, str(path), shape, verify_shape=verify_shape, step=_step(part), snap=args.snap,
                        border=args.border, tolerance_steps=args.tolerance, target_cycles=target,
                        clock_ns=args.clock_ns, mvau_wwidth_max=args.mvau_wwidth_max)
    estimate = build.estimate
    print(f"{part}: {len(build.layers)} FINN hardware layers, {estimate['fps']:.2f} fps at "
          f"{1e3 / args.clock_ns:.0f} MHz; FINN vs QONNX {build.max_error_steps:.2g} steps, integer "
          f"weights vs PyTorch max {build.approximation_max_steps:.2g} / mean "
          f"{build.approximation_mean_steps:.2g} steps")
    return {"qonnx": str(path), "finn": str(path.with_name(f"{part}_finn.onnx")),
            "finn_vs_qonnx_max_steps": build.max_error_steps,
            "integer_weights_vs_torch_max_steps": build.approximation_max_steps,
            "integer_weights_vs_torch_mean_steps": build.approximation_mean_steps,
            "layers": build.layers, "estimate": estimate}
