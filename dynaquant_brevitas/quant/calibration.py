"""Calibration: initialise activation ranges and offsets from data, NNCF-style.

Example:
    >>> import torch
    >>> from brevitas.nn import QuantConv2d
    >>> from dynaquant_brevitas import DynaActQuant, DynaWeightQuant
    >>> conv = QuantConv2d(3, 4, 1, weight_quant=DynaWeightQuant, input_quant=DynaActQuant)
    >>> calibrate(conv, [torch.randn(4, 3, 8, 8) for _ in range(3)])
    >>> quant = conv.input_quant.fused_activation_quant_proxy.tensor_quant
    >>> quant.range.shape, quant.observed_batches.item() >= quant.calibration_batches
    (torch.Size([3]), True)
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterable, Iterator, List, Optional

import torch
from torch import Tensor, nn

from .tensor_quant import ContentAwareIntQuant

__all__ = ["activation_quantizers", "calibrate", "quantization_disabled"]


def activation_quantizers(model: nn.Module) -> List[ContentAwareIntQuant]:
    """Every content-aware activation quantizer in ``model``."""
    return [m for m in model.modules() if isinstance(m, ContentAwareIntQuant) and not m.is_weight]


def _as_batch(sample: Any) -> Tensor:
    if isinstance(sample, (list, tuple)):
        sample = sample[0]
    if isinstance(sample, dict):
        raise TypeError("calibration samples must be tensors or (tensor, ...) tuples, got a dict")
    if not isinstance(sample, Tensor):
        raise TypeError(f"calibration samples must be tensors, got {type(sample).__name__}")
    return sample if sample.dim() == 4 else sample.unsqueeze(0)


@torch.no_grad()
def calibrate(model: nn.Module, samples: Iterable[Any], max_batches: Optional[int] = None) -> None:
    """Run ``samples`` through ``model`` in float and set every activation quantizer from them.

    Activations pass through unquantized while statistics are gathered (as in Brevitas's
    calibration mode), so each quantizer sees what the float model produces. Afterwards the
    quantizers no longer re-calibrate on their first training batches. Call it before building
    optimizers or wrapping the model in DistributedDataParallel.

    Args:
        model: any module holding DynaQuant activation quantizers.
        samples: an iterable of image batches ``(N, C, H, W)`` (or ``(tensor, ...)`` tuples).
        max_batches: stop after this many batches.
    """
    quantizers = activation_quantizers(model)
    if not quantizers:
        return
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    for q in quantizers:
        q.collecting = True
        q.observed_batches.zero_()
    seen = 0
    try:
        for seen, sample in enumerate(samples, start=1):
            model(_as_batch(sample).to(device))
            if max_batches is not None and seen >= max_batches:
                break
    finally:
        for q in quantizers:
            q.collecting = False
            q.observed_batches.clamp_(min=q.calibration_batches)
        model.train(was_training)
    if seen == 0:
        raise ValueError("calibrate() got no samples")


@contextmanager
def quantization_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` in float inside the block (Brevitas's ``disable_quant`` on every proxy).

    Example:
        >>> from brevitas.nn import QuantConv2d
        >>> conv = QuantConv2d(3, 4, 1)
        >>> with quantization_disabled(conv):
        ...     conv.weight_quant.is_quant_enabled
        False
    """
    proxies = [m for m in model.modules() if hasattr(m, "disable_quant") and hasattr(m, "tensor_quant")]
    previous = [p.disable_quant for p in proxies]
    for proxy in proxies:
        proxy.disable_quant = True
    try:
        yield model
    finally:
        for proxy, state in zip(proxies, previous):
            proxy.disable_quant = state
