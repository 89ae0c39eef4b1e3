"""Does a stream encoded here decode exactly under another platform's arithmetic?

Encodes every image with PyTorch (one thread), then decodes the same streams under perturbations
that stand for another machine, and checks whether the decoded latents ``y_hat`` equal the
encoder's (the entropy decoding is exact) and whether the 8-bit image does:

* ``none``: the same process and settings (sanity);
* ``threads-2``: the decoder runs with two torch threads;
* ``split-sum``: every float convolution of the decoder sums its input channels in two halves
  and adds them (the reordering another BLAS, SIMD width or thread split makes);
* ``float64``: the decoder computes in float64;
* ``weights-1ulp``: every float ``weight`` of the decoder nudged by one ulp;
* ``numpy`` (integer path only): the scale-table indexes come from ``export.integer_path``'s numpy
  program, outside PyTorch.

Paths: ``float`` (the float reference), ``fake-quant`` (the int8 model as trained: quantization
simulated in float) and ``integer`` (the same int8 model with ``nn.integer_path`` installed).
With ``--rd`` it also measures what the integer path costs in BD-rate on the ScaleHyperprior
family (q2-q5), against the same int8 models without it.

    python benchmarks/cross_platform.py [--images 24] [--rd]
    -> benchmarks/results/cross_platform.json
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import copy  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable, Dict, Iterator, List  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from dynaquant_brevitas import load_model  # noqa: E402
from dynaquant_brevitas.evaluation import bd_rate, evaluate  # noqa: E402
from dynaquant_brevitas.evaluation.evaluate import LoadedModel, evaluate_model  # noqa: E402
from dynaquant_brevitas.evaluation.coding import decode_image, encode_image, prepare_for_coding  # noqa: E402
from dynaquant_brevitas.export.integer_path import indexes_numpy, run_numpy, save_program, load_program  # noqa: E402
from dynaquant_brevitas.io.files import write_json  # noqa: E402
from dynaquant_brevitas.io.images import list_images, read_image, read_image_uint8  # noqa: E402
from dynaquant_brevitas.nn import integer_path  # noqa: E402

import bench_measure  # noqa: E402

KODAK = ROOT.parent / "shared" / "data" / "kodak"
FAMILY = "bmshj2018-hyperprior-N64-M96"
PERTURBATIONS = ("none", "threads-2", "split-sum", "float64", "weights-1ulp", "numpy")


# --------------------------------------------------------------------------- perturbations


def _split(fn: Callable, weight_dim: int) -> Callable:
    def split(x, weight, bias=None, *args, **kwargs):
        groups = kwargs.get("groups", args[3] if len(args) > 3 else 1)
        if groups != 1 or x.shape[1] < 2:
            return fn(x, weight, bias, *args, **kwargs)
        h = x.shape[1] // 2
        first = weight.narrow(weight_dim, 0, h)
        second = weight.narrow(weight_dim, h, weight.shape[weight_dim] - h)
        return fn(x[:, :h], first, bias, *args, **kwargs) + fn(x[:, h:], second, None, *args, **kwargs)

    return split


@contextlib.contextmanager
def split_sums() -> Iterator[None]:
    """Float convolutions sum their input channels in two halves while the context is open."""
    saved = F.conv2d, F.conv_transpose2d
    F.conv2d, F.conv_transpose2d = _split(saved[0], 1), _split(saved[1], 0)
    try:
        yield
    finally:
        F.conv2d, F.conv_transpose2d = saved


@contextlib.contextmanager
def threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@torch.no_grad()
def nudged(model: torch.nn.Module) -> torch.nn.Module:
    """A copy whose float ``weight`` tensors are one ulp larger."""
    out = copy.deepcopy(model)
    for name, p in out.named_parameters():
        if name.endswith("weight") and p.is_floating_point():
            p.copy_(torch.nextafter(p, torch.full_like(p, float("inf"))))
    return prepare_for_coding(out)


def numpy_indexes(model: torch.nn.Module, program: Dict[str, Any]) -> torch.nn.Module:
    """A copy whose scale-table indexes come from the numpy integer program (the scales' path
    inside PyTorch is bypassed: ``h_s`` returns the numpy result)."""
    out = copy.deepcopy(model)
    integer_path.uninstall(out)
    table = out.gaussian_conditional.scale_table.numpy()
    step = float(program["output_step"])

    def h_s_numpy(_module, inputs, _output):
        q = run_numpy(program, inputs[0].detach().numpy())
        return torch.from_numpy(q.astype("float32") * step)

    def build_indexes(scales):
        q = torch.round(scales.double() / step).to(torch.int64).numpy()
        return torch.from_numpy(indexes_numpy(q, table, step))

    out.h_s.register_forward_hook(h_s_numpy)
    out.gaussian_conditional.build_indexes = build_indexes
    return out


# --------------------------------------------------------------------------- decoding


def _decode(model: torch.nn.Module, coded: Any, size: Any) -> Dict[str, torch.Tensor]:
    captured: Dict[str, torch.Tensor] = {}
    handle = model.g_s.register_forward_pre_hook(lambda _m, inputs: captured.update(y_hat=inputs[0].detach().float()))
    try:
        x_hat = decode_image(model, coded.strings, coded.shape, size)
    finally:
        handle.remove()
    return {"y_hat": captured["y_hat"], "pixels": torch.round(x_hat.float().clamp(0, 1) * 255)}


def decoders(model: torch.nn.Module, path: str, program: Any) -> Dict[str, Callable[[Any, Any], Dict[str, Any]]]:
    """Perturbation -> a function decoding ``(coded, size)`` under it."""
    double = prepare_for_coding(copy.deepcopy(model).double())
    one_ulp = nudged(model)
    out = {
        "none": lambda c, s: _decode(model, c, s),
        "threads-2": lambda c, s: _run_in(threads(2), model, c, s),
        "split-sum": lambda c, s: _run_in(split_sums(), model, c, s),
        "float64": lambda c, s: _decode(double, c, s),
        "weights-1ulp": lambda c, s: _decode(one_ulp, c, s),
    }
    if path == "integer":
        numpy_model = prepare_for_coding(numpy_indexes(model, program))
        out["numpy"] = lambda c, s: _decode(numpy_model, c, s)
    return out


def _run_in(context: Any, model: torch.nn.Module, coded: Any, size: Any) -> Dict[str, Any]:
    with context:
        return _decode(model, coded, size)


def check_model(name: str, path: str, model: torch.nn.Module, images: List[Path], program: Any) -> List[Dict[str, Any]]:
    """Rows ``{model, path, perturbation, images, exact, pixels_exact, max_pixel_error}``."""
    model = prepare_for_coding(model)
    runs = decoders(model, path, program)
    counts = {p: {"exact": 0, "pixels_exact": 0, "failed": 0, "max_pixel_error": 0.0} for p in runs}
    for image in images:
        x = read_image(image)
        with torch.no_grad():
            coded = encode_image(model, x)
            reference = _decode(model, coded, tuple(x.shape[-2:]))
        for perturbation, decode in runs.items():
            try:
                with torch.no_grad():
                    got = decode(coded, tuple(x.shape[-2:]))
            except Exception:  # a desynchronised decoder may raise: it counts as a failure
                counts[perturbation]["failed"] += 1
                continue
            c = counts[perturbation]
            c["exact"] += int(torch.equal(got["y_hat"], reference["y_hat"]))
            c["pixels_exact"] += int(torch.equal(got["pixels"], reference["pixels"]))
            c["max_pixel_error"] = max(c["max_pixel_error"], float((got["pixels"] - reference["pixels"]).abs().max()))
    return [{"model": name, "path": path, "perturbation": p, "images": len(images), **c} for p, c in counts.items()]


# --------------------------------------------------------------------------- models


def models(quick: bool) -> Dict[str, Dict[str, Any]]:
    """name -> {float, int8} models: ScaleHyperprior (committed int8 QAT model) and
    MeanScaleHyperprior (post-training int8 of the committed float reference)."""
    from dynaquant_brevitas.transform.ptq import ptq

    out = {FAMILY: {
        "float": load_model(ROOT / f"checkpoints/reference/{FAMILY}-q4.pt"),
        "int8": load_model(ROOT / f"checkpoints/quantized/{FAMILY}-ablation-int8-no-offset-q4.pt"),
    }}
    if not quick:
        reference = ROOT / "checkpoints/reference/mbt2018-mean-N64-M96-q4.pt"
        crops = [read_image_uint8(p).unsqueeze(0) for p in list_images(ROOT.parent / "shared/data/train")[:8]]
        out["mbt2018-mean-N64-M96"] = {"float": load_model(reference),
                                       "int8": ptq(load_model(reference), crops, crops=8, crop_size=128)}
    return out


def rd_cost(images: Path) -> Dict[str, Any]:
    """BD-rate of the integer path against the same int8 models without it (q2-q5, PSNR)."""
    paths = [str(ROOT / f"checkpoints/quantized/{FAMILY}-ablation-int8-no-offset-q{q}.pt") for q in (2, 3, 4, 5)]
    plain = evaluate(paths, images, name="int8")
    results = {"bpp": [], "psnr-rgb": []}
    for path in paths:
        model = prepare_for_coding(integer_path.install(load_model(path)))
        ev = evaluate_model(LoadedModel(model, "int8-integer", path), list_images(images), "cpu", False)["summary"]
        results["bpp"].append(ev["bpp"])
        results["psnr-rgb"].append(ev["psnr-rgb"])
    return {
        "model": FAMILY, "images": len(list_images(images)),
        "int8": {k: plain["results"][k] for k in ("bpp", "psnr-rgb")}, "int8_integer_path": results,
        "bd_rate_pct": bd_rate(plain["results"]["bpp"], plain["results"]["psnr-rgb"], results["bpp"], results["psnr-rgb"]),
    }


def main(argv: List[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=24, help="how many Kodak images (default all 24)")
    p.add_argument("--kodak", type=Path, default=KODAK)
    p.add_argument("--rd", action="store_true", help="also the BD-rate cost of the integer path (q2-q5)")
    p.add_argument("--quick", action="store_true", help="ScaleHyperprior only (for tests)")
    p.add_argument("--output", type=Path, default=ROOT / "benchmarks/results/cross_platform.json")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    images = list_images(args.kodak)[: args.images]
    start = time.perf_counter()
    rows: List[Dict[str, Any]] = []
    for name, pair in models(args.quick).items():
        exact = integer_path.install(copy.deepcopy(pair["int8"]))
        scratch = ROOT / "runs" / "cross_platform" / f"{name}.npz"
        program = load_program(save_program(integer_path.build_program(exact.h_s), scratch))
        for path, model in (("float", pair["float"]), ("fake-quant", pair["int8"]), ("integer", exact)):
            rows += check_model(name, path, model, images, program)
            print(*(f"{r['model']} {r['path']:<10} {r['perturbation']:<13} exact {r['exact']}/{r['images']}"
                    for r in rows[-len(PERTURBATIONS):] if r["path"] == path), sep="\n", flush=True)
    result: Dict[str, Any] = {"rows": rows, "machine": bench_measure.machine_line(bench_measure.machine_info()),
                              "command": "python benchmarks/cross_platform.py " + " ".join(argv or sys.argv[1:]),
                              "seconds": time.perf_counter() - start}
    if args.rd:
        result["rd_cost"] = rd_cost(args.kodak if args.images >= 24 else _subset(args.kodak, images))
        print(f"integer path RD cost: {result['rd_cost']['bd_rate_pct']:+.3f} % BD-rate")
    write_json(args.output, result)
    print(f"wrote {args.output}")
    return 0


def _subset(kodak: Path, images: List[Path]) -> Path:
    folder = ROOT / "runs" / "cross_platform" / "images"
    folder.mkdir(parents=True, exist_ok=True)
    for image in images:
        (folder / image.name).write_bytes(image.read_bytes())
    return folder


if __name__ == "__main__":
    sys.exit(main())
