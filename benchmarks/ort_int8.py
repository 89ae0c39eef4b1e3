"""Integer kernels in onnxruntime: encoder/decoder latency and the Kodak rate-distortion cost.

For each per-tensor quantized model (Brevitas's stock int8 baseline, trained; DynaQuant int8
with per-tensor activations, calibrated only) ``bench_measure.measure_latency`` times float
PyTorch, float onnxruntime, the QCDQ graph and its integer-kernel rewrites
(:func:`dynaquant_brevitas.export.ort_int8.quantize_conv_outputs`, calibrated on training crops)
on the latency image, interleaved, medians. :func:`rate_distortion` then puts the int8-kernel
``g_a``/``g_s`` back into the CompressAI model and compares PSNR and estimated bpp (likelihoods
of a normal forward) with the PyTorch quantized model on a few Kodak images. The trained
DynaQuant int8 model (per-channel activations) is only checked for fusion: it cannot fuse.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ort_int8.py            # about 10 minutes on 1 core
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ort_int8.py --repeats 3 --rd-images 1 --out /tmp/o.json
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported

import argparse  # noqa: E402
import copy  # noqa: E402
import glob  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Dict, List, Optional  # noqa: E402

import torch  # noqa: E402
import yaml  # noqa: E402
from torch import nn  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_measure  # noqa: E402
import bench_methods  # noqa: E402
import run as bench_run  # noqa: E402

from dynaquant_brevitas.export.ort import OrtModule, int8_session  # noqa: E402
from dynaquant_brevitas.export.ort_int8 import quantize_conv_outputs  # noqa: E402


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reference", default="checkpoints/reference/bmshj2018-hyperprior-N64-M96-q4.pt")
    p.add_argument("--brevitas", default="runs/bench/train/brevitas-int8/q4-*/final.pt",
                   help="trained brevitas-int8 checkpoint (glob)")
    p.add_argument("--dynaquant", default="runs/bench/train/dynaquant-int8/q4-*/final.pt",
                   help="trained DynaQuant int8 checkpoint (glob), fusion check only")
    p.add_argument("--dynaquant-pt", default="runs/bench/train/dynaquant-int8-pt/q4-*/final.pt",
                   help="trained per-tensor DynaQuant int8 checkpoint (glob); when none matches, a calibrated "
                        "(post-training) per-tensor model is measured instead")
    p.add_argument("--kodak", default="../shared/data/kodak")
    p.add_argument("--train", default="../shared/data/train", help="calibration crops come from here")
    p.add_argument("--calibration-images", type=int, default=8)
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--rd-images", type=int, default=4, help="first N Kodak images for PSNR/bpp")
    p.add_argument("--kernels", nargs="+", default=["u8s8", "s8s8"], help="first one is the headline int8 variant")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--work", default="runs/ort_int8", help="ONNX graphs go here")
    p.add_argument("--out", default="benchmarks/results/ort_int8.json")
    return p.parse_args(argv)


def _one(pattern: str) -> Path:
    found = sorted(glob.glob(pattern))
    if not found:
        raise SystemExit(f"no file matches {pattern}")
    return Path(found[0])


def landscape_images(root: str, count: int) -> List[torch.Tensor]:
    """The first ``count`` Kodak images, portrait ones transposed (all 768x512 then)."""
    from dynaquant_brevitas.io.images import list_images, read_image

    images = [read_image(p) for p in list_images(root)[:count]]
    return [x.transpose(2, 3) if x.shape[2] > x.shape[3] else x for x in images]


@torch.no_grad()
def rate_distortion(model: nn.Module, images: List[torch.Tensor]) -> Dict[str, float]:
    """Mean PSNR (dB) and estimated bpp (likelihoods of an eval-mode forward) over ``images``."""
    psnr, bpp = [], []
    for x in images:
        out = model(x)
        pixels = x.shape[2] * x.shape[3]
        bpp.append(sum(float(-torch.log2(v).sum()) for v in out["likelihoods"].values()) / pixels)
        mse = float(torch.mean((out["x_hat"].clamp(0, 1) - x) ** 2))
        psnr.append(10 * math.log10(1 / mse))
    return {"psnr_db": sum(psnr) / len(psnr), "bpp": sum(bpp) / len(bpp)}


def with_sessions(model: nn.Module, folder: Path, kernel: str) -> nn.Module:
    """A copy of ``model`` whose ``g_a``/``g_s`` are the int8-kernel graphs in ``folder``."""
    swapped = copy.deepcopy(model)
    for part in ("g_a", "g_s"):
        setattr(swapped, part, OrtModule(int8_session(folder / f"int8_{kernel}.{part}.onnx")[0]))
    return swapped


def per_tensor_dynaquant(reference: str, crops: List[torch.Tensor]) -> nn.Module:
    from dynaquant_brevitas import DynaQuantConfig, calibrate, dynaquantize
    from dynaquant_brevitas.io.checkpoint import load_model

    model = dynaquantize(load_model(reference), DynaQuantConfig(candidate_bits=(8,), activation_per_channel=False))
    calibrate(model, [torch.cat(crops[i:i + 4]) for i in range(0, len(crops), 4)])
    return model.eval()


def fusion_check(model: nn.Module, image: torch.Tensor, crops: List[torch.Tensor], folder: Path) -> Dict[str, Any]:
    """Which convolutions of ``model``'s QCDQ graphs can be prepared for integer kernels, and why not."""
    folder.mkdir(parents=True, exist_ok=True)
    dep = bench_measure.deployable(model, None)
    with torch.no_grad():
        latents = [torch.round(dep.reference.g_a(c)) for c in crops]
        inputs = {"g_a": (image, crops), "g_s": (dep.reference.g_a(image), latents)}
    out = {}
    for part, (inp, samples) in inputs.items():
        path = bench_measure.export_qcdq(getattr(dep.deploy, part), inp, folder / f"qcdq.{part}.onnx")
        bench_measure.add_zero_point_shifts(path, part, dep.shifts)
        report = quantize_conv_outputs(path, [s.numpy() for s in samples])
        out[part] = {"prepared": len(report.quantized), "skipped": report.skipped,
                     "int_kernels": int8_session(report.path)[1].get("QLinearConv", 0)}
    return out


def measure(name: str, model: nn.Module, float_model: nn.Module, image: torch.Tensor, crops: List[torch.Tensor],
            rd_images: List[torch.Tensor], args: argparse.Namespace) -> Dict[str, Any]:
    folder = Path(args.work) / name
    print(f"[{name}] latency", flush=True)
    latency = bench_measure.measure_latency(model, float_model, image, folder, args.repeats, args.warmup,
                                            calibration=crops, int8_kernels=tuple(args.kernels))
    reference = bench_measure.deployable(model, None).reference
    print(f"[{name}] rate-distortion on {len(rd_images)} Kodak images", flush=True)
    rd = {"torch_quantized": rate_distortion(reference, rd_images)}
    for kernel in args.kernels:
        rd[f"ort_int8_{kernel}"] = rate_distortion(with_sessions(reference, folder, kernel), rd_images)
        rd[f"ort_int8_{kernel}"].update(
            psnr_delta_db=rd[f"ort_int8_{kernel}"]["psnr_db"] - rd["torch_quantized"]["psnr_db"],
            bpp_delta_percent=100 * (rd[f"ort_int8_{kernel}"]["bpp"] / rd["torch_quantized"]["bpp"] - 1))
    return {"latency": latency, "rate_distortion": rd}


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    settings = yaml.safe_load((HERE / "config.yaml").read_text())
    image = bench_run.latency_image({"eval": {"images": args.kodak}, "latency": settings["latency"]})
    crops = bench_measure.calibration_crops(args.train, args.calibration_images, args.crop)
    rd_images = landscape_images(args.kodak, args.rd_images)
    from dynaquant_brevitas.io.checkpoint import load_model

    float_model = load_model(args.reference).eval()
    trained_pt = sorted(glob.glob(args.dynaquant_pt))
    models = {"brevitas-int8": bench_methods.brevitas_from_checkpoint(args.reference, _one(args.brevitas))}
    if trained_pt:
        models["dynaquant-int8-pt"] = load_model(trained_pt[0]).eval()
    else:
        models["dynaquant-int8-per-tensor-ptq"] = per_tensor_dynaquant(args.reference, crops)
    result: Dict[str, Any] = {
        "machine": bench_measure.machine_info(),
        "note": "measured while another benchmark job used one of the two cores: absolute times are noisy, "
                "the variants are interleaved so their ratios are comparable",
        "settings": {k: v for k, v in vars(args).items()},
        "rate_distortion_images": f"first {args.rd_images} Kodak images, landscape, full 768x512",
        "models": {name: measure(name, m, float_model, image, crops, rd_images, args) for name, m in models.items()},
    }
    print("[dynaquant-int8 trained, per-channel] fusion check", flush=True)
    result["fusion_check"] = {"dynaquant-int8 (trained, per-channel activations)": fusion_check(
        load_model(_one(args.dynaquant)).eval(), image, crops, Path(args.work) / "dynaquant-int8")}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=bench_run._jsonable) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
