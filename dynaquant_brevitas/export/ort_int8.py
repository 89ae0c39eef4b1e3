"""Integer convolutions in onnxruntime for QCDQ graphs: quantize each convolution's output.

onnxruntime's QDQ transformer turns ``DequantizeLinear -> Conv -> QuantizeLinear`` into
``QLinearConv`` only when the whole group is quantized. Brevitas's QCDQ export of a CompressAI
transform quantizes inputs and weights, but every convolution's output feeds GDN/IGDN in float,
so onnxruntime runs float convolutions on fake-quantized tensors. :func:`quantize_conv_outputs`
rewrites such a graph so that onnxruntime 1.17+ (CPU) fuses every eligible convolution:

* each convolution's output gets an 8-bit per-tensor QuantizeLinear/DequantizeLinear pair, its
  range observed on calibration inputs (min/max over the batches, zero included);
* float biases become int32 with scale ``input scale * weight scale`` and zero point 0
  (onnxruntime fuses only when the bias, too, comes from a DequantizeLinear);
* ``ConvTranspose`` (no integer kernel in onnxruntime's CPU provider) with output size
  ``stride * input size`` becomes its polyphase equivalent, one ``Conv`` with ``stride**2``
  times the output channels followed by ``DepthToSpace``: the same products, exactly;
* a per-tensor zero-point shift (``Add(-c)`` after the input's DequantizeLinear, see
  :func:`dynaquant_brevitas.export.qcdq.add_zero_point_shifts`) is folded into the bias: exact except at
  the border, where the zero padding now stands for ``c`` (less than half a step) instead of 0;
* ``kernel`` picks onnxruntime's integer kernel, which matters on x86 CPUs without VNNI (AVX2):

  - ``"s8s8"`` (default) keeps Brevitas's int8 activations and the exported integers exactly;
    onnxruntime on x86 fuses int8 activations only with the session option
    ``session.qdqisint8allowed=1`` (:func:`int8_session` sets it). On AVX2 this kernel was
    measured about 3x slower than a float convolution;
  - ``"u8s8"`` turns int8 activations into uint8 (zero point + 128: the same values) and
    re-quantizes the weights to 7 bits ([-63, 63], per output channel): AVX2's fast u8s8 kernel
    adds products in pairs into saturating 16-bit sums, which 8-bit weights overflow (errors as
    large as the output were measured) and 7-bit weights cannot. Fast, not exact: the weights
    lose one bit;
* initializers listed as graph inputs (Brevitas's export does this) stop being inputs, so
  onnxruntime may fold constants.

What cannot fuse, and stays a float convolution (listed in :attr:`Int8Report.skipped`): inputs
quantized per channel (DynaQuant's default activation quantizers: ``QLinearConv`` takes one input
scale and zero point), unquantized inputs (GDN's own 1x1 convolution), weights with a nonzero zero
point, and transposed convolutions whose output size is not ``stride * input size``.

Example:
    Convolution -> GDN -> transposed convolution with per-tensor int8 inputs, exported to QCDQ
    (:func:`dynaquant_brevitas.export.qcdq.export_onnxruntime` does this for whole transforms):

    >>> import tempfile
    >>> from pathlib import Path
    >>> import torch
    >>> from brevitas.graph.calibrate import calibration_mode
    >>> from brevitas.nn import QuantConv2d, QuantConvTranspose2d
    >>> from brevitas.quant import Int8ActPerTensorFloat
    >>> from compressai.layers import GDN
    >>> from dynaquant_brevitas.export.ort import int8_session
    >>> from dynaquant_brevitas.export.qcdq import export_qcdq
    >>> _ = torch.manual_seed(0)
    >>> quant = dict(input_quant=Int8ActPerTensorFloat, return_quant_tensor=False)
    >>> model = torch.nn.Sequential(QuantConv2d(3, 8, 5, stride=2, padding=2, **quant), GDN(8),
    ...                             QuantConvTranspose2d(8, 3, 5, stride=2, padding=2, output_padding=1, **quant))
    >>> images = [torch.rand(2, 3, 64, 64) for _ in range(2)]
    >>> with torch.no_grad(), calibration_mode(model):
    ...     _ = [model(x) for x in images]
    >>> folder = Path(tempfile.mkdtemp())
    >>> path = export_qcdq(model.eval(), images[0][:1], folder / "qcdq.onnx")
    >>> report = quantize_conv_outputs(path, [x.numpy() for x in images], folder / "int8.onnx")
    >>> len(report.quantized), report.polyphase, sorted(set(report.skipped.values()))
    (2, ['/2/ConvTranspose'], ['input is not quantized'])
    >>> session, ops = int8_session(report.path)
    >>> ops["QLinearConv"], ops["Conv"]  # only GDN's own 1x1 convolution stays float
    (2, 1)
    >>> got = session.run(None, {session.get_inputs()[0].name: images[0][:1].numpy()})[0]
    >>> expected = model(images[0][:1]).detach().numpy()
    >>> bool(abs(got - expected).max() < 0.02 * max(1.0, abs(expected).max()))
    True
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = ["KERNELS", "Int8Report", "quantize_conv_outputs"]

#: ``kernel`` choices of :func:`quantize_conv_outputs`.
KERNELS = ("s8s8", "u8s8")

PathLike = Union[str, Path]


@dataclass
class Int8Report:
    """What :func:`quantize_conv_outputs` did.

    Attributes:
        path: the rewritten graph.
        quantized: convolutions prepared for fusion (node name -> observed output ``(min, max)``).
        skipped: convolutions left in float (node name -> reason).
        polyphase: transposed convolutions rewritten as ``Conv`` + ``DepthToSpace``.
        shifts_folded: zero-point shifts folded into a bias.
    """

    path: Path
    quantized: Dict[str, Tuple[float, float]] = field(default_factory=dict)
    skipped: Dict[str, str] = field(default_factory=dict)
    polyphase: List[str] = field(default_factory=list)
    shifts_folded: int = 0


class _Graph:
    """Index of an ONNX graph: initializers as arrays, producers and consumers, fresh names."""

    def __init__(self, model: Any) -> None:
        from onnx import numpy_helper

        self.graph = model.graph
        self.consts = {i.name: numpy_helper.to_array(i) for i in self.graph.initializer}
        self.producer = {o: n for n in self.graph.node for o in n.output}
        self.consumers: Dict[str, List[Any]] = collections.defaultdict(list)
        for node in self.graph.node:
            for name in node.input:
                self.consumers[name].append(node)
        self._count = 0

    def const(self, value: np.ndarray, hint: str) -> str:
        from onnx import numpy_helper

        self._count += 1
        unique = f"{hint}/int8_{self._count}"
        self.graph.initializer.append(numpy_helper.from_array(np.asarray(value), unique))
        self.consts[unique] = np.asarray(value)
        return unique

    def scalar_qparams(self, dq: Any) -> Optional[Tuple[float, int, np.dtype]]:
        """``(scale, zero point, dtype)`` of a per-tensor DequantizeLinear with constant parameters."""
        if len(dq.input) < 3 or dq.input[1] not in self.consts or dq.input[2] not in self.consts:
            return None
        scale, zero = self.consts[dq.input[1]], self.consts[dq.input[2]]
        if scale.size != 1:
            return None
        return float(scale.reshape(())), int(zero.reshape(())), zero.dtype

    def constant_weight(self, dq: Any) -> Optional[Tuple[np.ndarray, np.ndarray, int]]:
        """``(integer weight, scale, axis)`` of a DequantizeLinear of a constant (through a Clip
        of constants, as Brevitas writes it) with zero point 0; ``None`` otherwise."""
        source = dq.input[0]
        clip = self.producer.get(source)
        if clip is not None and clip.op_type == "Clip" and all(i in self.consts for i in clip.input):
            values = np.clip(self.consts[clip.input[0]], self.consts[clip.input[1]], self.consts[clip.input[2]])
        elif source in self.consts:
            values = self.consts[source]
        else:
            return None
        zero = self.consts.get(dq.input[2]) if len(dq.input) > 2 else np.zeros(1, values.dtype)
        if zero is None or np.any(zero != 0) or values.dtype != np.int8 or dq.input[1] not in self.consts:
            return None
        axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
        return values, self.consts[dq.input[1]], axis


def _attr(node: Any, name: str, default: Any) -> Any:
    from onnx import helper

    found = [helper.get_attribute_value(a) for a in node.attribute if a.name == name]
    return found[0] if found else default


# --------------------------------------------------------------------------- eligibility


@dataclass
class _Conv:
    node: Any
    input_dq: Any
    scale_in: float
    dtype: np.dtype
    weight: np.ndarray
    weight_scale: np.ndarray
    weight_axis: int
    shift: float = 0.0


def _eligible(g: _Graph, node: Any) -> Union[_Conv, str]:
    """The parts of a fusable convolution, or why it cannot fuse."""
    source, shift = g.producer.get(node.input[0]), np.zeros(1, np.float32)
    if source is not None and source.op_type == "Add" and source.input[1] in g.consts:
        shift, source = g.consts[source.input[1]], g.producer.get(source.input[0])
    if source is None or source.op_type != "DequantizeLinear":
        return "input is not quantized"
    qparams = g.scalar_qparams(source)
    if qparams is None:
        return "input quantized per channel (QLinearConv takes one input scale and zero point)"
    if shift.size != 1:
        return "input shifted per channel"
    weight_dq = g.producer.get(node.input[1])
    weight = g.constant_weight(weight_dq) if weight_dq is not None and weight_dq.op_type == "DequantizeLinear" else None
    if weight is None:
        return "weight is not a constant int8 DequantizeLinear with zero point 0"
    transposed = node.op_type == "ConvTranspose"
    if weight[1].size > 1 and weight[2] != (1 if transposed else 0):
        return "weight scale not per output channel"
    if len(node.input) > 2 and node.input[2] and node.input[2] not in g.consts:
        return "bias is not a constant"
    if _attr(node, "group", 1) != 1:
        return "grouped convolution"
    if _attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        return "auto_pad"
    if transposed:
        reason = _polyphase_refusal(node, weight[0].shape)
        if reason:
            return reason
    scale, _, dtype = qparams
    return _Conv(node, source, scale, dtype, *weight, shift=float(shift.reshape(())))


def _polyphase_refusal(node: Any, shape: Tuple[int, ...]) -> Optional[str]:
    strides = list(_attr(node, "strides", [1] * (len(shape) - 2)))
    kernel = shape[2:]
    pads = list(_attr(node, "pads", [0] * 2 * len(kernel)))
    extra = list(_attr(node, "output_padding", [0] * len(kernel)))
    if len(kernel) != 2 or len(set(strides)) != 1 or _attr(node, "output_shape", None) is not None:
        return "ConvTranspose not 2-D with one stride"
    if any(d != 1 for d in _attr(node, "dilations", [1, 1])):
        return "dilated ConvTranspose"
    for axis in range(2):
        if kernel[axis] + extra[axis] - pads[axis] - pads[axis + 2] != strides[axis]:
            return "ConvTranspose output size is not stride * input size"
    return None


# --------------------------------------------------------------------------- calibration


def _output_ranges(model: Any, names: Sequence[str],
                   calibration: Iterable[np.ndarray]) -> Dict[str, Tuple[float, float]]:
    """``(min, max)`` of each named tensor over the calibration inputs, zero included."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for tensor in probe.graph.input:  # calibration crops need not have the exported size
        for dim in tensor.type.tensor_type.shape.dim:
            dim.dim_param = f"{tensor.name}_{id(dim)}"
    del probe.graph.value_info[:]
    probe.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names)
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.log_severity_level = 1, 3
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    lo, hi = {n: 0.0 for n in names}, {n: 0.0 for n in names}
    batches = 0
    for batch in calibration:
        for name, value in zip(names, session.run(list(names), {input_name: np.asarray(batch, np.float32)})):
            lo[name], hi[name] = min(lo[name], float(value.min())), max(hi[name], float(value.max()))
        batches += 1
    if batches == 0:
        raise ValueError("no calibration inputs")
    return {n: (lo[n], hi[n]) for n in names}


def _qparams(lo: float, hi: float, dtype: np.dtype) -> Tuple[np.float32, np.ndarray]:
    """8-bit scale and zero point (``dtype`` int8 or uint8) covering ``[lo, hi]`` (which contains 0)."""
    scale = (hi - lo) / 255.0 if hi > lo else 1.0
    qmin = np.iinfo(dtype).min
    return np.float32(scale), np.asarray(np.clip(np.round(qmin - lo / scale), qmin, qmin + 255), dtype)


# --------------------------------------------------------------------------- rewriting


def _polyphase_weight(weight: np.ndarray, node: Any) -> Tuple[np.ndarray, List[int], int]:
    """A ConvTranspose weight ``(C_in, C_out, kh, kw)`` as the weight ``(C_out * s * s, C_in, Lh, Lw)``
    of the equivalent Conv (output channel ``c * s * s + rh * s + rw`` computes phase
    ``(rh, rw)`` of channel ``c``), its pads, and the stride ``s``.

    Output ``o = s * i - pad_begin + k``; for phase ``r = o mod s`` and ``o = s * m + r`` this is
    ``y[m] = sum_d x[m - d] * w[s * d + r + pad_begin]``, a correlation over ``d``.
    """
    stride = int(_attr(node, "strides", [1, 1])[0])
    pads = list(_attr(node, "pads", [0, 0, 0, 0]))
    taps = []  # per axis: (d_max, d_min, {(r, t): k})
    for axis in range(2):
        k_size, begin = weight.shape[2 + axis], pads[axis]
        ds = {(r, d) for r in range(stride) for d in range(-k_size, k_size + 1) if 0 <= stride * d + r + begin < k_size}
        d_max, d_min = max(d for _, d in ds), min(d for _, d in ds)
        taps.append((d_max, d_min, {(r, d_max - d): stride * d + r + begin for r, d in ds}))
    (dh, dh_min, th), (dw, dw_min, tw) = taps
    c_in, c_out = weight.shape[:2]
    out = np.zeros((c_out, stride, stride, c_in, dh - dh_min + 1, dw - dw_min + 1), weight.dtype)
    for (rh, ih), kh in th.items():
        for (rw, iw), kw in tw.items():
            out[:, rh, rw, :, ih, iw] = weight[:, :, kh, kw].T
    return out.reshape(c_out * stride * stride, c_in, *out.shape[-2:]), [dh, dw, -dh_min, -dw_min], stride


def _seven_bit(weight: np.ndarray, scale: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Per output channel (axis 0), integer weights re-quantized to [-63, 63] and their scales."""
    peak = np.abs(weight.reshape(len(weight), -1)).max(axis=1).astype(np.float32).clip(min=1)
    factor = np.minimum(peak, 63) / peak
    return (np.round(weight * factor.reshape(-1, 1, 1, 1)).astype(np.int8),
            (scale / factor).astype(np.float32))


def _rewrite(g: _Graph, conv: _Conv, lo_hi: Tuple[float, float], seven_bit: bool, report: Int8Report) -> List[Any]:
    """Bias to int32, polyphase form for ConvTranspose, optionally 7-bit weights, output
    QuantizeLinear/DequantizeLinear: returns the nodes that take the convolution's place."""
    from onnx import helper

    node, name = conv.node, conv.node.name or conv.node.output[0]
    transposed = node.op_type == "ConvTranspose"
    out_channels = conv.weight.shape[1] if transposed else conv.weight.shape[0]
    weight, repeat = conv.weight, 1
    if transposed:
        weight, pads, stride = _polyphase_weight(weight, node)
        repeat = stride * stride
    scale_w = np.repeat(np.broadcast_to(conv.weight_scale.reshape(-1), (out_channels,)), repeat).astype(np.float32)
    float_weight = weight.astype(np.float32) * scale_w.reshape(-1, 1, 1, 1)
    if seven_bit:
        weight, scale_w = _seven_bit(weight, scale_w)
    has_bias = len(node.input) > 2 and node.input[2]
    bias = np.repeat(g.consts[node.input[2]], repeat) if has_bias else np.zeros(len(weight), np.float32)
    bias = bias + conv.shift * float_weight.sum(axis=(1, 2, 3))  # Conv(x + c) = Conv(x) + c * sum(w), inside
    bias_scale = (conv.scale_in * scale_w).astype(np.float32)
    bias_int = np.round(bias / bias_scale).astype(np.int32)
    before = [_dequantize(g, bias_int, bias_scale, name + "/bias"), _dequantize(g, weight, scale_w, name + "/weight")]
    inputs = [conv.input_dq.output[0], before[1].output[0], before[0].output[0]]
    output = node.output[0]
    scale, zero = _qparams(*lo_hi, conv.dtype)
    scale_name, zero_name = g.const(scale, name + "/out"), g.const(zero, name + "/out")
    if transposed:
        after = [helper.make_node("Conv", inputs, [name + "/phases"], name=name + "/Polyphase",
                                  kernel_shape=list(weight.shape[2:]), pads=pads),
                 *_quant_pair(name + "/phases", scale_name, zero_name, name + "/phases_dq", name),
                 helper.make_node("DepthToSpace", [name + "/phases_dq"], [output], blocksize=stride, mode="CRD",
                                  name=name + "/DepthToSpace")]
        report.polyphase.append(name)
    else:
        node.output[0] = name + "/float_out"
        node.input[:] = inputs
        after = [node, *_quant_pair(node.output[0], scale_name, zero_name, output, name)]
    report.shifts_folded += int(conv.shift != 0)
    report.quantized[name] = lo_hi
    return before + after


def _dequantize(g: _Graph, values: np.ndarray, scale: np.ndarray, name: str) -> Any:
    """A per-axis-0 DequantizeLinear of constant integers with zero point 0."""
    from onnx import helper

    return helper.make_node("DequantizeLinear", [g.const(values, name), g.const(scale, name),
                                                 g.const(np.zeros(len(values), values.dtype), name)],
                            [name + "_dq"], axis=0, name=name + "/Dequantize")


def _quant_pair(source: str, scale: str, zero: str, target: str, name: str) -> List[Any]:
    from onnx import helper

    return [helper.make_node("QuantizeLinear", [source, scale, zero], [name + "/out_q"], name=name + "/OutputQuantize"),
            helper.make_node("DequantizeLinear", [name + "/out_q", scale, zero], [target],
                             name=name + "/OutputDequantize")]


def _set_nodes(graph: Any, nodes: Iterable[Any]) -> None:
    """Replace the graph's nodes by copies of ``nodes`` (in that order)."""
    from onnx import NodeProto

    copies = []
    for node in nodes:
        copies.append(NodeProto())
        copies[-1].CopyFrom(node)
    del graph.node[:]
    graph.node.extend(copies)


def _signed_to_unsigned(g: _Graph) -> int:
    """Activation QuantizeLinear with an int8 zero point, and its Clip/DequantizeLinear
    consumers, to uint8 (zero point and Clip bounds + 128: the same dequantized values);
    returns how many quantizers changed."""
    changed = 0
    for quant in [n for n in g.graph.node if n.op_type == "QuantizeLinear"]:
        zero = g.consts.get(quant.input[2]) if len(quant.input) > 2 else None
        if zero is None or zero.dtype != np.int8:
            continue
        chain, frontier, ok = [], [quant.output[0]], True
        while frontier and ok:
            for user in g.consumers[frontier.pop()]:
                if user.op_type == "Clip" and all(i in g.consts for i in user.input[1:]):
                    frontier.append(user.output[0])
                elif user.op_type != "DequantizeLinear" or user.input[2] != quant.input[2]:
                    ok = False
                chain.append(user)
        if not ok:
            continue
        unsigned = g.const((zero.astype(np.int16) + 128).astype(np.uint8), quant.name)
        for node in [quant, *chain]:
            if node.op_type == "Clip":
                node.input[1:] = [g.const((g.consts[i].astype(np.int16) + 128).astype(np.uint8), node.name)
                                  for i in node.input[1:]]
            else:
                node.input[2] = unsigned
        changed += 1
    return changed


def _drop_initializer_inputs(model: Any) -> None:
    names = {i.name for i in model.graph.initializer}
    kept = [i for i in model.graph.input if i.name not in names]
    del model.graph.input[:]
    model.graph.input.extend(kept)


def quantize_conv_outputs(source: PathLike, calibration: Iterable[np.ndarray], target: Optional[PathLike] = None,
                          kernel: str = "s8s8") -> Int8Report:
    """Rewrite the QCDQ graph ``source`` so that onnxruntime runs its convolutions in integers
    (see the module docstring); writes ``target`` (default ``<source stem>.int8.onnx``).

    Args:
        source: an ONNX file exported with Brevitas's ``export_onnx_qcdq`` (opset 13).
        calibration: float32 input batches; the output ranges are observed on them.
        target: where to write the rewritten graph.
        kernel: ``"s8s8"`` (exact) or ``"u8s8"`` (7-bit weights, fast on AVX2); see the module docstring.

    Raises:
        FileNotFoundError: ``source`` does not exist.
        ValueError: unknown ``kernel``, a graph without Conv/ConvTranspose, no calibration input.
    """
    import onnx

    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {sorted(KERNELS)}, not {kernel!r}")
    source = Path(source)
    if not source.is_file():
        raise FileNotFoundError(f"no ONNX file at {source}")
    target = Path(target) if target is not None else source.with_name(source.stem + ".int8.onnx")
    model = onnx.load(str(source))
    _drop_initializer_inputs(model)
    g = _Graph(model)
    convs = [n for n in g.graph.node if n.op_type in ("Conv", "ConvTranspose")]
    if not convs:
        raise ValueError(f"{source}: no Conv or ConvTranspose node")
    report = Int8Report(target)
    eligible: List[_Conv] = []
    for node in convs:
        found = _eligible(g, node)
        if isinstance(found, str):
            report.skipped[node.name or node.output[0]] = found
        else:
            eligible.append(found)
    if eligible:
        ranges = _output_ranges(model, [c.node.output[0] for c in eligible], calibration)
        seven_bit = kernel == "u8s8"
        replaced = {id(c.node): _rewrite(g, c, ranges[c.node.output[0]], seven_bit, report) for c in eligible}
        _set_nodes(g.graph, [m for n in g.graph.node for m in replaced.get(id(n), [n])])
        if seven_bit:
            _signed_to_unsigned(_Graph(model))
        _prune(model)
    onnx.checker.check_model(model)
    onnx.save(model, str(target))
    return report


def _prune(model: Any) -> None:
    """Drop nodes and initializers nothing reads any more (replaced shifts, weights, biases)."""
    needed = {o.name for o in model.graph.output}
    kept = []
    for node in reversed(list(model.graph.node)):
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(node.input)
    _set_nodes(model.graph, reversed(kept))
    used = [i for i in model.graph.initializer if i.name in needed]
    del model.graph.initializer[:]
    model.graph.initializer.extend(used)
