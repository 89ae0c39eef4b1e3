"""FINN's front end on an exported QONNX graph: streamline, map to hardware layers, fold, estimate.

The stages follow finn-plus's own build steps (``step_qonnx_to_finn`` ... ``step_set_folding``),
called directly so no Vivado, no build directory layout and none of the builder's optional
dependencies are needed. Each stage is a function from ``ModelWrapper`` to ``ModelWrapper``.

Example (see ``tests/test_finn.py`` for a whole encoder)::

    model = to_hw(streamline(to_finn(prepare_qonnx(ModelWrapper("g_a.onnx")))))
    _, partition = dataflow_partition(model)
    partition = fold(specialize(partition), target_cycles=100_000)
    report = estimates(partition, clock_ns=5.0)
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

__all__ = [
    "FinnBuild", "build_finn", "hardware_layers", "DEFAULT_FPGA_PART", "dataflow_partition", "estimates",
    "export_finn", "fold", "prepare_qonnx", "run_finn", "specialize", "streamline", "to_finn", "to_hw"
]

#: A Zynq UltraScale+ part (ZCU104); only used for resource estimates, no Vivado is run.
DEFAULT_FPGA_PART = "xczu7ev-ffvc1156-2-e"


def _build_dir() -> str:
    """FINN's scratch directory, ``$FINN_BUILD_DIR`` (a new temporary one when unset)."""
    if not os.environ.get("FINN_BUILD_DIR"):
        os.environ["FINN_BUILD_DIR"] = tempfile.mkdtemp(prefix="finn_build_")
    os.makedirs(os.environ["FINN_BUILD_DIR"], exist_ok=True)
    return os.environ["FINN_BUILD_DIR"]


def to_finn(model, max_threshold_bits: int = 10):
    """QONNX to FINN-ONNX: activation ``Quant`` to ``MultiThreshold``, weights to integers."""
    _build_dir()
    from finn.transformation.qonnx.convert_qonnx_to_finn import ConvertQONNXtoFINN
    from finn.transformation.qonnx.quant_act_to_multithreshold import default_filter_function_generator
    from qonnx.transformation.fold_constants import FoldConstants
    from qonnx.transformation.general import GiveReadableTensorNames, GiveUniqueNodeNames, RemoveStaticGraphInputs
    from qonnx.transformation.infer_datatypes import InferDataTypes
    from qonnx.transformation.infer_shapes import InferShapes
    from qonnx.util.cleanup import cleanup_model

    model = cleanup_model(model)
    model = model.transform(
        ConvertQONNXtoFINN(
            filter_function=default_filter_function_generator(max_multithreshold_bit_width=max_threshold_bits)
        )
    )
    for t in (InferShapes(), FoldConstants(), GiveUniqueNodeNames(), GiveReadableTensorNames(),
              InferDataTypes(), RemoveStaticGraphInputs()):
        model = model.transform(t)
    return model


def streamline(model):
    """Lower transposed convolutions and convolutions to MatMul, absorb scales into thresholds."""
    import finn.transformation.streamline.absorb as absorb
    from finn.transformation.streamline import Streamline
    from finn.transformation.streamline.reorder import MoveTransposePastEltwise
    from qonnx.transformation.general import RemoveUnusedTensors
    from qonnx.transformation.infer_data_layouts import InferDataLayouts
    from qonnx.transformation.infer_datatypes import InferDataTypes
    from qonnx.transformation.infer_shapes import InferShapes
    from qonnx.transformation.lower_convs_to_matmul import LowerConvsToMatMul

    from .deconv import LowerConvTransposeToPixelPadding
    from .thresholds import AbsorbReluIntoMultiThreshold

    model = model.transform(absorb.AbsorbScalarBiasIntoMultiThreshold())
    model = model.transform(Streamline())
    model = model.transform(AbsorbReluIntoMultiThreshold())
    model = model.transform(Streamline())
    model = model.transform(LowerConvTransposeToPixelPadding())
    model = model.transform(LowerConvsToMatMul())
    nhwc = (absorb.AbsorbTransposeIntoMultiThreshold(), absorb.AbsorbConsecutiveTransposes(),
            MoveTransposePastEltwise(), absorb.AbsorbConsecutiveTransposes())
    tail = (Streamline(), InferDataLayouts(), RemoveUnusedTensors())
    for t in (InferShapes(), InferDataTypes()) + nhwc + nhwc + tail:
        model = model.transform(t)
    return model


def to_hw(model):
    """Convert streamlined nodes to FINN hardware layers (finn-plus's ``step_convert_to_hw`` order).

    The layout transposes at the graph's input and output stay in software (NCHW <-> NHWC).
    """
    from finn.transformation.fpgadataflow.convert_to_hw.conv_inp_gen import InferConvInpGen
    from finn.transformation.fpgadataflow.convert_to_hw.elementwise_binary_operation import (
        InferElementwiseBinaryOperation,
    )
    from finn.transformation.fpgadataflow.convert_to_hw.duplicate_streams import InferDuplicateStreamsLayer
    from finn.transformation.fpgadataflow.convert_to_hw.fm_padding import InferFMPadding
    from finn.transformation.fpgadataflow.convert_to_hw.quantized_matrix_vector_activation import (
        InferQuantizedMatrixVectorActivation,
    )
    from finn.transformation.fpgadataflow.convert_to_hw.relu_as_elementwise_max import InferReLUAsElementwiseMax
    from finn.transformation.fpgadataflow.convert_to_hw.requant import InferRequantLayer
    from finn.transformation.fpgadataflow.convert_to_hw.thresholding import InferThresholdingLayer
    from finn.transformation.streamline.absorb import AbsorbConsecutiveTransposes
    from finn.transformation.move_reshape import RemoveCNVtoFCFlatten
    from qonnx.transformation.general import GiveUniqueNodeNames
    from qonnx.transformation.infer_data_layouts import InferDataLayouts
    from qonnx.transformation.infer_datatypes import InferDataTypes
    from qonnx.transformation.infer_shapes import InferShapes

    steps = [
        # standalone thresholds first (the builder's standalone_thresholds=True): the MVAUs then stay
        # RTL, whose weight stream is not capped at an ap_int width as HLS MVAUs with thresholds are
        InferRequantLayer(bitwidth_threshold=9),
        InferThresholdingLayer(),
        InferQuantizedMatrixVectorActivation(),
        InferFMPadding(),
        InferConvInpGen(),
        InferElementwiseBinaryOperation(InferElementwiseBinaryOperation.reject_output_dequant),
        InferReLUAsElementwiseMax(),
        InferDuplicateStreamsLayer(),
        AbsorbConsecutiveTransposes(),
        RemoveCNVtoFCFlatten(),
        GiveUniqueNodeNames(),
        InferDataLayouts(),
        InferDataTypes(),
        InferShapes(),
    ]
    for t in steps:
        model = model.transform(t)
    return model


def dataflow_partition(model):
    """Split off the hardware layers (``CreateDataflowPartition``); returns (parent, partition)."""
    from finn.analysis.fpgadataflow.unsupported_layers import unsupported_layers
    from finn.transformation.fpgadataflow.create_dataflow_partition import CreateDataflowPartition
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.custom_op.registry import getCustomOp

    result = model.analysis(unsupported_layers)
    if result[0] is False:
        names = [n.name for n in model.graph.node if not n.domain.startswith("finn.custom_op.fpgadataflow")]
        raise RuntimeError(f"layers FINN could not map sit between hardware layers: {names}")
    partition_dir = tempfile.mkdtemp(prefix="sdp_", dir=_build_dir())
    parent = model.transform(CreateDataflowPartition(partition_model_dir=partition_dir))
    sdp = parent.get_nodes_by_op_type("StreamingDataflowPartition")
    if len(sdp) != 1:
        raise RuntimeError(f"expected one dataflow partition, found {len(sdp)}")
    return parent, ModelWrapper(getCustomOp(sdp[0]).get_nodeattr("model"))


def specialize(model, fpga_part: str = DEFAULT_FPGA_PART):
    """Pick HLS or RTL implementations (``SpecializeLayers``)."""
    from finn.transformation.fpgadataflow.specialize_layers import SpecializeLayers
    from qonnx.transformation.general import GiveUniqueNodeNames
    from qonnx.transformation.infer_datatypes import InferDataTypes
    from qonnx.transformation.infer_shapes import InferShapes

    for t in (SpecializeLayers(fpga_part), GiveUniqueNodeNames(), InferShapes(), InferDataTypes()):
        model = model.transform(t)
    return model


def fold(model, target_cycles: int, mvau_wwidth_max: int = 36):
    """Set PE/SIMD so each layer needs at most ``target_cycles`` cycles per frame (``SetFolding``).

    ``mvau_wwidth_max`` (FINN's default 36) caps ``SIMD * weight bits``: wide weights limit SIMD.
    """
    from finn.transformation.fpgadataflow.set_folding import SetFolding
    from qonnx.transformation.general import GiveUniqueNodeNames

    model = model.transform(SetFolding(target_cycles_per_frame=target_cycles, mvau_wwidth_max=mvau_wwidth_max))
    return model.transform(GiveUniqueNodeNames())


def estimates(model, clock_ns: float, fpga_part: str = DEFAULT_FPGA_PART) -> Dict[str, Any]:
    """FINN's own analyses: ``exp_cycles_per_layer``, ``res_estimation``, ``dataflow_performance``."""
    from finn.analysis.fpgadataflow.dataflow_performance import dataflow_performance
    from finn.analysis.fpgadataflow.exp_cycles_per_layer import exp_cycles_per_layer
    from finn.analysis.fpgadataflow.res_estimation import res_estimation
    from finn.transformation.fpgadataflow.annotate_cycles import AnnotateCycles

    cycles = model.analysis(exp_cycles_per_layer)
    resources = model.analysis(lambda m: res_estimation(m, fpgapart=fpga_part))
    model = model.transform(AnnotateCycles())
    perf = model.analysis(dataflow_performance)
    max_cycles = int(perf["max_cycles"])
    return {
        "clock_ns": clock_ns,
        "cycles_per_layer": {k: int(v) for k, v in cycles.items()},
        "resources_per_layer": resources,
        "max_cycles": max_cycles,
        "critical_path_cycles": int(perf["critical_path_cycles"]),
        "fps": 1e9 / clock_ns / max_cycles,
    }


def run_finn(model, x: np.ndarray) -> np.ndarray:
    """Execute a FINN graph (Python mode for hardware layers) on one input."""
    from finn.core.onnx_exec import execute_onnx

    name = model.graph.input[0].name
    out = execute_onnx(model, {name: np.asarray(x, dtype=np.float32)})
    return out[model.graph.output[0].name]


def prepare_qonnx(model, extra_weight_bits: int = 4):
    """The FINN-specific rewrite of a folded QONNX graph: integer dot products (see ``integer``)."""
    from .integer import absorb_activation_scales

    return absorb_activation_scales(model, extra_weight_bits)[0]


@dataclass
class FinnBuild:
    """The outcome of :func:`build_finn`: the graphs, the verification and FINN's estimates."""

    hw_model: Any
    partition: Any
    max_error_steps: float
    output_step: float
    approximation_max_steps: float = 0.0
    approximation_mean_steps: float = 0.0
    layers: List[Dict[str, Any]] = field(default_factory=list)
    estimate: Dict[str, Any] = field(default_factory=dict)


def build_finn(
    qonnx_model,
    *,
    reference: Optional[Callable[[np.ndarray], np.ndarray]] = None,
    samples: Sequence[np.ndarray] = (),
    step: float = 1.0,
    target_cycles: Optional[int] = None,
    clock_ns: float = 5.0,
    fpga_part: str = DEFAULT_FPGA_PART,
    extra_weight_bits: int = 4,
    tolerance_steps: float = 1.0,
    approximation_tolerance_steps: Optional[float] = None,
    mvau_wwidth_max: int = 36,
) -> FinnBuild:
    """QONNX (zero points folded) to a folded FINN dataflow partition, verified and estimated.

    Two numbers come out of the verification on ``samples``:

    * ``max_error_steps``: FINN's graph (Python execution of every hardware layer) against the
      integer-weight QONNX graph it was built from (qonnx execution). FINN's rewrites are exact,
      so this is float noise; above ``tolerance_steps`` raises :class:`~.qonnx.VerificationError`.
    * ``approximation_max_steps`` / ``approximation_mean_steps``: that integer-weight graph against
      ``reference`` (PyTorch): the cost of moving per-channel activation steps into the weights
      (see :mod:`.integer`). Rare rounding flips dominate the maximum; the mean is the typical
      deviation. Reported, and raised on only when above ``approximation_tolerance_steps``.

    Args:
        qonnx_model: a ``ModelWrapper`` or path written by :func:`~.qonnx.export_qonnx`.
        reference: the PyTorch computation on a numpy input.
        samples: inputs for the verification.
        step: the output step errors are measured in.
        target_cycles: cycles per frame ``SetFolding`` aims at (default: the slowest layer
            unfolded, i.e. fully serial).
        mvau_wwidth_max: see :func:`fold`.
        clock_ns: clock period for the frames-per-second estimate.
    """
    from qonnx.core.modelwrapper import ModelWrapper

    from .qonnx import VerificationError

    model = qonnx_model if isinstance(qonnx_model, ModelWrapper) else ModelWrapper(str(qonnx_model))
    from .qonnx import run_qonnx

    integer = prepare_qonnx(model, extra_weight_bits)
    hw = to_hw(streamline(to_finn(integer)))
    worst, approx_max, approx_means = 0.0, 0.0, []
    for x in samples:
        expected = run_qonnx(integer, x).astype(np.float64)
        worst = max(worst, float(np.abs(run_finn(hw, x) - expected).max()) / step)
        if reference is not None:
            deviation = np.abs(expected - reference(x)) / step
            approx_max = max(approx_max, float(deviation.max()))
            approx_means.append(float(deviation.mean()))
    if worst > tolerance_steps:
        raise VerificationError(
            f"FINN graph differs from the QONNX graph it was built from by {worst:.3g} output steps "
            f"(step {step:.3g}, tolerance {tolerance_steps})"
        )
    if approximation_tolerance_steps is not None and approx_max > approximation_tolerance_steps:
        raise VerificationError(
            f"integer weights ({extra_weight_bits} extra bits) move the output by up to {approx_max:.3g} "
            f"steps (tolerance {approximation_tolerance_steps}); use more extra_weight_bits"
        )
    _, partition = dataflow_partition(hw)
    partition = specialize(partition, fpga_part)
    if target_cycles is None:
        target_cycles = max(partition.analysis(_cycles).values())
    partition = fold(partition, target_cycles, mvau_wwidth_max)
    return FinnBuild(
        hw_model=hw, partition=partition, max_error_steps=worst, output_step=step,
        approximation_max_steps=approx_max, approximation_mean_steps=float(np.mean(approx_means)) if approx_means else 0.0,
        layers=hardware_layers(partition), estimate=estimates(partition, clock_ns, fpga_part),
    )


def _cycles(model) -> Dict[str, int]:
    from finn.analysis.fpgadataflow.exp_cycles_per_layer import exp_cycles_per_layer

    return exp_cycles_per_layer(model)


def hardware_layers(model) -> List[Dict[str, Any]]:
    """Per hardware layer: its type, data types (bits) and folding."""
    from qonnx.custom_op.registry import getCustomOp

    rows = []
    for node in model.graph.node:
        op = getCustomOp(node)
        row: Dict[str, Any] = {"name": node.name, "op": node.op_type}
        for attr in ("inputDataType", "weightDataType", "outputDataType", "PE", "SIMD", "MW", "MH"):
            try:
                row[attr] = op.get_nodeattr(attr)
            except Exception:
                continue
        rows.append(row)
    return rows


def export_finn(
    module,
    path: str,
    input_shape: Sequence[int],
    *,
    profile: Any = None,
    samples: Optional[Sequence[Any]] = None,
    verify_shape: Optional[Sequence[int]] = None,
    step: Optional[float] = None,
    snap: float = 1e-3,
    border: str = "map",
    tolerance_steps: float = 1.0,
    **build: Any,
) -> FinnBuild:
    """Pre-check, QONNX export (verified), then :func:`build_finn` (verified, estimated).

    Args:
        module: a frozen (or, with ``profile``, dynamic) DynaQuant transform such as ``g_a``.
        path: where the QONNX file goes (the FINN graph is saved beside it, ``*_finn.onnx``).
        input_shape: the shape the hardware is built for, e.g. ``(1, 3, 512, 768)``.
        samples: torch inputs to verify on; default: random ones (see ``default_samples``).
        verify_shape: verify on a smaller copy of the graph exported at this shape (Python
            execution of FINN layers is slow at full resolution); default: ``input_shape``.
        step, snap, border, tolerance_steps: see :func:`~.qonnx.export_qonnx` (``border="bias"``
            drops the output-sized correction maps at a measured cost at the borders).
        build: passed to :func:`build_finn` (``target_cycles``, ``clock_ns``, ...).

    Raises:
        FinnUnsupportedError: before anything is exported, naming every unmappable module.
    """
    import torch

    from .precheck import FinnUnsupportedError, check_finn, graph_precheck
    from .qonnx import default_samples, export_qonnx, frozen

    module = frozen(module, profile).eval()
    check_finn(module)
    verify_shape = tuple(verify_shape or input_shape)
    small_path = path if verify_shape == tuple(input_shape) else _sibling(path, "_verify")
    small = export_qonnx(module, small_path, verify_shape, samples=samples, step=step, snap=snap, border=border,
                         tolerance_steps=tolerance_steps)
    from qonnx.core.modelwrapper import ModelWrapper

    small_model = ModelWrapper(small_path)
    problems = graph_precheck(small_model)
    if problems:
        raise FinnUnsupportedError(problems)
    inputs = list(samples) if samples is not None else default_samples(small_model, verify_shape, count=2)

    def reference(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = module(torch.from_numpy(x))
        return (out.value if hasattr(out, "value") else out).numpy().astype(np.float64)

    checked = build_finn(small_model, reference=reference, samples=[x.numpy() for x in inputs],
                         step=small.output_step, **build)
    if small_path == path:
        result = checked
    else:
        export_qonnx(module, path, input_shape, step=small.output_step, snap=snap, border=border, verify=False)
        result = build_finn(path, step=small.output_step, **build)
        for name in ("max_error_steps", "approximation_max_steps", "approximation_mean_steps"):
            setattr(result, name, getattr(checked, name))
    result.hw_model.save(_sibling(path, "_finn"))
    return result


def _sibling(path: str, suffix: str) -> str:
    root, ext = os.path.splitext(str(path))
    return f"{root}{suffix}{ext or '.onnx'}"
