"""Memory checks made before large allocations: what is available, and what a forward needs.

Imports nothing of the package (base layer), so every layer can check before it allocates.

Example:
    >>> import torch
    >>> peak = activation_peak(torch.nn.Conv2d(3, 8, 3, padding=1))
    >>> peak == (3 + 8) * 64 * 64 * 4        # input plus output of the probe, float32
    True
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

__all__ = ["PROBE_SIDE", "activation_peak", "available_memory"]

#: side of the probe image :func:`activation_peak` runs
PROBE_SIDE = 64


def available_memory() -> Optional[int]:
    """Bytes of memory available (Linux ``MemAvailable``), or ``None`` where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


@torch.no_grad()
def activation_peak(model: nn.Module, side: int = PROBE_SIDE) -> int:
    """Bytes of the largest input plus output of one submodule (or of ``model`` itself when it has
    none) in a forward of a ``side`` x ``side`` gray image; it scales with the image area."""
    peak = [0]

    def size_of(module: nn.Module, inputs: tuple, output: object) -> None:
        tensors = [t for t in (*inputs, output) if isinstance(t, torch.Tensor)]
        peak[0] = max(peak[0], sum(t.numel() * t.element_size() for t in tensors))

    children = [m for m in model.modules() if m is not model] or [model]
    handles = [m.register_forward_hook(size_of) for m in children]
    try:
        first = next(model.parameters())
        model(torch.full((1, 3, side, side), 0.5, dtype=first.dtype, device=first.device))
    finally:
        for handle in handles:
            handle.remove()
    return peak[0]
