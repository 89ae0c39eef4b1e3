"""QCDQ export of frozen DynaQuant models for onnxruntime.

Brevitas's ``export_onnx_qcdq`` writes every quantized tensor as ``QuantizeLinear -> Clip ->
DequantizeLinear`` in 8-bit containers, a graph any ONNX runtime runs. DynaQuant's quantizers
need three adjustments, made here:

* bit widths above 8 do not fit the containers: :func:`deployable` exports such layers at 8 bits
  and lists them in ``notes["bits_capped_to_8"]``;
* learned float offsets give fractional (and possibly negative) zero points: they become an
  integer zero point plus a per-channel shift, which :func:`add_zero_point_shifts` puts back
  into the graph, so it computes the frozen model's quantizers exactly;
* :func:`qcdq_export_patches` lets Brevitas export negative zero points and rounds them instead
  of truncating.

:mod:`dynaquant_brevitas.export.ort_int8` then rewrites such a graph so that onnxruntime runs
integer convolutions; :func:`export_onnxruntime` does all of it, verified (``dynaquant export
--format qcdq``).

Example:
    A tiny per-tensor model's ``g_a``, exported, shifted and checked against PyTorch:

    >>> import tempfile
    >>> from pathlib import Path
    >>> import torch
    >>> from compressai.models import ScaleHyperprior
    >>> from dynaquant_brevitas import DynaQuantConfig, calibrate, dynaquantize, freeze
    >>> _ = torch.manual_seed(0)
    >>> config = DynaQuantConfig(candidate_bits=(8,), activation_per_channel=False, learn_offset=True)
    >>> model = dynaquantize(ScaleHyperprior(8, 12), config)
    >>> calibrate(model, [torch.rand(2, 3, 64, 64)])
    >>> dep = deployable(freeze(model, "max"), None)
    >>> x = torch.rand(1, 3, 64, 64)
    >>> path = export_qcdq(dep.deploy.g_a, x, Path(tempfile.mkdtemp()) / "g_a.qcdq.onnx")
    >>> add_zero_point_shifts(path, "g_a", dep.shifts)
    4
    >>> session, ops = ort_session(path)
    >>> ops["QuantizeLinear"], ops["Conv"]  # 4 quantized inputs; 4 convolutions + GDN's three
    (4, 7)
    >>> got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    >>> expected = dep.reference.g_a(x).detach().numpy()
    >>> bool(abs(got - expected).max() < 0.05 * abs(expected).max())
    True
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from ..quant import int_range
from ..transform import dynaquant_layers, freeze
from .ort import int8_session, int_kernel_count, ort_session
from .ort_int8 import quantize_conv_outputs
from .packing import quantized_weight_layers
from .qonnx import VerificationError

__all__ = [
    "Deployable", "add_zero_point_shifts", "calibration_inputs", "deployable", "export_onnxruntime",
    "export_qcdq", "qcdq_export_patches"
]

PathLike = Union[str, Path]


@contextlib.contextmanager
def qcdq_export_patches() -> Iterator[None]:
    """Two adjustments of Brevitas's QCDQ export (0.13) for DynaQuant's quantizers, undone on exit.

    * ``assert_ge_zero``: a tracing workaround that asserts zero points ``>= 0``; a signed grid
      with a learned offset has negative integer zero points, which ONNX allows.
    * zero points are cast to the 8-bit container by truncation; here they are rounded to the
      nearest integer and clamped to the container first (the model's offsets are snapped the
      same way before export, see :func:`deployable`).

    :func:`export_qcdq` applies them; see the module example.

    Example:
        >>> from brevitas.export.common.handler import qcdq
        >>> stock = qcdq.DQMixin.assert_ge_zero
        >>> with qcdq_export_patches():
        ...     qcdq.DQMixin.assert_ge_zero is stock
        False
        >>> qcdq.DQMixin.assert_ge_zero is stock
        True
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
def deployable(model: nn.Module, profile: Optional[Mapping[str, int]],
               parts: Tuple[str, ...] = ("g_a", "g_s")) -> Deployable:
    """Freeze ``model`` for QCDQ export (see :class:`Deployable`).

    DynaQuant models are frozen with ``profile`` (a dynamic model's per-layer most frequent
    choice; a static model's own widths otherwise). Layers above 8 bits run at 8 for export:
    QCDQ's containers are 8 bits wide and Brevitas refuses wider activations. Float zero points
    (learned offsets) become an integer zero point plus a per-channel shift. Brevitas's stock
    models and float ones are exported as they are.

    Example:
        A dynamic model (candidates 8 and 10) frozen at its largest widths:

        >>> from compressai.models import ScaleHyperprior
        >>> from dynaquant_brevitas import DynaQuantConfig, calibrate, dynaquantize
        >>> _ = torch.manual_seed(0)
        >>> config = DynaQuantConfig(candidate_bits=(8, 10), activation_per_channel=False)
        >>> model = dynaquantize(ScaleHyperprior(8, 12), config)
        >>> calibrate(model, [torch.rand(2, 3, 64, 64)])
        >>> dep = deployable(model, None)
        >>> dep.notes["bits_capped_to_8"]
        {'g_a.2': 10, 'g_a.4': 10, 'g_a.6': 10, 'g_s.2': 10, 'g_s.4': 10, 'g_s.6': 10}
        >>> dep.frozen.dynaquant_profile["g_a.2"], dep.notes["exported_bits"]["g_a.2"]
        (10, 8)
    """
    notes: Dict[str, Any] = {
        "containers": "QuantizeLinear/DequantizeLinear in int8 (signed) or uint8 containers; widths below 8 "
        "add a Clip to the b-bit range; widths above 8 are exported at 8 (bits_capped_to_8)",
        "exported_bits": {},
        "bits_capped_to_8": {},
        "zero_points_fractional": 0,
        "zero_points_outside_int8": 0,
    }
    if not list(dynaquant_layers(model)):
        notes["exported_bits"] = _exported_bits(model, parts)
        return Deployable(model, model, model, {}, notes)
    frozen = (freeze(model, profile or "max") if hasattr(model, "dynaquant") else model).eval()
    reference = copy.deepcopy(frozen)
    for name, layer in dynaquant_layers(reference):
        weight, activation = layer.widths
        if name.split(".")[0] in parts and max(weight, activation or 0) > 8:
            notes["bits_capped_to_8"][name] = layer.bit_width if activation in (None, weight) else [weight, activation]
            layer.set_bit_width(min(weight, 8), min(activation, 8) if activation is not None else None)
    notes["exported_bits"] = _exported_bits(reference, parts)
    deploy = copy.deepcopy(reference)
    shifts: Dict[str, np.ndarray] = {}
    for name, layer in dynaquant_layers(deploy):
        if name.split(".")[0] not in parts:  # only what is exported
            continue
        for quant in layer.tensor_quants():
            if quant.offset.numel() == 0 or not bool(torch.any(quant.offset != 0)):
                continue
            qp = quant.qparams()
            scale, zero = qp.scale.reshape(-1), qp.zero_point.reshape(-1)
            lo, hi = int_range(8, quant.signed, narrow_range=False)
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
    return {name: int(layer.quant_weight().bit_width) for name, layer in quantized_weight_layers(model)
            if name.split(".")[0] in parts}


def add_zero_point_shifts(path: Path, part: str, shifts: Mapping[str, np.ndarray]) -> int:
    """Insert ``Add(c)`` before and ``Add(-c)`` after each shifted activation quantizer of ``part``
    in an exported QCDQ graph (nodes found by Brevitas's names); returns how many were shifted.

    See the module example.
    """
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
    """Export ``module`` (e.g. ``Deployable.deploy.g_a``) with Brevitas's ``export_onnx_qcdq``
    (opset 13, TorchScript exporter, :func:`qcdq_export_patches` applied) at ``example``'s shape.

    See the module example.
    """
    from brevitas.export import export_onnx_qcdq

    with qcdq_export_patches(), torch.no_grad():
        export_onnx_qcdq(module.eval(), example, str(path), dynamo=False, opset_version=13)
    return path


def calibration_inputs(reference: nn.Module, part: str, images: Sequence[torch.Tensor]) -> List[np.ndarray]:
    """Calibration batches for ``part`` of ``reference`` (e.g. ``Deployable.reference``): the
    images themselves for ``g_a``, their rounded latents ``round(g_a(image))`` for ``g_s``.

    Example:
        >>> from compressai.models import ScaleHyperprior
        >>> [b.shape for b in calibration_inputs(ScaleHyperprior(8, 12), "g_s", [torch.rand(1, 3, 64, 64)])]
        [(1, 12, 4, 4)]
    """
    if part == "g_a":
        return [c.numpy() for c in images]
    with torch.no_grad():
        return [torch.round(reference.g_a(c)).numpy() for c in images]


# --------------------------------------------------------------------------- the whole flow

#: Notes for reasons a convolution stayed float (``Int8Report.skipped``), keyed by a part of the reason.
_SKIP_NOTES = {
    "per channel": "per-channel activation steps cannot fuse into QLinearConv: train with "
                   "activation_per_channel=False",
    "input is not quantized": "convolutions on unquantized inputs (GDN/IGDN's own 1x1 convolution) stay float",
}

_KERNEL_NOTES = {
    "s8s8": "s8s8 keeps the exported integers exactly, but onnxruntime's s8s8 kernel is slower than float "
            "convolutions on x86 CPUs without VNNI (AVX2)",
    "u8s8": "u8s8 re-quantizes the weights to 7 bits for the fast u8s8 kernel on AVX2: fast, not exact",
}


@torch.no_grad()
def export_onnxruntime(model: nn.Module, folder: PathLike, image: torch.Tensor, parts: Sequence[str] = ("g_a", "g_s"),
                       kernel: Optional[str] = None, calibration: Sequence[torch.Tensor] = (),
                       tolerance: float = 0.1) -> Dict[str, Any]:
    """Export ``parts`` of a frozen model to QCDQ graphs, verified in onnxruntime; returns a report.

    Writes ``<part>.qcdq.onnx`` (and, with ``kernel``, ``<part>.int8_<kernel>.onnx``, see
    :func:`~dynaquant_brevitas.export.ort_int8.quantize_conv_outputs`) into ``folder``, runs each
    graph on ``image`` (``g_s`` on its rounded latent) and compares it with ``Deployable.reference``.

    Args:
        model: a frozen DynaQuant model (:func:`~dynaquant_brevitas.transform.freeze`).
        folder: output directory (created).
        image: ``(1, 3, H, W)`` input the graphs are exported and verified at (H, W multiples of 16).
        parts: transforms to export, ``g_a`` and/or ``g_s``.
        kernel: ``None``, ``"s8s8"`` or ``"u8s8"``: also write the integer-kernel graph.
        calibration: ``(1, 3, h, w)`` images whose output ranges calibrate ``kernel``'s graph.
        tolerance: allowed max abs error against PyTorch, as a fraction of the largest output magnitude.

    Raises:
        ValueError: ``kernel`` without ``calibration``, or a part other than ``g_a``/``g_s``.
        VerificationError: a graph's error exceeds ``tolerance`` (the files stay for inspection).

    Example:
        The module example's steps in one call, with the s8s8 integer-kernel graph too:

        >>> import tempfile
        >>> from compressai.models import ScaleHyperprior
        >>> from dynaquant_brevitas import DynaQuantConfig, calibrate, dynaquantize, freeze
        >>> _ = torch.manual_seed(0)
        >>> config = DynaQuantConfig(candidate_bits=(8,), activation_per_channel=False)
        >>> model = dynaquantize(ScaleHyperprior(8, 12), config)
        >>> calibrate(model, [torch.rand(2, 3, 64, 64)])
        >>> report = export_onnxruntime(freeze(model, "max"), tempfile.mkdtemp(), torch.rand(1, 3, 64, 64),
        ...                             parts=("g_a",), kernel="s8s8", calibration=[torch.rand(1, 3, 64, 64)])
        >>> report["g_a"]["qcdq"]["relative_error"] < 0.1
        True
        >>> report["g_a"]["int8_s8s8"]["int_kernels"]  # g_a's four convolutions as QLinearConv
        4
    """

    if kernel and not calibration:
        raise ValueError(f"kernel {kernel!r} needs calibration images")
    if not set(parts) <= {"g_a", "g_s"}:
        raise ValueError(f"parts must be g_a and/or g_s, not {list(parts)}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    dep = deployable(model, None, tuple(parts))
    inputs = {"g_a": image, "g_s": torch.round(dep.reference.g_a(image))}
    report: Dict[str, Any] = {"export_notes": dep.notes, "tolerance": tolerance, "notes": _cap_notes(dep.notes)}
    for part in parts:
        inp, reference, frozen = inputs[part], getattr(dep.reference, part), getattr(dep.frozen, part)
        expected, as_frozen = reference(inp).numpy(), frozen(inp).numpy()
        path = export_qcdq(getattr(dep.deploy, part), inp, folder / f"{part}.qcdq.onnx")
        shifted = add_zero_point_shifts(path, part, dep.shifts)
        report[part] = {"qcdq": dict(file=str(path), shifted_quantizers=shifted,
                                     **_verify(ort_session(path), inp, expected, as_frozen))}
        if kernel:
            int8 = quantize_conv_outputs(path, calibration_inputs(dep.reference, part, calibration),
                                         folder / f"{part}.int8_{kernel}.onnx", kernel=kernel)
            report[part][f"int8_{kernel}"] = dict(
                file=str(int8.path), kernel=kernel, prepared=len(int8.quantized), skipped=int8.skipped,
                polyphase=int8.polyphase, shifts_folded=int8.shifts_folded,
                **_verify(int8_session(int8.path), inp, expected, as_frozen))
            report["notes"] += [n for key, n in _SKIP_NOTES.items() if any(key in r for r in int8.skipped.values())]
    if kernel:
        report["notes"] = list(dict.fromkeys(report["notes"] + [_KERNEL_NOTES[kernel]]))
    _check(report, parts, tolerance)
    return report


def _cap_notes(notes: Mapping[str, Any]) -> List[str]:
    capped = notes["bits_capped_to_8"]
    if not capped:
        return []
    return [f"bit widths above 8 cannot be exported in 8-bit QCDQ containers: {capped} exported at 8 bits; "
            "max_abs_error_vs_frozen_model compares with the model as frozen"]


def _verify(session_ops: Tuple[Any, Dict[str, int]], inp: torch.Tensor, expected: np.ndarray,
            frozen: np.ndarray) -> Dict[str, Any]:
    """The graph's operators after optimisation and its errors against PyTorch on ``inp``."""
    session, ops = session_ops
    got = session.run(None, {session.get_inputs()[0].name: inp.numpy()})[0]
    error, peak = float(np.abs(got - expected).max()), float(np.abs(expected).max())
    return {"ops": ops, "int_kernels": int_kernel_count(ops), "max_abs_error": error,
            "relative_error": error / max(peak, 1e-6), "output_max_abs": peak,
            "max_abs_error_vs_frozen_model": float(np.abs(got - frozen).max())}


def _check(report: Mapping[str, Any], parts: Sequence[str], tolerance: float) -> None:
    over = [f"{part}/{graph}: max abs error {facts['max_abs_error']:.4g} = {facts['relative_error']:.3g} of the "
            f"largest output {facts['output_max_abs']:.4g}" for part in parts for graph, facts in report[part].items()
            if facts["relative_error"] > tolerance]
    if over:
        raise VerificationError(f"onnxruntime differs from PyTorch beyond the tolerance {tolerance}: "
                                + "; ".join(over))
