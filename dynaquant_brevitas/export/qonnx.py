"""QONNX export of a frozen DynaQuant module, with zero points folded and the result verified.

Example:
    >>> import torch, tempfile, os
    >>> from brevitas.nn import QuantConv2d
    >>> from dynaquant_brevitas.quant import DynaActQuant, DynaWeightQuant
    >>> conv = QuantConv2d(3, 4, 3, padding=1, weight_quant=DynaWeightQuant, input_quant=DynaActQuant)
    >>> _ = conv.train()(torch.rand(2, 3, 8, 8))  # calibrates the input quantizer
    >>> path = os.path.join(tempfile.mkdtemp(), "conv.onnx")
    >>> result = export_qonnx(conv.eval(), path, (1, 3, 8, 8))
    >>> result.max_error_steps < 1
    True
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from typing import Any, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.core.onnx_exec import execute_onnx
from qonnx.custom_op.general.quant import max_int, min_int
from qonnx.transformation.infer_shapes import InferShapes
from qonnx.util.basic import get_by_name
from qonnx.util.cleanup import cleanup_model
from torch import nn

from ..transform import freeze
from .fold import FoldReport, fold_zero_points

__all__ = ["ExportResult", "VerificationError", "export_qonnx", "output_step", "verify_qonnx"]


class VerificationError(RuntimeError):
    """The exported graph does not compute what the PyTorch module computes."""


@dataclass
class ExportResult:
    """Where the model went and how well its QONNX execution matches PyTorch."""

    path: str
    max_error: float
    max_error_steps: float
    output_step: float
    samples: int
    fold: FoldReport = field(default_factory=FoldReport)

    def summary(self) -> str:
        maps = self.fold.correction_maps
        return (
            f"{self.path}: max |qonnx - torch| = {self.max_error:.3g} "
            f"({self.max_error_steps:.3g} output steps of {self.output_step:.3g}) on {self.samples} "
            f"samples; {len(self.fold.folded)} zero points folded, {maps} correction maps"
        )


def export_qonnx(
    module: nn.Module,
    path: str,
    input_shape: Sequence[int],
    *,
    profile: Optional[Any] = None,
    samples: Optional[Iterable[torch.Tensor]] = None,
    step: Optional[float] = None,
    snap: float = 0.0,
    border: str = "map",
    verify: bool = True,
    tolerance_steps: float = 1.0,
) -> ExportResult:
    """Export ``module`` to a QONNX file whose quantizers all have zero point 0.

    Args:
        module: a DynaQuant (or any Brevitas) module; a dynamic model is frozen with ``profile``.
        path: where to write the ``.onnx`` file.
        input_shape: the input shape, batch included, e.g. ``(1, 3, 64, 64)``; the offset
            correction maps depend on the spatial size, so the file is for this shape only.
        profile: the bit profile for :func:`dynaquant_brevitas.transform.freeze`.
        samples: inputs to verify on (default: 4 random inputs spread over the first
            quantizer's range).
        step: the output quantization step errors are measured in (default: see
            :func:`output_step`).
        snap, border: see :func:`~dynaquant_brevitas.export.fold.fold_zero_points`.
        verify: run the graph with qonnx's executor and raise :class:`VerificationError` when
            it differs from PyTorch by more than ``tolerance_steps`` output steps.
    """
    module = frozen(module, profile).eval()
    raw = _brevitas_export(module, input_shape)
    if step is None:
        step = output_step(raw)
    model, report = fold_zero_points(raw, snap=snap, border=border)
    model.save(path)
    result = ExportResult(path, 0.0, 0.0, float(step), 0, report)
    if verify:
        inputs = list(samples) if samples is not None else default_samples(raw, input_shape)
        result = verify_qonnx(module, model, inputs, step, path=path, fold=report, tolerance_steps=tolerance_steps)
    return result


def frozen(module: nn.Module, profile: Optional[Any] = None) -> nn.Module:
    """``module`` with one bit width per layer.

    Activation grids set per image (``activation_range``) are refused: a graph holds static scales.
    A dynaquantized model (``model.dynaquant``) is frozen with ``profile`` (``"max"`` when not
    given). A part of a dynamic model that still carries a per-sample bit choice is refused:
    its bit widths would be whatever the last forward pass picked.
    """
    per_image = sorted({q.image_range for q in module.modules() if getattr(q, "image_range", "static") != "static"})
    if per_image:
        raise ValueError(
            f"this model sets activation ranges per image ({', '.join(per_image)}): ONNX graphs carry static "
            "scales only; quantize with DynaQuantConfig(activation_range='static') to export"
        )
    if hasattr(module, "dynaquant"):
        return freeze(module, profile if profile is not None else "max")
    if profile is not None:
        raise ValueError("a profile needs the whole dynaquantized model (with model.dynaquant), not a part")
    if any(getattr(m, "bit_choice", None) is not None for m in module.modules()):
        raise ValueError(
            "this module still follows a bit-width selector: export a frozen model, "
            "e.g. freeze(model, profile).g_a (dynaquant_brevitas.transform.freeze)"
        )
    return module


def _brevitas_export(module: nn.Module, input_shape: Sequence[int]) -> ModelWrapper:
    from brevitas.export import export_qonnx as brevitas_export_qonnx

    with tempfile.TemporaryDirectory() as tmp:
        raw_path = os.path.join(tmp, "raw.onnx")
        example = torch.zeros(tuple(input_shape))
        with torch.no_grad():
            brevitas_export_qonnx(module, example, raw_path, dynamo=False)
        model = ModelWrapper(raw_path)
    model = cleanup_model(model)
    return model.transform(InferShapes())


def output_step(model: ModelWrapper) -> float:
    """The quantization step that export errors are measured in.

    The scale of the output ``Quant`` when the graph ends with one; otherwise the step of the
    last activation quantizer before the output (the input step of the last layer, largest
    over channels). A finer unit, such as the accumulator step ``s_in * s_w``, sits at the
    noise floor of float32 arithmetic for realistic layer sizes and cannot be checked.
    """
    quants = [n for n in model.graph.node if n.op_type == "Quant" and model.get_initializer(n.input[0]) is None]
    if not quants:
        raise ValueError("the graph has no activation quantizer: pass step=...")
    last = quants[-1]
    return float(np.max(model.get_initializer(last.input[1])))


def default_samples(model: ModelWrapper, input_shape: Sequence[int], count: int = 4) -> List[torch.Tensor]:
    """Random inputs spread over the first quantizer's range (10 % beyond it on both sides)."""
    generator = torch.Generator().manual_seed(0)
    lo, hi = _input_range(model)
    lo_t = torch.as_tensor(lo, dtype=torch.float32)
    hi_t = torch.as_tensor(hi, dtype=torch.float32)
    span = hi_t - lo_t
    out = []
    for _ in range(count):
        u = torch.rand(tuple(input_shape), generator=generator) * 1.2 - 0.1
        out.append(lo_t + span * u)
    return out


def _input_range(model: ModelWrapper) -> Tuple[np.ndarray, np.ndarray]:
    first = model.find_consumer(model.graph.input[0].name)
    if first is None or first.op_type != "Quant":
        return np.zeros(()), np.ones(())
    scale, zero_point, bits = (model.get_initializer(n) for n in first.input[1:4])
    signed = bool(get_by_name(first.attribute, "signed").i)
    narrow = bool(get_by_name(first.attribute, "narrow").i)
    qmin, qmax = min_int(signed, narrow, int(bits)), max_int(signed, narrow, int(bits))
    return scale * (qmin - zero_point), scale * (qmax - zero_point)


def verify_qonnx(
    module: nn.Module,
    model: ModelWrapper,
    samples: Iterable[torch.Tensor],
    step: float,
    *,
    path: str = "",
    fold: Optional[FoldReport] = None,
    tolerance_steps: float = 1.0,
) -> ExportResult:
    """Run ``model`` with qonnx's executor on ``samples`` and compare with ``module``.

    Raises:
        VerificationError: when some output differs by more than ``tolerance_steps`` steps.
    """
    worst, worst_steps, count = 0.0, 0.0, 0
    for x in samples:
        with torch.no_grad():
            expected = _plain(module(x)).numpy()
        got = run_qonnx(model, x.numpy())
        error = np.abs(got.astype(np.float64) - expected)
        worst = max(worst, float(error.max()))
        worst_steps = max(worst_steps, float(error.max()) / step)
        count += 1
    scalar_step = float(step)
    result = ExportResult(path, worst, worst_steps, scalar_step, count, fold or FoldReport())
    if worst_steps > tolerance_steps:
        raise VerificationError(
            f"QONNX export differs from PyTorch by {worst_steps:.3g} output steps "
            f"(max abs error {worst:.3g}, tolerance {tolerance_steps} step): {result.summary()}"
        )
    return result


def run_qonnx(model: ModelWrapper, x: np.ndarray) -> np.ndarray:
    """Execute a (Q)ONNX model on one input with qonnx's executor."""
    name = model.graph.input[0].name
    out = execute_onnx(model, {name: np.asarray(x, dtype=np.float32)})
    return out[model.graph.output[0].name]


def _plain(out: Any) -> torch.Tensor:
    return out.value if hasattr(out, "value") and not isinstance(out, torch.Tensor) else out
