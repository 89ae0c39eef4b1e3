"""Measurements behind ``benchmarks/run.py``: bits, packed sizes, latencies, training-step times.

* bits: :func:`dynaquant_brevitas.cost.average_bits` on :func:`~dynaquant_brevitas.cost.layer_macs`
  (the same formulas for Brevitas's stock layers, whose bit width ``cost`` does not know);
* sizes: :func:`dynaquant_brevitas.packing.pack_model` writes the packed file and its length is the
  size; :func:`dynaquant_brevitas.cost.model_size_bytes` is the estimate it is compared with;
* latency: ``g_a`` and ``g_s`` in float PyTorch, the same float modules exported to ONNX, the
  frozen quantized model exported with Brevitas's ``export_onnx_qcdq``, and that QCDQ graph with
  its convolutions' outputs quantized so that onnxruntime runs integer kernels
  (:func:`dynaquant_brevitas.export.ort_int8.quantize_conv_outputs`), all run by onnxruntime
  (CPU, ``ORT_ENABLE_ALL``, one intra-op thread); every variant interleaved in one loop, medians;
* training step: ``dynaquant_brevitas.train.train_step`` (forward, loss, backward, optimiser
  steps) of the method against float, interleaved, medians.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import math
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch
from torch import nn

#: onnxruntime operators that run integer arithmetic (what QDQ fusion produces when it can).
INT_KERNELS = {
    "QLinearConv", "QLinearConvTranspose", "ConvInteger", "MatMulInteger", "QLinearMatMul",
    "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QGemm", "QLinearAdd", "QLinearMul",
}


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


def _dynaquant_layers(model: nn.Module):
    from dynaquant_brevitas.transform import dynaquant_layers

    return list(dynaquant_layers(model))


def layer_bit_widths(model: nn.Module, profile: Optional[Mapping[str, float]] = None) -> Dict[str, float]:
    """Bit width of every compute layer: ``cost.layer_bits`` for DynaQuant and float models; for
    Brevitas's stock layers the weight quantizer's bit width (32 where quantization is off)."""
    from dynaquant_brevitas.cost import _COMPUTE_LAYERS, layer_bits

    if _dynaquant_layers(model) or not any(hasattr(m, "weight_quant") for m in model.modules()):
        return layer_bits(model, profile)
    bits = {}
    for name, module in model.named_modules():
        if isinstance(module, _COMPUTE_LAYERS):
            proxy = getattr(module, "weight_quant", None)
            enabled = proxy is not None and getattr(proxy, "is_quant_enabled", False)
            bits[name] = float(module.quant_weight().bit_width) if enabled else 32.0
    return bits


def bit_figures(model: nn.Module, macs: Mapping[str, int], profile: Optional[Mapping[str, float]]) -> Dict[str, float]:
    """``bits_per_param``, ``bits_bitops``, ``bitops_ratio`` (``cost.average_bits``'s definitions)."""
    from dynaquant_brevitas.cost import average_bits

    if _dynaquant_layers(model) or not any(hasattr(m, "weight_quant") for m in model.modules()):
        return average_bits(model, macs, profile)
    bits = layer_bit_widths(model)  # the same formulas, with Brevitas's bit widths
    modules = dict(model.named_modules())
    params = {name: modules[name].weight.numel() for name in bits}
    total_macs = sum(macs.get(name, 0) for name in bits)
    bitops = sum(macs.get(name, 0) * b * b for name, b in bits.items())
    return {
        "bits_per_param": sum(params[n] * b for n, b in bits.items()) / max(1, sum(params.values())),
        "bits_bitops": math.sqrt(bitops / total_macs),
        "bitops_ratio": bitops / (total_macs * 32 * 32),
    }


def profiles_from_eval(evaluation: Mapping[str, Any]) -> Tuple[Optional[Dict[str, float]], Optional[Dict[str, int]]]:
    """``(mean bits per layer, most frequent bits per layer)`` over the evaluated images (dynamic
    models; ``(None, None)`` for static ones)."""
    layers = evaluation.get("summary", {}).get("layers")
    rows = [r["layer_bits"] for r in evaluation.get("per_image", []) if "layer_bits" in r]
    if not layers or not rows:
        return None, None
    matrix = np.asarray(rows, dtype=float)
    mean = dict(zip(layers, matrix.mean(axis=0).tolist()))
    mode = {name: int(collections.Counter(int(b) for b in matrix[:, i]).most_common(1)[0][0])
            for i, name in enumerate(layers)}
    return mean, mode


def size_figures(model: nn.Module, evaluation: Mapping[str, Any], folder: Path) -> Dict[str, Any]:
    """Packed sizes (files written under ``folder``) and the ``cost`` estimate."""
    from dynaquant_brevitas.cost import model_size_bytes
    from dynaquant_brevitas.packing import pack_model
    from dynaquant_brevitas.transform import freeze

    folder.mkdir(parents=True, exist_ok=True)
    mean, mode = profiles_from_eval(evaluation)
    out: Dict[str, Any] = {"packed_size_all_candidates_bytes": None, "packed_profile": mode}
    if mode is not None:  # dynamic: one file frozen at each layer's most frequent choice, one with every candidate
        frozen = freeze(model, mode)
        packed = pack_model(frozen, folder / "mode.dqpk")
        state = model.dynaquant
        dynamic = {name: state.config.candidate_bits for side in state.layer_names.values() for name in side}
        out["packed_size_all_candidates_bytes"] = pack_model(model, folder / "all-candidates.dqpk", dynamic).size_bytes
        out["model_size_estimate_bytes"] = model_size_bytes(model, mean)
    else:
        packed = pack_model(model, folder / "model.dqpk")
        if _dynaquant_layers(model) or not any(hasattr(m, "weight_quant") for m in model.modules()):
            out["model_size_estimate_bytes"] = model_size_bytes(model)
        else:  # Brevitas stock layers: the same estimate, with their bit widths
            bits = layer_bit_widths(model)
            modules = dict(model.named_modules())
            quantized = {id(modules[n].weight): b for n, b in bits.items() if b < 32}
            packed_bits = sum(p.numel() * quantized[id(p)] for p in model.parameters() if id(p) in quantized)
            floats = sum(p.numel() for p in model.parameters() if id(p) not in quantized)
            out["model_size_estimate_bytes"] = int(math.ceil(packed_bits / 8)) + 4 * floats
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


# --------------------------------------------------------------------------- QCDQ export


@contextlib.contextmanager
def qcdq_export_patches():
    """Two adjustments of Brevitas's QCDQ export (0.13) for DynaQuant's quantizers, undone on exit.

    * ``assert_ge_zero``: a tracing workaround that asserts zero points ``>= 0``; a signed grid
      with a learned offset has negative integer zero points, which ONNX allows.
    * zero points are cast to the 8-bit container by truncation; here they are rounded to the
      nearest integer and clamped to the container first (the model's offsets are snapped the
      same way before export, see :func:`deployable`).
    """
    from brevitas.export.common.handler import qcdq
    from brevitas.export.common.handler.base import ZeroPointHandlerMixin

    original_assert = qcdq.DQMixin.assert_ge_zero
    original_cast = ZeroPointHandlerMixin.__dict__["zero_point_with_dtype"]

    def rounded(cls, signed, bit_width, zero_point):
        lo, hi = (-128, 127) if signed else (0, 255)
        return original_cast.__func__(cls, signed, bit_width, torch.round(zero_point).clamp(lo, hi))

    qcdq.DQMixin.assert_ge_zero = lambda self, *args: None
    ZeroPointHandlerMixin.zero_point_with_dtype = classmethod(rounded)
    try:
        yield
    finally:
        qcdq.DQMixin.assert_ge_zero = original_assert
        ZeroPointHandlerMixin.zero_point_with_dtype = original_cast


@dataclass
class Deployable:
    """What is exported, and what it is compared with.

    Attributes:
        frozen: the frozen quantized model (bit widths fixed per layer).
        reference: ``frozen`` with layers above 8 bits at 8: what the exported graph computes.
        deploy: ``reference`` with integer zero points inside the 8-bit container: what
            Brevitas's exporter sees.
        shifts: activation layer name -> ``c = s * (z - Z)`` per channel (``z`` the layer's float
            zero point, ``Z`` the exported integer one); :func:`add_zero_point_shifts` adds ``c``
            before each QuantizeLinear and subtracts it after the DequantizeLinear, which makes
            the graph compute ``s * (clamp(round(x / s + z)) - z)`` exactly.
        notes: bit widths capped to 8, zero points that needed a shift.
    """

    frozen: nn.Module
    reference: nn.Module
    deploy: nn.Module
    shifts: Dict[str, np.ndarray] = field(default_factory=dict)
    notes: Dict[str, Any] = field(default_factory=dict)


@torch.no_grad()
def deployable(model: nn.Module, profile: Optional[Mapping[str, int]], parts: Tuple[str, ...] = ("g_a", "g_s")) -> Deployable:
    """Freeze ``model`` for QCDQ export (see :class:`Deployable`).

    DynaQuant models are frozen with ``profile`` (a dynamic model's per-layer most frequent
    choice; a static model's own widths otherwise). Layers above 8 bits run at 8 for export:
    QCDQ's containers are 8 bits wide and Brevitas refuses wider activations. Float zero points
    (learned offsets) become an integer zero point plus a per-channel shift. Brevitas's stock
    models and float ones are exported as they are.
    """
    from dynaquant_brevitas.transform import dynaquant_layers, freeze

    notes: Dict[str, Any] = {
        "containers": "QuantizeLinear/DequantizeLinear in int8 (signed) or uint8 containers; widths below 8 "
        "add a Clip to the b-bit range; widths above 8 are exported at 8 (bits_capped_to_8)",
        "exported_bits": {},
        "bits_capped_to_8": {},
        "zero_points_fractional": 0,
        "zero_points_outside_int8": 0,
    }
    if not _dynaquant_layers(model):
        notes["exported_bits"] = _exported_bits(model, parts)
        return Deployable(model, model, model, {}, notes)
    frozen = (freeze(model, profile or "max") if hasattr(model, "dynaquant") else model).eval()
    reference = copy.deepcopy(frozen)
    for name, layer in dynaquant_layers(reference):
        if name.split(".")[0] in parts and layer.bit_width > 8:
            notes["bits_capped_to_8"][name] = layer.bit_width
            layer.set_bit_width(8)
    notes["exported_bits"] = _exported_bits(reference, parts)
    deploy = copy.deepcopy(reference)
    shifts: Dict[str, np.ndarray] = {}
    for name, layer in dynaquant_layers(deploy):
        if name.split(".")[0] not in parts:  # only what is exported
            continue
        for quant in layer.tensor_quants():
            if quant.offset.numel() == 0 or not bool(torch.any(quant.offset != 0)):
                continue
            _, qmax = quant.levels(int(quant.static_bit_width))
            scale = quant.range.clamp_min(1e-8) / qmax
            zero = -quant.offset / scale
            lo, hi = (-128, 127) if quant.signed else (0, 255)
            integer = torch.round(zero).clamp(lo, hi)
            notes["zero_points_fractional"] += int((torch.abs(zero - torch.round(zero)) > 1e-4).sum())
            notes["zero_points_outside_int8"] += int((torch.round(zero) != integer).sum())
            if not quant.is_weight:
                shape = [1] * quant.input_ndim
                shape[quant.channel_dim % quant.input_ndim] = -1
                shifts[name] = (scale * (zero - integer)).reshape(shape).cpu().numpy().astype(np.float32)
            quant.offset.data = -integer * scale
    return Deployable(frozen, reference, deploy, shifts, notes)


def _exported_bits(model: nn.Module, parts: Tuple[str, ...]) -> Dict[str, int]:
    from dynaquant_brevitas.packing import quantized_weight_layers

    return {name: int(layer.quant_weight().bit_width) for name, layer in quantized_weight_layers(model)
            if name.split(".")[0] in parts}


def add_zero_point_shifts(path: Path, part: str, shifts: Mapping[str, np.ndarray]) -> int:
    """Insert ``Add(c)`` before and ``Add(-c)`` after each shifted activation quantizer of ``part``
    in an exported QCDQ graph (nodes found by Brevitas's names); returns how many were shifted."""
    import onnx
    from onnx import helper, numpy_helper

    graph_model = onnx.load(str(path))
    graph = graph_model.graph
    nodes = {n.name: n for n in graph.node}
    done = 0
    for layer, shift in shifts.items():
        head, _, rest = layer.partition(".")
        if head != part:
            continue
        prefix = "/" + rest.replace(".", "/") + "/input_quant/export_handler/"
        quantize, dequantize = nodes.get(prefix + "QuantizeLinear"), nodes.get(prefix + "DequantizeLinear")
        if quantize is None or dequantize is None:
            raise RuntimeError(f"{path}: no QuantizeLinear/DequantizeLinear named {prefix}*")
        plus, minus = f"{prefix}shift", f"{prefix}unshift"
        graph.initializer.extend([numpy_helper.from_array(shift, plus), numpy_helper.from_array(-shift, minus)])
        shifted, restored = f"{prefix}shifted", f"{prefix}restored"
        for node in graph.node:  # consumers of the dequantized value read the restored one
            for i, name in enumerate(node.input):
                if name == dequantize.output[0]:
                    node.input[i] = restored
        for output in graph.output:
            if output.name == dequantize.output[0]:
                raise RuntimeError("a quantizer's output is the graph output")
        index = list(graph.node).index(quantize)
        graph.node.insert(index, helper.make_node("Add", [quantize.input[0], plus], [shifted], name=f"{prefix}Shift"))
        quantize.input[0] = shifted
        index = list(graph.node).index(dequantize)
        graph.node.insert(index + 1, helper.make_node("Add", [dequantize.output[0], minus], [restored],
                                                      name=f"{prefix}Unshift"))
        done += 1
    onnx.checker.check_model(graph_model)
    onnx.save(graph_model, str(path))
    return done


def export_qcdq(module: nn.Module, example: torch.Tensor, path: Path) -> Path:
    from brevitas.export import export_onnx_qcdq

    from dynaquant_brevitas.quant import proxies  # noqa: F401  registers DynaQuant's proxies

    with qcdq_export_patches(), torch.no_grad():
        export_onnx_qcdq(module.eval(), example, str(path), dynamo=False, opset_version=13)
    return path


def export_float(module: nn.Module, example: torch.Tensor, path: Path) -> Path:
    with torch.no_grad():
        torch.onnx.export(module.eval(), example, str(path), dynamo=False, opset_version=13)
    return path


def ort_session(path: Path) -> Tuple[Any, Dict[str, int]]:
    """An onnxruntime CPU session (all graph optimisations, one thread) and the operator counts
    of the graph it actually runs (the optimised model it writes beside ``path``)."""
    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    optimized = path.with_name(path.stem + ".optimized.onnx")
    options.optimized_model_filepath = str(optimized)
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    ops = collections.Counter(node.op_type for node in onnx.load(str(optimized)).graph.node)
    return session, dict(sorted(ops.items()))


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
                "int_kernels": sum(n for op, n in ops.items() if op in INT_KERNELS),
                "max_abs_error_vs_torch": float(np.abs(got - exported).max()),
                "max_abs_error_vs_frozen_model": float(np.abs(got - frozen).max()),
                "output_max_abs": float(np.abs(frozen).max()),
            }
            samples = _calibration_inputs(dep.reference, part, inp, calibration)
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
    from dynaquant_brevitas.data import ImageFolderCrops

    torch.manual_seed(0)
    data = ImageFolderCrops(root, size)
    return [data[i % len(data)][None] for i in range(count)]


def _calibration_inputs(reference: nn.Module, part: str, inp: torch.Tensor,
                        calibration: Optional[List[torch.Tensor]]) -> List[np.ndarray]:
    """Calibration batches for ``part``: the images for ``g_a``, their rounded latents for ``g_s``."""
    if calibration is None:
        return [inp.numpy()]
    if part == "g_a":
        return [c.numpy() for c in calibration]
    with torch.no_grad():
        return [torch.round(reference.g_a(c)).numpy() for c in calibration]


def _int8_variant(path: Path, part: str, samples: List[np.ndarray], kernel: str, inp: torch.Tensor,
                  exported: np.ndarray, frozen: np.ndarray) -> Tuple[Dict[str, Any], Optional[Callable[[], Any]]]:
    """Graph facts of the integer-kernel rewrite of the QCDQ graph ``path``, and its runner
    (``None`` when no convolution could be prepared)."""
    from dynaquant_brevitas.export.ort_int8 import int8_session, quantize_conv_outputs

    report = quantize_conv_outputs(path, samples, path.with_name(f"int8_{kernel}.{part}.onnx"), kernel=kernel)
    facts: Dict[str, Any] = {"kernel": kernel, "prepared": len(report.quantized), "skipped": report.skipped,
                             "polyphase": report.polyphase, "shifts_folded": report.shifts_folded}
    if not report.quantized:
        return dict(facts, ops={}, int_kernels=0), None
    session, ops = int8_session(report.path)
    run = _runner(session, inp.numpy())
    got = run()[0]
    facts.update(ops=ops, int_kernels=sum(n for op, n in ops.items() if op in INT_KERNELS),
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
    from dynaquant_brevitas.train import train_step

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
