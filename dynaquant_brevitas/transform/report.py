"""Which widths a dynaquantized model chose over a set of images, and how much they vary.

A selector earns its place only if images get different profiles: the report gives, per layer,
the histogram of chosen (weight, activation) widths and the entropy of the choice, and per side
(encoder, decoder) the share of images whose profile differs from the most common one.

Example:
    >>> import torch
    >>> from compressai.models import ScaleHyperprior
    >>> from dynaquant_brevitas import DynaQuantConfig, calibrate, dynaquantize
    >>> model = dynaquantize(ScaleHyperprior(8, 12), DynaQuantConfig(candidate_bits=(4, 8)))
    >>> calibrate(model, [torch.rand(2, 3, 64, 64)])
    >>> report = bit_report(model, [torch.rand(3, 64, 64) for _ in range(3)])
    >>> len(report.per_image), sorted(report.diversity)
    (3, ['decoder', 'encoder'])
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from torch import Tensor, nn

from .adapters import DECODER, ENCODER
from .cost import average_bits, layer_macs, model_size_bytes
from .dynaquantize import dynaquant_state
from .profiles import chosen_bits

__all__ = ["BitReport", "bit_report", "choice_entropy", "diversity"]


def _key(pair: Sequence[int]) -> str:
    """``"8"`` for equal widths, ``"4/8"`` for 4-bit weights with 8-bit activations."""
    weight, activation = pair
    return str(weight) if weight == activation else f"{weight}/{activation}"


def choice_entropy(counts: Mapping[str, int]) -> float:
    """Entropy in bits of a layer's choices (0: every image the same).

    Example:
        >>> choice_entropy({"4": 2, "8": 2}), choice_entropy({"8": 5})
        (1.0, 0.0)
    """
    total = sum(counts.values())
    return -sum(c / total * math.log2(c / total) for c in counts.values() if c) + 0.0


def diversity(profiles: Sequence[Tuple]) -> float:
    """Share of images whose profile differs from the most common one (0: a static profile).

    Example:
        >>> diversity([(8, 6), (8, 6), (8, 8), (6, 6)])
        0.5
    """
    if not profiles:
        return 0.0
    _, most = Counter(profiles).most_common(1)[0]
    return 1.0 - most / len(profiles)


@dataclass
class BitReport:
    """Which widths a dynaquantized model chose over a set of images.

    Attributes:
        layers: dynamic layer names, encoder side first.
        sides: the layer names of each side.
        per_image: per image, the chosen ``[weight, activation]`` widths of every layer.
        histograms: per layer, ``{"w" or "w/a": count}`` over the images.
        entropy: per layer, the entropy of its choices in bits.
        diversity: per side, the share of images whose profile differs from the most common one.
        mean_bits: per layer, the mean chosen ``(weight, activation)`` widths.
        bits_per_param, avg_activation_bits, bits_bitops, bitops_ratio: model averages (fixed
            layers included) at the mean choice; see :mod:`~dynaquant_brevitas.transform.cost`.
        size_bytes: model size at the mean choice.
    """

    layers: List[str]
    sides: Dict[str, List[str]]
    per_image: List[List[List[int]]]
    histograms: Dict[str, Dict[str, int]]
    entropy: Dict[str, float]
    diversity: Dict[str, float]
    mean_bits: Dict[str, Tuple[float, float]]
    bits_per_param: float
    avg_activation_bits: float
    bits_bitops: float
    bitops_ratio: float
    size_bytes: int
    extra: Dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, object]:
        return asdict(self)


def bit_report(model: nn.Module, images: Iterable[Tensor], macs: Optional[Mapping[str, int]] = None) -> BitReport:
    """Run ``images`` (each ``(3, H, W)`` or ``(1, 3, H, W)``) and report the choices (see module doc)."""
    layers, rows = chosen_bits(model, images)
    if not rows:
        raise ValueError("bit_report needs at least one image and a model with dynamic layers")
    state = dynaquant_state(model)
    sides = {side: [n for n in state.layer_names[side] if n in layers] for side in (ENCODER, DECODER)}
    histograms = {name: dict(Counter(_key(row[i]) for row in rows)) for i, name in enumerate(layers)}
    mean_bits = {
        name: (sum(row[i][0] for row in rows) / len(rows), sum(row[i][1] for row in rows) / len(rows))
        for i, name in enumerate(layers)
    }
    index = {name: i for i, name in enumerate(layers)}
    macs = macs if macs is not None else layer_macs(model, (1, 3, 256, 256))
    return BitReport(
        layers=layers,
        sides=sides,
        per_image=[[list(pair) for pair in row] for row in rows],
        histograms=histograms,
        entropy={name: choice_entropy(h) for name, h in histograms.items()},
        diversity={
            side: diversity([tuple(row[index[n]] for n in names) for row in rows]) for side, names in sides.items()
        },
        mean_bits=mean_bits,
        size_bytes=model_size_bytes(model, mean_bits),
        **average_bits(model, macs, mean_bits),
    )
