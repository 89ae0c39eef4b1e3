"""Transposed convolution as zero insertion plus a regular convolution, for FINN.

CompressAI's decoders use ``ConvTranspose2d(k, stride=s, padding=p, output_padding=s - 1)``.
FINN's own ``InferPixelPaddingDeconv`` pads symmetrically and ignores ``output_padding``. The
identity used here, for each spatial axis::

    conv_transpose(x, w, s, p, op) == conv(zero_insert(x, s), flip(w).transpose(0, 1),
                                           padding=(k - 1 - p, k - 1 - p + op))

where ``zero_insert`` puts ``s - 1`` zeros between neighbouring pixels (FINN's
``FMPadding_Pixel``) and the padding is asymmetric when ``op > 0``.

Example:
    >>> import torch
    >>> x, w = torch.randn(1, 3, 4, 5), torch.randn(3, 2, 5, 5)
    >>> ref = torch.nn.functional.conv_transpose2d(x, w, stride=2, padding=2, output_padding=1)
    >>> torch.allclose(conv_transpose_as_conv(x, w, 2, 2, 1), ref, atol=1e-5)
    True
"""

from __future__ import annotations

from typing import Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.transformation.base import Transformation
from qonnx.util.basic import get_by_name

__all__ = ["LowerConvTransposeToPixelPadding", "conv_transpose_as_conv", "zero_insert"]

Pair = Union[int, Sequence[int]]


def _pair(v: Pair) -> Tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def zero_insert(x: torch.Tensor, stride: Pair) -> torch.Tensor:
    """Insert ``stride - 1`` zeros between neighbouring pixels of an ``NCHW`` tensor.

    Example:
        >>> zero_insert(torch.tensor([[[[1., 2.]]]]), 2).tolist()
        [[[[1.0, 0.0, 2.0]]]]
    """
    sh, sw = _pair(stride)
    n, c, h, w = x.shape
    out = x.new_zeros(n, c, (h - 1) * sh + 1, (w - 1) * sw + 1)
    out[:, :, ::sh, ::sw] = x
    return out


def conv_transpose_as_conv(
    x: torch.Tensor, weight: torch.Tensor, stride: Pair, padding: Pair, output_padding: Pair = 0
) -> torch.Tensor:
    """``conv_transpose2d`` (groups 1, dilation 1) computed by zero insertion and ``conv2d``."""
    kh, kw = weight.shape[2:]
    (ph, pw), (oh, ow) = _pair(padding), _pair(output_padding)
    pads = (kw - 1 - pw, kw - 1 - pw + ow, kh - 1 - ph, kh - 1 - ph + oh)
    if min(pads) < 0:
        raise ValueError(f"padding {padding} larger than kernel - 1 is not supported")
    kernel = weight.flip(2, 3).transpose(0, 1)
    return F.conv2d(F.pad(zero_insert(x, stride), pads), kernel)


class LowerConvTransposeToPixelPadding(Transformation):
    """Replace each ``ConvTranspose`` (NCHW) by Transpose, FMPadding_Pixel, Im2Col, MatMul, Transpose.

    Unlike FINN's ``InferPixelPaddingDeconv`` it honours ``output_padding`` and asymmetric
    ``pads`` (the Im2Col padding becomes ``[k-1-begin, k-1-begin, k-1-end+op, k-1-end+op]``).
    Only ``group == 1`` and dilation 1 are handled; other nodes are left alone.
    """

    def apply(self, model: ModelWrapper) -> Tuple[ModelWrapper, bool]:
        for index, node in enumerate(model.graph.node):
            if node.op_type == "ConvTranspose" and _lowerable(node):
                self._lower(model, index, node)
                return model, True
        return model, False

    @staticmethod
    def _lower(model: ModelWrapper, index: int, node) -> None:
        attr = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        kh, kw = attr["kernel_shape"]
        sh, sw = attr.get("strides", [1, 1])
        pads = list(attr.get("pads", [0, 0, 0, 0]))
        oph, opw = attr.get("output_padding", [0, 0])
        n, cin, h, w = model.get_tensor_shape(node.input[0])
        _, cout, oh, ow = model.get_tensor_shape(node.output[0])
        weight = model.get_initializer(node.input[1])  # (Cin, Cout, kh, kw)
        kernel = np.flip(weight, (2, 3)).transpose(1, 0, 2, 3)  # (Cout, Cin, kh, kw)
        matrix = kernel.transpose(0, 2, 3, 1).reshape(cout, kh * kw * cin).T
        weight_name = model.make_new_valueinfo_name()
        model.set_initializer(weight_name, np.ascontiguousarray(matrix, dtype=np.float32))
        model.set_tensor_datatype(weight_name, model.get_tensor_datatype(node.input[1]))
        im2col_pad = [kh - 1 - pads[0], kw - 1 - pads[1], kh - 1 - pads[2] + oph, kw - 1 - pads[3] + opw]
        uh, uw = (h - 1) * sh + 1, (w - 1) * sw + 1
        idt = model.get_tensor_datatype(node.input[0])
        names = [model.make_new_valueinfo_name() for _ in range(4)]
        shapes = [(n, h, w, cin), (n, uh, uw, cin), (n, oh, ow, kh * kw * cin), (n, oh, ow, cout)]
        for name, shape in zip(names, shapes):
            model.graph.value_info.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))
        for name in names[:3]:
            model.set_tensor_datatype(name, idt)
        new = [
            helper.make_node("Transpose", [node.input[0]], [names[0]], perm=[0, 2, 3, 1]),
            helper.make_node(
                "FMPadding_Pixel", [names[0]], [names[1]], domain="finn.custom_op.fpgadataflow",
                backend="fpgadataflow", ImgDim=[h, w], Stride=[sh, sw], NumChannels=cin,
                inputDataType=idt.name, numInputVectors=n, SIMD=1,
            ),
            helper.make_node(
                "Im2Col", [names[1]], [names[2]], domain="qonnx.custom_op.general", stride=[1, 1],
                kernel_size=[kh, kw], pad_amount=im2col_pad, input_shape=f"({n},{uh},{uw},{cin})",
                depthwise=0, dilations=[1, 1],
            ),
            helper.make_node("MatMul", [names[2], weight_name], [names[3]]),
            helper.make_node("Transpose", [names[3]], [node.output[0]], perm=[0, 3, 1, 2]),
        ]
        if len(node.input) > 2:  # bias: add it after the lowered convolution
            pre = model.make_new_valueinfo_name()
            new[-1].output[0] = pre
            bias = model.get_initializer(node.input[2]).reshape(1, -1, 1, 1)
            bias_name = model.make_new_valueinfo_name()
            model.set_initializer(bias_name, bias.astype(np.float32))
            new.append(helper.make_node("Add", [pre, bias_name], [node.output[0]]))
        model.graph.node.remove(node)
        for offset, n_ in enumerate(new):
            model.graph.node.insert(index + offset, n_)


def _lowerable(node) -> bool:
    group = get_by_name(node.attribute, "group")
    dilations = get_by_name(node.attribute, "dilations")
    return (group is None or group.i == 1) and (dilations is None or list(dilations.ints) == [1, 1])
