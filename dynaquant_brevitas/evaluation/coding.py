"""Coding one image for real: pad, ``compress``, ``decompress``, with checks on both sides.

Example:
    >>> from compressai.models import FactorizedPrior
    >>> model = prepare_for_coding(FactorizedPrior(8, 12))
    >>> x = torch.rand(1, 3, 70, 90)
    >>> coded = encode_image(model, x)
    >>> decode_image(model, coded.strings, coded.shape, (70, 90)).shape
    torch.Size([1, 3, 70, 90])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from compressai.ops import compute_padding
from torch import nn

from ..io.checkpoint import check_finite
from ..io.container import ContainerError, shape_leaves
from ..memory import PROBE_SIDE, activation_peak, available_memory

__all__ = ["PAD_MULTIPLE", "Coded", "EvalError", "check_coded", "decode_image", "encode_image", "last_choice", "prepare_for_coding"]

#: Images are padded to a multiple of this (6 stride-2 stages), as CompressAI's eval does.
PAD_MULTIPLE = 64


class EvalError(ValueError):
    """A model or image set cannot be evaluated (e.g. zoo weights unavailable offline)."""


def prepare_for_coding(model: nn.Module) -> nn.Module:
    """Eval mode and fresh entropy-coder tables (``model.update(force=True)``); returns the model.

    Refuses (:class:`~dynaquant_brevitas.checkpoint.CheckpointError`) weights holding NaN or inf.
    """
    check_finite(model)
    model.eval()
    model.update(force=True)
    return model


#: what ``compress`` reports and ``decompress`` takes back: the latent's spatial shape, or, for
#: models built on a CompressAI latent codec, one shape per named latent (``Cheng2020AnchorCheckerboard``:
#: ``{"y": [...], "hyper": [...]}``), or a list of shapes under a name (``Elic2022Official``: one per
#: channel group)
LatentShape = Union[list[int], dict[str, Any]]


def latent_shape(shape: Any) -> LatentShape:
    """``compress``'s ``shape`` as plain integers: a list, or dicts and lists of such lists.

    >>> latent_shape({"y": [torch.Size([4, 8, 8]), torch.Size([8, 8, 8])], "hyper": torch.Size([2, 2])})
    {'y': [[4, 8, 8], [8, 8, 8]], 'hyper': [2, 2]}
    """
    if isinstance(shape, dict):
        return {str(name): latent_shape(value) for name, value in shape.items()}
    if len(shape) and all(isinstance(s, (dict, list, tuple)) for s in shape):  # torch.Size is a tuple
        return [latent_shape(s) for s in shape]
    return [int(s) for s in shape]


def _torch_shape(shape: LatentShape) -> Any:
    if isinstance(shape, dict):
        return {name: _torch_shape(value) for name, value in shape.items()}
    if shape and all(isinstance(s, (dict, list)) for s in shape):
        return [_torch_shape(value) for value in shape]
    return torch.Size(shape)


@dataclass
class Coded:
    """One image's bitstreams and the latent shape ``decompress`` needs."""

    strings: list[list[bytes]]
    shape: LatentShape
    size: tuple[int, int]

    @property
    def num_bytes(self) -> int:
        return sum(len(s) for group in self.strings for s in group)


def _dynaquant_state(model: nn.Module) -> Any:
    return getattr(model, "dynaquant", None)


def check_input(x: torch.Tensor) -> None:
    """Raise :class:`EvalError` unless ``x`` is one finite ``(1, 3, H, W)`` image."""
    if x.dim() != 4 or x.shape[0] != 1 or x.shape[1] != 3:
        raise EvalError(f"expected one RGB image of shape (1, 3, H, W), got {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise EvalError("the input image holds NaN or inf values")


@torch.no_grad()
def encode_image(model: nn.Module, x: torch.Tensor) -> Coded:
    """Pad a ``(1, 3, H, W)`` image to a multiple of 64 and ``compress`` it.

    Refuses inputs and weights holding NaN or inf before coding anything.
    """
    check_input(x)
    check_finite(model)
    h, w = x.shape[-2:]
    pad, _ = compute_padding(h, w, min_div=PAD_MULTIPLE)
    state = _dynaquant_state(model)
    if state is not None:
        state.reset()
    out = model.compress(F.pad(x, pad, mode="constant", value=0))
    strings = [list(group) for group in out["strings"]]
    return Coded(strings, latent_shape(out["shape"]), (int(h), int(w)))


@torch.no_grad()
def decode_image(
    model: nn.Module, strings: Sequence[Sequence[bytes]], shape: LatentShape, size: tuple[int, int]
) -> torch.Tensor:
    """``decompress`` and crop back to ``size``; returns a ``(1, 3, H, W)`` image in [0, 1].

    Raises :class:`~dynaquant_brevitas.io.container.ContainerError` when the strings, latent shape
    and size cannot come from this model (checked before and after decoding), or when decoding
    that size would need more memory than the machine has (checked before allocating).
    """
    padded = _padded_size(size)
    check_coded(strings, shape, padded)
    check_plausible(model, strings, padded)
    tail = bytes(_rans_tail(strings, padded))
    try:
        out = model.decompress([[bytes(s) + tail for s in g] for g in strings], _torch_shape(shape))
    except (RuntimeError, ValueError, IndexError, KeyError, TypeError, AssertionError) as err:
        raise ContainerError(f"the bitstreams do not fit this model: {type(err).__name__}: {err}") from err
    x_hat = out["x_hat"]
    if tuple(x_hat.shape[-2:]) != padded:
        raise ContainerError(
            f"the bitstreams do not fit this model: latent shape {shape} decodes to "
            f"{tuple(x_hat.shape[-2:])}, the image needs {padded}"
        )
    if not bool(torch.isfinite(x_hat).all()):
        raise ContainerError("the bitstreams do not fit this model: they decode to NaN or infinite pixels")
    _, unpad = compute_padding(size[0], size[1], min_div=PAD_MULTIPLE)
    return F.pad(x_hat, unpad).clamp(0, 1)


#: Every rANS string ends with the coder's 8-byte state flush, so shorter ones are damaged.
RANS_MIN_BYTES = 8


def _padded_size(size: tuple[int, int]) -> tuple[int, int]:
    return tuple(-(-int(side) // PAD_MULTIPLE) * PAD_MULTIPLE for side in size)  # type: ignore[return-value]


def check_coded(strings: Sequence[Sequence[bytes]], shape: LatentShape, padded: tuple[int, int]) -> None:
    """Raise :class:`ContainerError` unless strings and latent shape fit one padded image.

    One string per group (one image), each at least :data:`RANS_MIN_BYTES` long, and a 2-d
    latent shape that divides the padded size by the same power of two along both sides (for
    structured shapes, the last two sides of each).
    """
    if not strings or any(len(g) != 1 for g in strings):
        raise ContainerError(f"expected one string per group for one image, got {[len(g) for g in strings]}")
    if min(len(s) for g in strings for s in g) < RANS_MIN_BYTES:
        raise ContainerError(f"damaged file: a bitstream is shorter than {RANS_MIN_BYTES} bytes")
    structured = not (isinstance(shape, list) and all(isinstance(s, int) for s in shape))
    leaves = shape_leaves(shape)
    if not leaves:
        raise ContainerError(f"latent shape {shape} holds no shape")
    for sides in leaves:
        sides = sides[-2:] if structured else sides
        ratios = {p / d for p, d in zip(padded, sides) if d > 0} if len(sides) == 2 else set()
        ratio = ratios.pop() if len(ratios) == 1 else 0.0
        if not (ratio >= 1 and ratio.is_integer() and int(ratio) & (int(ratio) - 1) == 0):
            raise ContainerError(f"latent shape {shape} does not fit an image padded to {padded}")


def check_plausible(model: nn.Module, strings: Sequence[Sequence[bytes]], padded: tuple[int, int]) -> None:
    """Raise :class:`ContainerError` if the strings are too short for an image of ``padded`` size,
    or decoding it would need more memory than is available; nothing large is allocated.

    The shortest strings a real image can code to: every entropy bottleneck (whose distributions do
    not depend on the image) spends at least ``-log2`` of its most likely symbol's probability on
    each of its symbols, so a crafted header claiming a large image over a few bytes is refused.
    """
    probe = _probe(model)  # a forward: the selection of the image just coded is kept (last_choice)
    scale = padded[0] * padded[1] / PROBE_PIXELS
    min_bytes = int(scale * probe.bottleneck_bits / 8) - 16 * sum(len(g) for g in strings)
    have = sum(len(s) for g in strings for s in g)
    if have < min_bytes:
        raise ContainerError(
            f"implausible file: a {padded[1]}x{padded[0]} image codes to at least {min_bytes} bytes of "
            f"bitstreams with this model, the file holds {have}"
        )
    need, available = int(scale * probe.peak_bytes * DECODE_MEMORY_FACTOR), available_memory()
    if available is not None and need > available:
        raise ContainerError(
            f"decoding a {padded[1]}x{padded[0]} image needs about {need / 2**30:.1f} GiB, "
            f"{available / 2**30:.1f} GiB are available"
        )


#: pixels of the probe image
PROBE_PIXELS = PROBE_SIDE * PROBE_SIDE
#: a decode's peak memory over the largest activation (input plus output of one module) of the
#: probe forward, scaled by area: 1.5 leaves room for the tensors kept alive beside it (measured:
#: ScaleHyperprior(64, 96) decodes 4096x4096 with 0.8 GB, the estimate says 3 GB)
DECODE_MEMORY_FACTOR = 1.5


@dataclass(frozen=True)
class _Probe:
    bottleneck_bits: float  # least bits the entropy bottlenecks spend on a PROBE_SIDE image
    peak_bytes: int  # largest activation (plus input) of any module on a PROBE_SIDE image


def _probe(model: nn.Module) -> _Probe:
    """No-grad forwards of a ``PROBE_SIDE`` gray image: the entropy bottlenecks' symbol counts and
    the largest activation, from which both bounds scale with the image area."""
    from compressai.entropy_models import EntropyBottleneck

    symbols: dict[int, int] = {}

    def count(module: nn.Module, inputs: tuple, output: Any) -> None:
        symbols[id(module)] = inputs[0][0, 0].numel()  # per channel

    bottlenecks = [m for m in model.modules() if isinstance(m, EntropyBottleneck)]
    handles = [m.register_forward_hook(count) for m in bottlenecks]
    try:
        if _dynaquant_state(model) is None:
            peak = activation_peak(model, PROBE_SIDE)
        else:
            from ..transform.profiles import selection_set_aside

            with selection_set_aside(model):
                peak = activation_peak(model, PROBE_SIDE)
    finally:
        for handle in handles:
            handle.remove()
    bits = sum(symbols.get(id(m), 0) * _min_bits_per_channel(m) for m in bottlenecks)
    return _Probe(bits, peak)


def _min_bits_per_channel(bottleneck: nn.Module) -> float:
    """Sum over channels of ``-log2`` of the most likely symbol's probability (16-bit CDFs)."""
    cdf, lengths = bottleneck._quantized_cdf, bottleneck._cdf_length
    if cdf.numel() == 0:
        return 0.0
    total = 0.0
    for row, length in zip(cdf, lengths.tolist()):
        largest = int(torch.diff(row[:length]).max()) if length > 1 else 1 << 16
        total += -math.log2(max(1, largest) / (1 << 16))
    return total


def _rans_tail(strings: Sequence[Sequence[bytes]], padded: tuple[int, int]) -> int:
    """Zero bytes appended to every string before decoding.

    CompressAI's rANS decoder reads its input without bounds checks, so a file whose strings are
    too short for its latent shape (only possible with a recomputed CRC) would make it read
    past the end; the tail covers one 32-bit word for up to 1.25 symbols per pixel (320 latent
    channels at stride 16) and the bypass codes of a string's own bytes. Valid strings decode
    the same with or without it.
    """
    longest = max(len(s) for g in strings for s in g)
    return 5 * padded[0] * padded[1] + 16 * longest


def last_choice(model: nn.Module) -> dict[str, Any] | None:
    """Per-layer widths chosen for the last image coded: ``weight_bits``, ``activation_bits`` and
    ``bits`` (``sqrt(w a)``) per layer in ``layers`` order (``None`` if the model is not dynamic)."""
    state = _dynaquant_state(model)
    if state is None or not getattr(state, "last", None):
        return None
    record = state.bits_record()
    return {
        "layers": list(record["layers"]),
        "bits": [float(b) for b in record["bits"][0].tolist()],
        "weight_bits": [int(b) for b in record["weight_bits"][0].tolist()],
        "activation_bits": [int(b) for b in record["activation_bits"][0].tolist()],
    }
