"""Running exported graphs in onnxruntime: sessions, their operator counts, a session as a module."""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import numpy as np
import torch
from torch import nn

__all__ = ["INT_KERNELS", "OrtModule", "int8_session", "int_kernel_count", "ort_session"]

PathLike = Union[str, Path]

#: onnxruntime operators that run integer arithmetic (what QDQ fusion produces when it can).
INT_KERNELS = frozenset({
    "QLinearConv", "QLinearConvTranspose", "ConvInteger", "MatMulInteger", "QLinearMatMul",
    "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QGemm", "QLinearAdd", "QLinearMul",
})


def ort_session(path: PathLike, threads: int = 1,
                config: Optional[Mapping[str, str]] = None) -> Tuple[Any, Dict[str, int]]:
    """An onnxruntime CPU session (all graph optimisations, ``threads`` threads, session config
    entries ``config``) and the operator counts of the graph it actually runs (the optimised
    model it writes beside ``path`` as ``<stem>.optimized.onnx``).

    Example:
        A Brevitas convolution exported to QCDQ (:mod:`dynaquant_brevitas.export.qcdq`):

        >>> import tempfile
        >>> from brevitas.nn import QuantConv2d
        >>> from brevitas.quant import Int8ActPerTensorFloat
        >>> from dynaquant_brevitas.export.qcdq import export_qcdq
        >>> _ = torch.manual_seed(0)
        >>> conv = QuantConv2d(3, 4, 3, padding=1, input_quant=Int8ActPerTensorFloat, return_quant_tensor=False)
        >>> _ = conv.train()(torch.rand(2, 3, 8, 8))  # calibrates the input quantizer
        >>> x = torch.rand(1, 3, 8, 8)
        >>> path = export_qcdq(conv.eval(), x, Path(tempfile.mkdtemp()) / "conv.qcdq.onnx")
        >>> session, ops = ort_session(path)
        >>> ops["DequantizeLinear"] > 0, int_kernel_count(ops)  # fake-quantized: a float convolution
        (True, 0)
        >>> got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        >>> bool(np.abs(got - conv(x).detach().numpy()).max() < 1e-4)
        True
    """
    import onnx
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no ONNX file at {path}")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = options.inter_op_num_threads = threads
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    for key, value in (config or {}).items():
        options.add_session_config_entry(key, value)
    optimized = path.with_name(path.stem + ".optimized.onnx")
    options.optimized_model_filepath = str(optimized)
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    ops = collections.Counter(node.op_type for node in onnx.load(str(optimized)).graph.node)
    return session, dict(sorted(ops.items()))


def int_kernel_count(ops: Mapping[str, int]) -> int:
    """How many of the operators ``ops`` (as :func:`ort_session` counts them) run integer arithmetic.

    Example:
        >>> int_kernel_count({"QLinearConv": 4, "Conv": 3, "DequantizeLinear": 9})
        4
    """
    return sum(n for op, n in ops.items() if op in INT_KERNELS)


def int8_session(path: PathLike, threads: int = 1) -> Tuple[Any, Dict[str, int]]:
    """An onnxruntime CPU session (all optimisations) allowed to fuse int8 activations (the s8s8
    kernel), and the operator counts of the graph it runs after optimisation (written beside
    ``path`` as ``<stem>.optimized.onnx``); see :func:`ort_session`."""
    return ort_session(path, threads, {"session.qdqisint8allowed": "1"})


class OrtModule(nn.Module):
    """An onnxruntime session as a torch module (float32 in, float32 out, no gradient), e.g. to
    put an exported ``g_a`` or ``g_s`` back into a CompressAI model: ``model.g_s = OrtModule(s)``.

    Inputs whose shape differs from the graph's static one are refused by onnxruntime.
    """

    def __init__(self, session: Any) -> None:
        super().__init__()
        self.session = session
        self.input_name = session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {self.input_name: x.detach().cpu().numpy().astype(np.float32)})[0]
        return torch.from_numpy(out).to(x.device)
