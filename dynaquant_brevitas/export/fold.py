"""Fold float zero points out of a QONNX graph, exactly, so every quantizer has zero point 0.

DynaQuant's activation quantizers learn a per-channel offset ``o``, which Brevitas exports as a
float zero point ``z = -o / s`` on a ``Quant`` node::

    x_hat = s * (q - z)        q = clamp(round(x / s + z), qmin, qmax)

FINN needs zero point 0. Pick one integer shift ``Z`` for the whole tensor, either 0 (keep the
grid) or ``qmin`` (move it to ``[0, qmax - qmin]``, an unsigned grid of the same width, which is
where calibration after a ReLU puts it: ``z = -qmax``). With ``p = q - Z``::

    p = clamp(round((x + s * (z - Z)) / s), qmin - Z, qmax - Z)      x_hat = s * p + c,  c = -s * (z - Z)

so the graph becomes ``Add(s * (z - Z)) -> Quant(zero point 0, same bit width) -> layer``. The
per-channel constant ``c`` is not dropped: a convolution's zero padding (and a transposed
convolution's scattering) sees ``x_hat`` padded with 0, not with ``c``, so ``conv(x_hat)``
equals ``conv(s * p) + conv(c)`` only when ``conv(c)`` is computed with the same padding. That
map is computed once with the layer's own quantized weights (bias left out) and added after the
layer. It is absent when every channel's zero point equals ``Z``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np
import onnx
from onnx import helper
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.core.onnx_exec import execute_onnx
from qonnx.custom_op.general.quant import max_int, min_int
from qonnx.transformation.infer_shapes import InferShapes
from qonnx.util.basic import get_by_name

__all__ = ["FoldReport", "FoldedQuant", "fold_zero_points", "quant_grid"]

_LINEAR_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")


@dataclass
class FoldedQuant:
    """What happened to one activation ``Quant`` node."""

    node: str
    bits: int
    signed: bool
    shift: int
    channels_off_grid: int
    correction_after: List[str] = field(default_factory=list)


@dataclass
class FoldReport:
    """Every activation quantizer touched by :func:`fold_zero_points`."""

    folded: List[FoldedQuant] = field(default_factory=list)

    @property
    def correction_maps(self) -> int:
        """How many layers needed a constant correction map (fractional zero points)."""
        return sum(len(f.correction_after) for f in self.folded)


def quant_grid(lo: int, hi: int) -> Tuple[int, bool, bool]:
    """The ``Quant`` grid ``(bits, signed, narrow)`` that is exactly ``[lo, hi]``.

    Example:
        >>> quant_grid(0, 254), quant_grid(-127, 127), quant_grid(0, 15)
        ((8, False, True), (8, True, True), (4, False, False))
    """
    for bits in range(1, 33):
        for signed in (False, True):
            for narrow in (False, True):
                if (min_int(signed, narrow, bits), max_int(signed, narrow, bits)) == (lo, hi):
                    return bits, signed, narrow
    raise ValueError(f"no Quant grid is exactly [{lo}, {hi}]")


def fold_zero_points(
    model: ModelWrapper, snap: float = 0.0, border: str = "map"
) -> Tuple[ModelWrapper, FoldReport]:
    """Rewrite every activation ``Quant`` with a nonzero zero point (see the module docstring).

    Args:
        model: a QONNX model as exported by Brevitas (shapes are inferred here).
        snap: ``0`` keeps the rewrite exact. Otherwise zero points within ``snap`` of an
            integer are rounded to it, and channels whose offset from the common grid is below
            ``snap`` times the tensor's median step are put on it: ``1e-3`` removes float noise
            such as ``-127.00001`` and dead channels, which would otherwise each need a
            correction map, at a cost of at most ``snap`` (median) steps per element.
        border: ``"map"`` (exact) adds each correction as an output-sized constant. ``"bias"``
            adds only its per-channel median, a bias FINN absorbs into thresholds: exact inside
            a convolution's output, off at its borders (and between a transposed
            convolution's output phases); the export's verification measures by how much.

    Returns:
        The rewritten model and a :class:`FoldReport`.
    """
    model = model.transform(InferShapes())
    context = _constant_context(model)
    report = FoldReport()
    if border not in ("map", "bias"):
        raise ValueError(f"border must be 'map' or 'bias', got {border!r}")
    for node in [n for n in model.graph.node if n.op_type == "Quant"]:
        folded = _fold_one(model, node, context, snap, border)
        if folded is not None:
            report.folded.append(folded)
    _scalar_zero_points(model)
    model = model.transform(InferShapes())
    return model, report


def _scalar_zero_points(model: ModelWrapper) -> None:
    """Replace all-zero zero-point tensors (per-channel weights) by a scalar 0, as FINN expects."""
    for node in model.graph.node:
        if node.op_type != "Quant":
            continue
        zero_point = model.get_initializer(node.input[2])
        if zero_point is not None and zero_point.ndim > 0 and not np.any(zero_point):
            node.input[2] = _const(model, np.zeros((), np.float32))


def _constant_context(model: ModelWrapper) -> Dict[str, np.ndarray]:
    """Every tensor of one run on a zero input: gives the values of quantized weights."""
    feed = {}
    for inp in model.graph.input:
        shape = model.get_tensor_shape(inp.name)
        feed[inp.name] = np.zeros(shape, dtype=np.float32)
    return execute_onnx(model, feed, return_full_exec_context=True)


def _is_activation_quant(model: ModelWrapper, node: onnx.NodeProto) -> bool:
    if model.get_initializer(node.input[0]) is not None:
        return False
    producer = model.find_producer(node.input[0])
    return not (producer is not None and producer.op_type == "Quant")


def _fold_one(
    model: ModelWrapper, node: onnx.NodeProto, context: Dict[str, np.ndarray], snap: float, border: str
) -> Optional[FoldedQuant]:
    if not _is_activation_quant(model, node):
        return None
    scale, zero_point, bit_width = (model.get_initializer(n) for n in node.input[1:4])
    if scale is None or zero_point is None or bit_width is None or not np.any(zero_point != 0):
        return None
    signed = bool(get_by_name(node.attribute, "signed").i)
    narrow = bool(get_by_name(node.attribute, "narrow").i)
    qmin, qmax = int(min_int(signed, narrow, int(bit_width))), int(max_int(signed, narrow, int(bit_width)))
    scale, zero_point = np.broadcast_arrays(scale.astype(np.float32), zero_point.astype(np.float32))
    z = np.where(np.abs(zero_point - np.round(zero_point)) <= snap, np.round(zero_point), zero_point)
    shift = common_shift(z, qmin)
    # Offsets below snap x the typical step (float noise, dead channels with a tiny range) go.
    z = np.where(np.abs(scale * (z - shift)) <= snap * np.median(scale), shift, z)
    bits, new_signed, new_narrow = quant_grid(qmin - shift, qmax - shift)
    offset = (-scale * (z - shift)).astype(np.float32)

    name = node.name or node.output[0]
    consumers = model.find_consumers(node.output[0]) or []
    linear = all(c.op_type in _LINEAR_OPS and c.input[0] == node.output[0] for c in consumers)
    chain = [
        ("Add", [_const(model, -offset)], {}),
        ("Quant", [node.input[1], _const(model, np.zeros((), np.float32)),
                   _const(model, np.array(float(bits), np.float32))],
         dict(domain=node.domain, signed=int(new_signed), narrow=int(new_narrow),
              rounding_mode=get_by_name(node.attribute, "rounding_mode").s.decode())),
    ]
    if np.any(offset != 0) and not linear:
        # Not only linear layers read it: keep the offset as an explicit Add (exact, not zero-point-free).
        chain.append(("Add", [_const(model, offset)], {}))
    index = list(model.graph.node).index(node)
    model.graph.node.remove(node)
    source = node.input[0]
    for i, (op, extra, attrs) in enumerate(chain):
        target = node.output[0] if i == len(chain) - 1 else model.make_new_valueinfo_name()
        new = helper.make_node(op, [source] + extra, [target], name=f"{name}_fold{i}_{op}", **attrs)
        model.graph.node.insert(index + i, new)
        source = target
    corrected: List[str] = []
    if np.any(offset != 0) and linear:
        for consumer in consumers:
            _add_correction_map(model, consumer, offset, context, border)
            corrected.append(consumer.name)
    return FoldedQuant(
        node=name, bits=bits, signed=new_signed, shift=shift,
        channels_off_grid=int(np.count_nonzero(z != shift)), correction_after=corrected,
    )


def common_shift(zero_point: np.ndarray, qmin: int) -> int:
    """The integer shift, 0 or ``qmin``, that most channels' zero points equal exactly.

    Example:
        >>> common_shift(np.array([-127.0, -127.0, -3.2]), -127), common_shift(np.array([0.4]), -127)
        (-127, 0)
    """
    hits = {shift: int(np.count_nonzero(zero_point == shift)) for shift in (0, qmin)}
    if hits[0] == hits[qmin]:
        return qmin if np.median(zero_point) < qmin / 2 else 0
    return max(hits, key=hits.get)


def _const(model: ModelWrapper, value: np.ndarray) -> str:
    name = model.make_new_valueinfo_name()
    model.set_initializer(name, value)
    return name


def _add_correction_map(
    model: ModelWrapper, layer: onnx.NodeProto, offset: np.ndarray, context: Dict[str, np.ndarray], border: str
) -> None:
    """Insert ``Add(layer(offset map, bias=0))`` after ``layer`` (its channel medians for ``"bias"``)."""
    in_shape = model.get_tensor_shape(layer.input[0])
    offset_map = np.broadcast_to(offset, in_shape).astype(np.float32)
    inputs = {layer.input[0]: offset_map}
    for name in layer.input[1:2]:
        inputs[name] = context[name] if model.get_initializer(name) is None else model.get_initializer(name)
    correction = _run_single_node(layer, inputs, model)
    if border == "bias" and correction.ndim > 2:
        correction = np.median(correction, axis=tuple(range(2, correction.ndim)), keepdims=True)
    out = layer.output[0]
    pre = model.make_new_valueinfo_name()
    layer.output[0] = pre
    add = helper.make_node("Add", [pre, _const(model, correction)], [out], name=f"{layer.name}_offset_map")
    index = list(model.graph.node).index(layer)
    model.graph.node.insert(index + 1, add)


def _run_single_node(layer: onnx.NodeProto, inputs: Dict[str, np.ndarray], model: ModelWrapper) -> np.ndarray:
    """Run ``layer`` alone (data and weight inputs only, no bias) with onnxruntime."""
    import onnxruntime as ort

    attributes = {a.name: helper.get_attribute_value(a) for a in layer.attribute}
    node = helper.make_node(layer.op_type, list(inputs), ["y"], **attributes)
    out_shape = model.get_tensor_shape(layer.output[0])
    graph = helper.make_graph(
        [node], "correction",
        [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, list(v.shape)) for n, v in inputs.items()],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, out_shape)],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    proto.ir_version = 8
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = {n: np.ascontiguousarray(v, dtype=np.float32) for n, v in inputs.items()}
    return session.run(None, feed)[0]
