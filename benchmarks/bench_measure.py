"""Measurements behind ``benchmarks/run.py``: bits, packed sizes, latencies, training-step times.

* bits: :func:`dynaquant_brevitas.transform.cost.average_bits` on :func:`~dynaquant_brevitas.transform.cost.layer_macs`
  (the same formulas for Brevitas's stock layers, whose bit width ``cost`` does not know);
* sizes: :func:`dynaquant_brevitas.export.packing.pack_model` writes the packed file and its length is the
  size; :func:`dynaquant_brevitas.transform.cost.model_size_bytes` is the estimate it is compared with;
* latency: ``g_a`` and ``g_s`` in float PyTorch, the same float modules exported to ONNX, the
  frozen quantized model exported with Brevitas's ``export_onnx_qcdq``, and that QCDQ graph with
  its convolutions' outputs quantized so that onnxruntime runs integer kernels
  (:func:`dynaquant_brevitas.export.ort_int8.quantize_conv_outputs`), all run by onnxruntime
  (CPU, ``ORT_ENABLE_ALL``, one intra-op thread); every variant interleaved in one loop, medians.
  The QCDQ export itself is :mod:`dynaquant_brevitas.export.qcdq` (``dynaquant export --format qcdq``);
* training step: ``dynaquant_brevitas.training.train_step`` (forward, loss, backward, optimiser
  steps) of the method against float, interleaved, medians.
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch
from torch import nn

from dynaquant_brevitas.export.ort import int8_session, int_kernel_count, ort_session
from dynaquant_brevitas.export.qcdq import add_zero_point_shifts, calibration_inputs, deployable, export_qcdq

#: the repository root
ROOT = Path(__file__).resolve().parent.parent


def repo_relative(path: Any) -> str:
    """``path`` relative to the repository root when it lies inside it, else absolute."""
    resolved = Path(os.path.realpath(path))
    try:
        return str(resolved.relative_to(Path(os.path.realpath(ROOT))))
    except ValueError:
        return str(resolved)


# --------------------------------------------------------------------------- machine


def machine_info() -> Dict[str, Any]:
    """What the measurements ran on (CPU, cores, library versions, load at the time)."""
    import brevitas
    import compressai

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        import onnxruntime

        ort_version = onnxruntime.__version__
    except ImportError:
        ort_version = None
    return {
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "onnxruntime_threads": 1,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "brevitas": brevitas.__version__,
        "compressai": compressai.__version__,
        "onnxruntime": ort_version,
        "load_average_1min": round(os.getloadavg()[0], 2),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def machine_line(info: Mapping[str, Any]) -> str:
    """One line for a table: CPU, cores, threads, load."""
    return (
        f"{info['cpu']}, {info['cpu_count']} cores, 1 torch / 1 onnxruntime thread, "
        f"load {info['load_average_1min']} ({info['timestamp'][:10]})"
    )


# --------------------------------------------------------------------------- bits and sizes


def bit_figures(model: nn.Module, macs: Mapping[str, int], profile: Optional[Mapping[str, float]]) -> Dict[str, float]:
    """``bits_per_param``, ``avg_activation_bits``, ``bits_bitops``, ``bitops_ratio``
    (:func:`~dynaquant_brevitas.transform.cost.average_bits`)."""
    from dynaquant_brevitas.transform.cost import average_bits

    return average_bits(model, macs, profile)


def profiles_from_eval(evaluation: Mapping[str, Any]) -> Tuple[Optional[Dict[str, Any]], Optional[Dict[str, Any]]]:
    """``(mean widths per layer, most frequent widths per layer)`` over the evaluated images (dynamic
    models; ``(None, None)`` for static ones): :func:`~dynaquant_brevitas.evaluation.evaluate.chosen_profiles`."""
    from dynaquant_brevitas.evaluation.evaluate import chosen_profiles

    return chosen_profiles(evaluation.get("summary", {}).get("layers") or [], evaluation.get("per_image", []))


def size_figures(model: nn.Module, evaluation: Mapping[str, Any], folder: Path) -> Dict[str, Any]:
    """Packed sizes (files written under ``folder``) and the ``cost`` estimate."""
    from dynaquant_brevitas.transform.cost import model_size_bytes
    from dynaquant_brevitas.export.packing import pack_model
    from dynaquant_brevitas.transform import freeze

    folder.mkdir(parents=True, exist_ok=True)
    mean, mode = profiles_from_eval(evaluation)
    out: Dict[str, Any] = {"packed_size_all_candidates_bytes": None, "packed_profile": mode}
    if mode is not None:  # dynamic: one file frozen at each layer's most frequent choice, one with every candidate
        frozen = freeze(model, mode)
        packed = pack_model(frozen, folder / "mode.dqpk")
        state = model.dynaquant
        weights = sorted({w for w, _ in state.config.pairs})
        dynamic = {name: weights for side in state.layer_names.values() for name in side}
        out["packed_size_all_candidates_bytes"] = pack_model(model, folder / "all-candidates.dqpk", dynamic).size_bytes
        out["model_size_estimate_bytes"] = model_size_bytes(model, mean)
    else:
        packed = pack_model(model, folder / "model.dqpk")
        out["model_size_estimate_bytes"] = model_size_bytes(model)
    out["packed_size_bytes"] = packed.size_bytes
    out["packed"] = {k: v for k, v in packed.to_dict().items() if k != "layers"}
    out["packed"]["layer_bits"] = {k: v[0] for k, v in packed.layers.items()}
    return out


# --------------------------------------------------------------------------- timing


def interleaved_medians(variants: Mapping[str, Callable[[], Any]], repeats: int, warmup: int) -> Dict[str, float]:
    """Median seconds of each variant, the variants run in turn ``warmup + repeats`` times."""
    times: Dict[str, List[float]] = {name: [] for name in variants}
    for i in range(warmup + repeats):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def export_float(module: nn.Module, example: torch.Tensor, path: Path) -> Path:
    with torch.no_grad():
        torch.onnx.export(module.eval(), example, str(path), dynamo=False, opset_version=13)
    return path


def _runner(session: Any, x: np.ndarray) -> Callable[[], Any]:
    name = session.get_inputs()[0].name
    return lambda: session.run(None, {name: x})


def measure_latency(
    model: Optional[nn.Module],
    float_model: nn.Module,
    image: torch.Tensor,
    folder: Path,
    repeats: int,
    warmup: int,
    profile: Optional[Mapping[str, int]] = None,
    calibration: Optional[List[torch.Tensor]] = None,
    int8_kernels: Tuple[str, ...] = ("u8s8",),
) -> Dict[str, Any]:
    """Encoder (``g_a``) and decoder (``g_s``) latency of ``model`` against float, one interleaved run.

    ``model`` is ``None`` for the float row. ``g_s`` runs on the float encoder's latent of ``image``.
    The integer-kernel variants (one per ``int8_kernels`` entry, the first one reported as
    ``{part}_int8_*``) observe their convolution output ranges on ``calibration`` images (``g_s``
    on their rounded latents from the exported encoder), or on the measured inputs when ``None``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    float_model = float_model.eval()
    x = image
    with torch.no_grad():
        y = float_model.g_a(x)
    inputs = {"g_a": x, "g_s": y}
    variants: Dict[str, Callable[[], Any]] = {}
    graphs: Dict[str, Any] = {}
    for part, inp in inputs.items():
        module = getattr(float_model, part)
        variants[f"torch_float.{part}"] = _no_grad(module, inp)
        session, ops = ort_session(export_float(module, inp, folder / f"float.{part}.onnx"))
        variants[f"ort_float.{part}"] = _runner(session, inp.numpy())
        graphs[f"ort_float.{part}"] = {"ops": ops}
    notes: Dict[str, Any] = {}
    if model is not None:
        dep = deployable(model, profile)
        notes = dict(dep.notes, shifted_quantizers=0)
        for part, inp in inputs.items():
            path = export_qcdq(getattr(dep.deploy, part), inp, folder / f"qcdq.{part}.onnx")
            notes["shifted_quantizers"] += add_zero_point_shifts(path, part, dep.shifts)
            session, ops = ort_session(path)
            run = _runner(session, inp.numpy())
            got = run()[0]
            with torch.no_grad():
                exported = getattr(dep.reference, part)(inp).numpy()
                frozen = getattr(dep.frozen, part)(inp).numpy()
            variants[f"ort_qcdq.{part}"] = run
            graphs[f"ort_qcdq.{part}"] = {
                "ops": ops,
                "int_kernels": int_kernel_count(ops),
                "max_abs_error_vs_torch": float(np.abs(got - exported).max()),
                "max_abs_error_vs_frozen_model": float(np.abs(got - frozen).max()),
                "output_max_abs": float(np.abs(frozen).max()),
            }
            samples = [inp.numpy()] if calibration is None else calibration_inputs(dep.reference, part, calibration)
            for kernel in int8_kernels:
                key = "ort_int8" if kernel == int8_kernels[0] else f"ort_int8_{kernel}"
                graphs[f"{key}.{part}"], run = _int8_variant(path, part, samples, kernel, inp, exported, frozen)
                if run is not None:
                    variants[f"{key}.{part}"] = run
        notes["int8_calibration"] = "latency image" if calibration is None else f"{len(calibration)} images"
    medians = interleaved_medians(variants, repeats, warmup)
    ms = {k: 1000.0 * v for k, v in medians.items()}
    result: Dict[str, Any] = {
        "input": list(x.shape),
        "latent": list(y.shape),
        "repeats": repeats,
        "warmup": warmup,
        "median_ms": ms,
        "graphs": graphs,
        "export_notes": notes,
        "profile": dict(profile) if profile else None,
    }
    for part in inputs:
        deployed = ms.get(f"ort_qcdq.{part}", ms[f"torch_float.{part}"])
        result[f"{part}_ms"] = deployed
        result[f"{part}_ratio_vs_torch_float"] = deployed / ms[f"torch_float.{part}"]
        result[f"{part}_ratio_vs_ort_float"] = deployed / ms[f"ort_float.{part}"]
        if model is not None:
            result.update(_int8_keys(part, ms, graphs[f"ort_int8.{part}"], int8_kernels[0]))
    return result


def calibration_crops(root: str, count: int, size: int) -> List[torch.Tensor]:
    """``count`` random ``size`` px training crops, one image each, seeded: the integer-kernel
    variant's calibration images."""
    from dynaquant_brevitas.io.images import ImageFolderCrops

    torch.manual_seed(0)
    data = ImageFolderCrops(root, size)
    return [data[i % len(data)][None] for i in range(count)]


def _int8_variant(path: Path, part: str, samples: List[np.ndarray], kernel: str, inp: torch.Tensor,
                  exported: np.ndarray, frozen: np.ndarray) -> Tuple[Dict[str, Any], Optional[Callable[[], Any]]]:
    """Graph facts of the integer-kernel rewrite of the QCDQ graph ``path``, and its runner
    (``None`` when no convolution could be prepared)."""
    from dynaquant_brevitas.export.ort_int8 import quantize_conv_outputs

    report = quantize_conv_outputs(path, samples, path.with_name(f"int8_{kernel}.{part}.onnx"), kernel=kernel)
    facts: Dict[str, Any] = {"kernel": kernel, "prepared": len(report.quantized), "skipped": report.skipped,
                             "polyphase": report.polyphase, "shifts_folded": report.shifts_folded}
    if not report.quantized:
        return dict(facts, ops={}, int_kernels=0), None
    session, ops = int8_session(report.path)
    run = _runner(session, inp.numpy())
    got = run()[0]
    facts.update(ops=ops, int_kernels=int_kernel_count(ops),
                 max_abs_error_vs_torch=float(np.abs(got - exported).max()),
                 max_abs_error_vs_frozen_model=float(np.abs(got - frozen).max()),
                 output_max_abs=float(np.abs(frozen).max()))
    return facts, run


def _int8_keys(part: str, ms: Mapping[str, float], facts: Mapping[str, Any], kernel: str) -> Dict[str, Any]:
    """``{part}_int8_*`` summary keys (milliseconds and speed-up ``None`` when nothing fused)."""
    int8_ms = ms.get(f"ort_int8.{part}")
    return {
        f"{part}_int8_kernel": kernel,
        f"{part}_int8_kernels": facts["int_kernels"],
        f"{part}_int8_ms": int8_ms,
        f"{part}_int8_speedup_vs_torch_float": ms[f"torch_float.{part}"] / int8_ms if int8_ms else None,
        f"{part}_int8_speedup_vs_ort_float": ms[f"ort_float.{part}"] / int8_ms if int8_ms else None,
        f"{part}_int8_max_abs_error_vs_frozen_model": facts.get("max_abs_error_vs_frozen_model"),
    }


def _no_grad(module: nn.Module, x: torch.Tensor) -> Callable[[], Any]:
    def run() -> Any:
        with torch.no_grad():
            return module(x)

    return run


def measure_train_step(float_state: Any, float_cfg: Any, state: Any, cfg: Any, x: torch.Tensor,
                       repeats: int, warmup: int) -> Dict[str, Any]:
    """``train.train_step`` of the method against float on the same batch, interleaved medians."""
    from dynaquant_brevitas.quant.fake_quant import compiled_kernels_enabled
    from dynaquant_brevitas.training import train_step

    medians = interleaved_medians(
        {"float": lambda: train_step(float_state, x, float_cfg), "method": lambda: train_step(state, x, cfg)},
        repeats, warmup,
    )
    return {
        "batch": list(x.shape),
        "repeats": repeats,
        "warmup": warmup,
        "median_step_ms": {k: 1000.0 * v for k, v in medians.items()},
        "ratio_vs_float": medians["method"] / medians["float"],
        "compiled_kernels": bool(compiled_kernels_enabled()),
    }


def read_size(path: Path) -> Tuple[int, int]:
    """``(width, height)`` of an image file."""
    from PIL import Image

    with Image.open(path) as img:
        return img.size


# --------------------------------------------------------------------------- oracle bound


def _padded_64(x: torch.Tensor) -> torch.Tensor:
    """``x`` padded (replicating its border) to sides that are multiples of 64."""
    h, w = x.shape[-2:]
    pad_h, pad_w = (-h) % 64, (-w) % 64
    return torch.nn.functional.pad(x, (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else x


@torch.no_grad()
def _selector_rd(model: nn.Module, images: List[torch.Tensor], lmbda: float) -> float:
    """Mean RD cost ``bpp + lambda 255^2 MSE`` (estimated rate) with the selector choosing per image."""
    total = 0.0
    for x in images:
        out = model(x)
        bpp = float(sum(torch.log2(lik).sum() for lik in out["likelihoods"].values())) / -(x.shape[2] * x.shape[3])
        total += bpp + lmbda * 255**2 * float(torch.mean((out["x_hat"].clamp(0, 1) - x) ** 2))
    return total / len(images)


def oracle_figures(model: nn.Module, point: Mapping[str, Any], images: List[Path], lmbda: float, cost: str,
                   max_profiles: int = 8) -> Dict[str, Any]:
    """The per-image oracle against the best single profile
    (:func:`dynaquant_brevitas.evaluation.oracle.oracle_bound`) for a dynamic model, at the average
    cost (``"bitops"`` or ``"size"``) of its own per-image choices on ``images``.

    The profiles: the ``max_profiles`` most frequent per-image choices of the evaluation
    (``point``'s records) and every candidate pair applied to all dynamic layers.
    """
    from collections import Counter

    from dynaquant_brevitas.evaluation.oracle import oracle_bound
    from dynaquant_brevitas.io.images import read_image
    from dynaquant_brevitas.transform.cost import average_bits, layer_macs

    layers = point["evaluation"]["summary"]["layers"]
    records = point["evaluation"]["per_image"]
    chosen = [tuple(zip(r["layer_bits"], r.get("layer_activation_bits", r["layer_bits"]))) for r in records]
    frequent = [p for p, _ in Counter(chosen).most_common(max_profiles)]
    uniform = [tuple([tuple(pair)] * len(layers)) for pair in model.dynaquant.config.pairs]
    profiles = list(dict.fromkeys(frequent + uniform))
    key = "bits_per_param" if cost == "size" else "bits_bitops"
    macs = layer_macs(model, (1, 3, 64, 64))
    per_image_cost = [average_bits(model, macs, dict(zip(layers, p)))[key] for p in chosen]
    budget = sum(per_image_cost) / len(per_image_cost)
    tensors = [_padded_64(read_image(p)) for p in images]
    mappings = [{name: list(pair) for name, pair in zip(layers, p)} for p in profiles]
    bound = oracle_bound(model, tensors, mappings, lmbda, budget, key)
    return {
        "cost": key,
        "budget": budget,
        "images": [p.name for p in images],
        "profiles": len(profiles),
        "profiles_from_choices": len(frequent),
        "distinct_choices": len(set(chosen)),
        "oracle_gain_pct": bound["oracle_gain_pct"],
        "single_rd": bound["single"]["rd"],
        "oracle_rd": bound["oracle"]["rd"],
        "selector_rd": _selector_rd(model.eval(), tensors, lmbda),
        "single_cost": bound["single_cost"],
        "oracle_cost": bound["oracle_cost"],
        "images_off_single": bound["images_off_single"],
        "bound": {k: v for k, v in bound.items() if k != "per_image_rd"},
    }
