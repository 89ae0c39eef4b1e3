"""Export of frozen DynaQuant models: QONNX with zero points folded, verified; the FINN flow;
QCDQ graphs prepared for onnxruntime's integer kernels."""

from .fold import FoldReport, fold_zero_points, quant_grid
from .ort_int8 import Int8Report, OrtModule, int8_session, quantize_conv_outputs
from .qcdq import Deployable, add_zero_point_shifts, deployable, export_onnxruntime, export_qcdq, ort_session
from .qonnx import ExportResult, VerificationError, export_qonnx, output_step, verify_qonnx

__all__ = [
    "Deployable",
    "ExportResult",
    "FoldReport",
    "Int8Report",
    "OrtModule",
    "VerificationError",
    "add_zero_point_shifts",
    "deployable",
    "export_onnxruntime",
    "export_qcdq",
    "export_qonnx",
    "fold_zero_points",
    "int8_session",
    "ort_session",
    "output_step",
    "quant_grid",
    "quantize_conv_outputs",
    "verify_qonnx",
]
