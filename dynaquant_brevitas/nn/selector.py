"""The bit-width selector: per-image features in, one bit-width choice per layer out.

Features are pooled from the output of the first module of a transform: per-channel mean and
standard deviation (a cheap texture measure) and a ``pool x pool`` grid of the mean magnitude
(where in the image the energy is), layer-normalised so the MLP sees the same scale whatever the
codec's activations. A two-layer MLP turns them into logits of shape ``(N, layers, candidates)``. Training samples a hard choice
with the straight-through Gumbel-softmax; evaluation takes the argmax, so a decoder that sees the
same features makes the same choice and no bit widths are transmitted.

Example:
    >>> import torch
    >>> selector = BitSelector(channels=16, layers=3, candidates=(4, 6, 8)).eval()
    >>> selection = selector(torch.randn(2, 16, 32, 32))
    >>> selection.weights.shape, selection.probs.shape
    (torch.Size([2, 3, 3]), torch.Size([2, 3, 3]))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..registry import register_selector

__all__ = ["BitSelector", "Selection"]


@dataclass
class Selection:
    """A selector's decision for one batch.

    Attributes:
        probs: ``(N, L, K)`` softmax probabilities (what the bit loss takes the expectation over).
        weights: ``(N, L, K)`` one-hot selection, with straight-through gradients in training.
        candidates: the candidate bit widths.
    """

    probs: Tensor
    weights: Tensor
    candidates: Tuple

    def _table(self, part: Optional[int]) -> Tensor:
        pairs = [c if isinstance(c, (tuple, list)) else (c, c) for c in self.candidates]
        values = [(w * a) ** 0.5 if part is None else (w, a)[part] for w, a in pairs]
        return torch.tensor(values, dtype=self.probs.dtype, device=self.probs.device)

    @property
    def bits(self) -> Tensor:
        """``(N, L)`` chosen bit widths; for (weight, activation) pairs ``sqrt(w a)``, the width with
        the same BitOPs."""
        return self._table(None)[self.weights.argmax(dim=-1)]

    @property
    def weight_bits(self) -> Tensor:
        """``(N, L)`` chosen weight widths."""
        return self._table(0)[self.weights.argmax(dim=-1)]

    @property
    def activation_bits(self) -> Tensor:
        """``(N, L)`` chosen activation widths."""
        return self._table(1)[self.weights.argmax(dim=-1)]


@register_selector("mlp")
class BitSelector(nn.Module):
    """Pooled statistics -> MLP -> per-layer bit-width choice (see module docstring)."""

    def __init__(
        self,
        channels: int,
        layers: int,
        candidates: Sequence[int],
        hidden: int = 64,
        pool: int = 5,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        self.candidates = tuple(candidates)  # widths, or (weight, activation) pairs
        self.layers = int(layers)
        self.pool = int(pool)
        self.max_side = 64
        self.register_buffer("temperature", torch.tensor(1.0))
        features = self.features_dim = 2 * channels + pool * pool
        self.mlp = nn.Sequential(
            nn.Linear(features, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, self.layers * len(self.candidates)),
        )

    def features(self, x: Tensor) -> Tensor:
        """Per-channel mean and spread, and a ``pool x pool`` grid of the mean magnitude.

        ``2 C + pool^2`` numbers per image: compact, so the selector adds little to the model's
        size (a per-channel grid would need ``C pool^2`` inputs). The codec gets no gradient.

        Large feature maps are read with a stride so that at most about ``max_side`` pixels per
        side are pooled: statistics need no more, and the selector stays cheap on big images.
        """
        return self.embed(*self.statistics(x))

    def embed(self, mean: Tensor, spread: Tensor, energy: Tensor) -> Tensor:
        """The MLP's input from :meth:`statistics` (kept apart so statistics can be stored)."""
        return F.layer_norm(torch.cat([mean, spread, energy], dim=1), (self.features_dim,))

    def logits(self, features: Tensor) -> Tensor:
        """``(N, layers, candidates)`` logits from :meth:`features`."""
        return self.mlp(features).view(features.shape[0], self.layers, len(self.candidates))

    def statistics(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """``(mean, spread, energy)``: per-channel mean and standard deviation, and the
        ``pool x pool`` grid of the channel-averaged magnitude, from ``x`` read with a stride."""
        x = x.detach()
        stride = max(1, min(x.shape[-2:]) // self.max_side)
        if stride > 1:
            x = x[..., ::stride, ::stride].contiguous()
        flat = x.flatten(2)
        mean, spread = flat.mean(dim=2), flat.std(dim=2, unbiased=False)
        return mean, spread, F.adaptive_avg_pool2d(x.abs().mean(dim=1, keepdim=True), self.pool).flatten(1)

    @torch.no_grad()
    def start_at(self, choices: Sequence[int], margin: float) -> None:
        """Favour candidate ``choices[i]`` for layer ``i`` by ``margin`` in the output bias, so that a
        fresh selector starts near one profile (about ``e**margin`` times likelier than another
        candidate) and training moves it from there.

        Example:
            >>> selector = BitSelector(channels=4, layers=2, candidates=(4, 6, 8)).eval()
            >>> selector.start_at([2, 0], margin=20.0)
            >>> selector(torch.randn(1, 4, 16, 16)).weights.argmax(dim=-1).tolist()
            [[2, 0]]
        """
        if len(choices) != self.layers or not all(0 <= c < len(self.candidates) for c in choices):
            raise ValueError(f"start_at: one candidate index in [0, {len(self.candidates)}) per layer "
                             f"({self.layers}), got {list(choices)}")
        bias = self.mlp[-1].bias.view(self.layers, len(self.candidates))
        bias[torch.arange(self.layers), torch.as_tensor(list(choices))] += float(margin)

    def forward(self, x: Tensor) -> Selection:
        logits = self.logits(self.features(x))
        probs = logits.softmax(dim=-1)
        if self.training:
            weights = F.gumbel_softmax(logits, tau=float(self.temperature), hard=True, dim=-1)
        else:
            weights = F.one_hot(logits.argmax(dim=-1), len(self.candidates)).to(logits.dtype)
        return Selection(probs=probs, weights=weights, candidates=self.candidates)


@register_selector("scale-aware")
class ScaleAwareSelector(BitSelector):
    """The MLP selector with features that keep the amount of detail.

    :class:`BitSelector` layer-normalises each image's feature vector, which removes its overall
    scale: an image with little detail and one with a lot can give the same features, and the
    selector falls back to one profile for all. Here the spreads and the energy grid enter as
    logarithms, and the features are standardised with statistics gathered over the training
    images (a ``BatchNorm1d``: batch statistics in training, the running ones at inference, so
    encoder and decoder see the same numbers), not per image.

    Example:
        >>> selector = ScaleAwareSelector(channels=16, layers=3, candidates=(4, 6, 8)).eval()
        >>> flat, busy = torch.zeros(1, 16, 32, 32), torch.randn(1, 16, 32, 32)
        >>> bool((selector.features(flat) != selector.features(busy)).any())
        True
    """

    def __init__(self, channels: int, layers: int, candidates: Sequence, hidden: int = 64, pool: int = 5,
                 dropout: float = 0.2) -> None:
        super().__init__(channels, layers, candidates, hidden=hidden, pool=pool, dropout=dropout)
        self.norm = nn.BatchNorm1d(self.features_dim)

    def embed(self, mean: Tensor, spread: Tensor, energy: Tensor) -> Tensor:
        features = torch.cat([mean, torch.log(spread + 1e-4), torch.log(energy + 1e-4)], dim=1)
        if self.training and features.shape[0] == 1:
            return F.batch_norm(features, self.norm.running_mean, self.norm.running_var, self.norm.weight,
                                self.norm.bias, training=False, eps=self.norm.eps)
        return self.norm(features)
