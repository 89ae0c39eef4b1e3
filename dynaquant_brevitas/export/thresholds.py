"""Two exact FINN graph rewrites that fold neighbours of a ``MultiThreshold`` into its thresholds.

A ``MultiThreshold`` computes ``out_bias + sum_j [x >= T[c, j]]`` per channel ``c``.

* ``AbsorbClampIntoMultiThreshold``: an integer per-channel clamp ``Min(Max(out, lo), hi)``
  after it (left by zero-point folding when channels sit on different integer grids) is the
  same staircase with the lowest ``lo - out_bias`` thresholds moved to minus infinity and those
  from ``hi - out_bias`` on moved to plus infinity.
* ``AbsorbReluIntoMultiThreshold``: ``Relu`` before it only changes inputs below 0, which then
  reach every threshold at or below 0: those thresholds move to minus infinity.

"Infinity" is the largest finite float32, so the thresholds stay finite numbers.

Example:
    >>> import numpy as np
    >>> t = np.array([[-1.0, 0.0, 1.0, 2.0]])
    >>> clamp_thresholds(t, out_bias=0, lo=np.array([1]), hi=np.array([3])).tolist() == [[LOW, 0.0, 1.0, HIGH]]
    True
"""

from __future__ import annotations

from typing import Tuple

import numpy as np
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.custom_op.registry import getCustomOp
from qonnx.transformation.base import Transformation

__all__ = ["AbsorbClampIntoMultiThreshold", "AbsorbReluIntoMultiThreshold", "clamp_thresholds"]

LOW = float(np.finfo(np.float32).min)
HIGH = float(np.finfo(np.float32).max)


def clamp_thresholds(thresholds: np.ndarray, out_bias: float, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Thresholds whose staircase is clamped to ``[lo_c, hi_c]`` per channel."""
    t = np.array(thresholds, dtype=np.float32)
    channels = max(t.shape[0], lo.size, hi.size)
    t = np.broadcast_to(t, (channels, t.shape[1])).copy()
    lo = np.broadcast_to(lo.reshape(-1), (channels,))
    hi = np.broadcast_to(hi.reshape(-1), (channels,))
    index = np.arange(t.shape[1])
    t[index[None, :] < (lo - out_bias)[:, None]] = LOW
    t[index[None, :] >= (hi - out_bias)[:, None]] = HIGH
    return t


def _single_consumer(model: ModelWrapper, tensor: str):
    consumers = model.find_consumers(tensor) or []
    return consumers[0] if len(consumers) == 1 else None


def _integer_bound(model: ModelWrapper, node) -> np.ndarray:
    value = model.get_initializer(node.input[1])
    if value is None or not np.array_equal(value, np.round(value)):
        return None
    return value


class AbsorbClampIntoMultiThreshold(Transformation):
    """Fold ``MultiThreshold -> Max(lo) -> Min(hi)`` (integer, per channel) into the thresholds."""

    def apply(self, model: ModelWrapper) -> Tuple[ModelWrapper, bool]:
        for node in model.graph.node:
            if node.op_type != "MultiThreshold":
                continue
            op = getCustomOp(node)
            if op.get_nodeattr("out_scale") != 1.0:
                continue
            follower = _single_consumer(model, node.output[0])
            if follower is None or follower.op_type not in ("Max", "Min"):
                continue
            bound = _integer_bound(model, follower)
            if bound is None:
                continue
            thresholds = model.get_initializer(node.input[1])
            lo = bound if follower.op_type == "Max" else np.full(1, -np.inf)
            hi = bound if follower.op_type == "Min" else np.full(1, np.inf)
            bias = op.get_nodeattr("out_bias")
            model.set_initializer(node.input[1], clamp_thresholds(thresholds, bias, lo, hi))
            node.output[0] = follower.output[0]
            model.graph.node.remove(follower)
            return model, True
        return model, False


class AbsorbReluIntoMultiThreshold(Transformation):
    """Fold ``Relu -> MultiThreshold`` into the thresholds (thresholds <= 0 become minus infinity)."""

    def apply(self, model: ModelWrapper) -> Tuple[ModelWrapper, bool]:
        for node in model.graph.node:
            if node.op_type != "Relu":
                continue
            follower = _single_consumer(model, node.output[0])
            if follower is None or follower.op_type != "MultiThreshold":
                continue
            thresholds = np.array(model.get_initializer(follower.input[1]), dtype=np.float32)
            thresholds[thresholds <= 0] = LOW
            model.set_initializer(follower.input[1], thresholds)
            follower.input[0] = node.input[0]
            model.graph.node.remove(node)
            return model, True
        return model, False
