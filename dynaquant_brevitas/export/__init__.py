"""Export of frozen DynaQuant models: QONNX with zero points folded, verified; the FINN flow; QCDQ
graphs for onnxruntime and their integer-kernel rewrite; packed weight files.

Names are imported on first use: packing needs no ONNX package, the exporters need the
``export`` extra (``pip install 'dynaquant-brevitas[export]'``).
"""

from .._lazy import lazy_attributes

_WHERE = {
    **dict.fromkeys(("FoldReport", "fold_zero_points", "quant_grid"), ".fold"),
    **dict.fromkeys(("Int8Report", "quantize_conv_outputs"), ".ort_int8"),
    **dict.fromkeys(("OrtModule", "int8_session", "ort_session"), ".ort"),
    **dict.fromkeys(("Deployable", "add_zero_point_shifts", "deployable", "export_onnxruntime", "export_qcdq"), ".qcdq"),
    **dict.fromkeys(("ExportResult", "VerificationError", "export_qonnx", "output_step", "verify_qonnx"), ".qonnx"),
    **dict.fromkeys(("pack_model", "unpack_model"), ".packing"),
}
__all__ = sorted(_WHERE)
__getattr__, __dir__ = lazy_attributes(__name__, _WHERE)
