"""Export of frozen DynaQuant models: QONNX with zero points folded, verified; the FINN flow."""

from .fold import FoldReport, fold_zero_points, quant_grid
from .qonnx import ExportResult, VerificationError, export_qonnx, output_step, verify_qonnx

__all__ = [
    "ExportResult",
    "FoldReport",
    "VerificationError",
    "export_qonnx",
    "fold_zero_points",
    "output_step",
    "quant_grid",
    "verify_qonnx",
]
