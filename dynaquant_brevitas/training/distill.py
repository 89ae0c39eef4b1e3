"""Distillation from the float model during quantization-aware training (``quant.distill``).

Each transform of the quantized student is compared with the float teacher's on the same input:
the analysis transform on the image (the squared error of the latent, in quantization steps of
the latent) and the synthesis transform on the student's own decoded latent (the error of the
reconstruction, in the units of the distortion term, times lambda). The rate-distortion loss sees
what quantizing a transform changes only through the noisy end result; these two terms show it
per transform.

Example:
    >>> import copy, torch
    >>> from compressai.models import ScaleHyperprior
    >>> teacher = ScaleHyperprior(8, 12)
    >>> student = copy.deepcopy(teacher)
    >>> distiller = Distiller(teacher)
    >>> x = torch.rand(1, 3, 64, 64)
    >>> with distiller.watch(student) as seen:
    ...     _ = student(x)
    >>> terms = distiller.terms(x, seen, lmbda=0.01)
    >>> round(float(terms["distill_analysis"]), 6)   # the same weights give the same latent
    0.0
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from ..io.checkpoint import unwrap
from .loss import distortion

__all__ = ["Distiller"]


class Distiller:
    """The float ``teacher`` (frozen) and how to compare a student with it.

    ``analysis`` and ``synthesis`` name the transforms (``DynaQuantConfig.analysis`` and
    ``synthesis``: ``g_a`` and ``g_s`` in CompressAI's models).
    """

    def __init__(self, teacher: nn.Module, analysis: str = "g_a", synthesis: str = "g_s") -> None:
        for name in (analysis, synthesis):
            if not isinstance(getattr(teacher, name, None), nn.Module):
                raise ValueError(f"distillation: the float model has no transform {name!r}")
        self.teacher = teacher.eval().requires_grad_(False)
        self.analysis, self.synthesis = analysis, synthesis

    @contextmanager
    def watch(self, student: nn.Module) -> Iterator[dict[str, Any]]:
        """Record the student's latent, decoded latent and reconstruction while the block runs."""
        seen: dict[str, Any] = {}
        model = unwrap(student)

        def analysis_hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            seen["latent"] = output

        def synthesis_hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            seen["decoded"], seen["reconstruction"] = inputs[0], output

        handles = [getattr(model, self.analysis).register_forward_hook(analysis_hook),
                   getattr(model, self.synthesis).register_forward_hook(synthesis_hook)]
        try:
            yield seen
        finally:
            for handle in handles:
                handle.remove()

    def terms(self, x: torch.Tensor, seen: dict[str, Any], lmbda: float, metric: str = "mse") -> dict[str, torch.Tensor]:
        """``distill_analysis`` and ``distill_synthesis`` of what :meth:`watch` recorded on ``x``."""
        if not {"latent", "decoded", "reconstruction"} <= set(seen):
            raise RuntimeError("distillation: the student's forward did not run both transforms")
        with torch.no_grad():
            latent = getattr(self.teacher, self.analysis)(x)
            reconstruction = getattr(self.teacher, self.synthesis)(seen["decoded"].detach())
        return {
            "distill_analysis": torch.mean((seen["latent"] - latent) ** 2),
            "distill_synthesis": lmbda * distortion(seen["reconstruction"], reconstruction, metric),
        }
