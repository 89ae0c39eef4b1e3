"""Make every linear layer's arithmetic integer, as FINN's matrix-vector units need.

DynaQuant's activation quantizers have one step ``s_c`` per input channel. A dot product
``sum_c w[k, c] * s_c * p_c`` has no common factor to take out, so FINN cannot run it on the
integers ``p_c`` with integer weights: it leaves the ``MatMul`` unmapped. The fix here moves the
per-channel step into the weights and quantizes them again, per output channel::

    w_eff[k, c] = w_hat[k, c] * s_c          w_int[k, c] = round(w_eff[k, c] / s'_k)

with ``s'_k = max_c |w_eff[k, c]| / qmax(weight_bits + extra_bits)``. The activation quantizer
becomes ``Quant(x / s_c)`` with scale 1, which FINN turns into thresholds. This step is the
only approximation in the export: its effect is measured by the FINN verification.

A step shared by all channels (``DynaQuantConfig(activation_per_channel=False)``) needs no
re-quantization: it multiplies the weights' per-output-channel scale, the integer weights and
their bit width stay as trained, and the export is exact.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np
import onnx
from onnx import helper
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.custom_op.general.quant import max_int, quant
from qonnx.transformation.infer_shapes import InferShapes
from qonnx.util.basic import get_by_name

__all__ = ["absorb_activation_scales"]

_LINEAR = {"Conv": 1, "ConvTranspose": 0, "Gemm": 1, "MatMul": 0}  # input-channel axis of the weight


def absorb_activation_scales(model: ModelWrapper, extra_bits: int = 2) -> Tuple[ModelWrapper, List[str]]:
    """Move per-channel activation steps into the weights (see the module docstring).

    Returns the rewritten model and the names of the rewritten layers.
    """
    model = model.transform(InferShapes())
    changed = []
    for node in list(model.graph.node):
        if node.op_type != "Quant" or model.get_initializer(node.input[0]) is not None:
            continue
        scale = model.get_initializer(node.input[1])
        if scale is None:
            continue
        consumers = model.find_consumers(node.output[0]) or []
        if not consumers or not all(_weight_quant(model, c) is not None for c in consumers):
            continue
        for consumer in consumers:
            _scale_weights(model, consumer, scale.reshape(-1), extra_bits)
            changed.append(consumer.name)
        _unit_scale(model, node, scale)
    return model.transform(InferShapes()), changed


def _weight_quant(model: ModelWrapper, layer: onnx.NodeProto) -> Optional[onnx.NodeProto]:
    if layer.op_type not in _LINEAR or len(layer.input) < 2:
        return None
    producer = model.find_producer(layer.input[1])
    if producer is None or producer.op_type != "Quant" or model.get_initializer(producer.input[0]) is None:
        return None
    return producer


def _scale_weights(model: ModelWrapper, layer: onnx.NodeProto, step: np.ndarray, extra_bits: int) -> None:
    wq = _weight_quant(model, layer)
    weight, scale, zero_point, bits = (model.get_initializer(n) for n in wq.input[:4])
    signed = bool(get_by_name(wq.attribute, "signed").i)
    narrow = bool(get_by_name(wq.attribute, "narrow").i)
    rounding = get_by_name(wq.attribute, "rounding_mode").s.decode()
    w_hat = quant(weight, scale, zero_point, bits, signed, narrow, rounding)
    if np.all(step == step.flat[0]) and not np.any(zero_point):  # one step: exact, same integers
        new_scale = (scale * step.flat[0]).astype(np.float32)
        model.set_initializer(wq.input[0], (np.round(w_hat / scale) * new_scale).astype(np.float32))
        wq.input[1] = _const(model, new_scale)
        return
    in_axis = _LINEAR[layer.op_type]
    view = [1] * w_hat.ndim
    view[in_axis] = -1
    w_eff = w_hat * step.reshape(view)
    out_axis = 1 - in_axis
    new_bits = int(bits) + extra_bits
    qmax = float(max_int(signed, narrow, new_bits))
    reduce_axes = tuple(i for i in range(w_eff.ndim) if i != out_axis)
    new_scale = np.abs(w_eff).max(axis=reduce_axes, keepdims=True) / qmax
    new_scale = np.where(new_scale > 0, new_scale, 1.0).astype(np.float32)
    model.set_initializer(wq.input[0], w_eff.astype(np.float32))
    wq.input[1] = _const(model, new_scale)
    wq.input[3] = _const(model, np.array(float(new_bits), np.float32))


def _unit_scale(model: ModelWrapper, node: onnx.NodeProto, scale: np.ndarray) -> None:
    """``Quant(x, s)`` becomes ``Quant(x * (1 / s), 1)``."""
    scaled = model.make_new_valueinfo_name()
    mul = helper.make_node("Mul", [node.input[0], _const(model, (1.0 / scale).astype(np.float32))], [scaled])
    model.graph.node.insert(list(model.graph.node).index(node), mul)
    node.input[0] = scaled
    node.input[1] = _const(model, np.ones((), np.float32))


def _const(model: ModelWrapper, value: np.ndarray) -> str:
    name = model.make_new_valueinfo_name()
    model.set_initializer(name, value)
    return name
