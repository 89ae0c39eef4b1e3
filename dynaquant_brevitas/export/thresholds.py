"""An exact FINN graph rewrite: fold a ``Relu`` into the ``MultiThreshold`` that follows it.

A ``MultiThreshold`` computes ``out_bias + sum_j [x >= T[c, j]]`` per channel ``c``. A ``Relu``
before it only changes inputs below 0, and those (like 0 itself) reach every threshold at or
below 0 and no other: moving the thresholds ``<= 0`` to minus infinity gives the same function
without the ``Relu``. "Minus infinity" is the lowest finite float32, so thresholds stay finite.

Example:
    >>> import numpy as np
    >>> x = np.linspace(-3, 3, 61)
    >>> t = np.array([-1.0, 0.0, 0.5, 2.0])
    >>> staircase = lambda v, th: (v[:, None] >= th[None, :]).sum(1)
    >>> bool((staircase(np.maximum(x, 0), t) == staircase(x, relu_thresholds(t))).all())
    True
"""

from __future__ import annotations

from typing import Tuple

import numpy as np
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.transformation.base import Transformation

__all__ = ["AbsorbReluIntoMultiThreshold", "relu_thresholds"]

LOW = float(np.finfo(np.float32).min)


def relu_thresholds(thresholds: np.ndarray) -> np.ndarray:
    """Thresholds of ``MultiThreshold(Relu(x))`` as a function of ``x``."""
    out = np.array(thresholds, dtype=np.float32)
    out[out <= 0] = LOW
    return out


class AbsorbReluIntoMultiThreshold(Transformation):
    """Remove ``Relu -> MultiThreshold`` pairs' ``Relu`` (see the module docstring)."""

    def apply(self, model: ModelWrapper) -> Tuple[ModelWrapper, bool]:
        for node in model.graph.node:
            if node.op_type != "Relu":
                continue
            consumers = model.find_consumers(node.output[0]) or []
            if len(consumers) != 1 or consumers[0].op_type != "MultiThreshold":
                continue
            follower = consumers[0]
            model.set_initializer(follower.input[1], relu_thresholds(model.get_initializer(follower.input[1])))
            follower.input[0] = node.input[0]
            model.graph.node.remove(node)
            return model, True
        return model, False
