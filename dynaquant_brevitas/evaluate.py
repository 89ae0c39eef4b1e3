"""Real-bitstream evaluation: pad, ``compress``, ``decompress``, count bytes, measure quality.

Results follow CompressAI's ``eval_model`` JSON layout (``name``, ``description``, ``results``
with one list entry per checkpoint, i.e. per rate-distortion point) plus DynaQuant fields
(average chosen bits, optional per-image records with per-layer bit widths).

Example:
    >>> from compressai.models import FactorizedPrior
    >>> model = prepare_for_coding(FactorizedPrior(8, 12))
    >>> x = torch.rand(1, 3, 70, 90)
    >>> coded = encode_image(model, x)
    >>> decode_image(model, coded.strings, coded.shape, (70, 90)).shape
    torch.Size([1, 3, 70, 90])
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from compressai.ops import compute_padding
from torch import nn

from .checkpoint import check_finite, load_any, model_from_checkpoint
from .container import ContainerError
from .data import list_images, read_image, to_uint8
from .metrics import ms_ssim, psnr

#: pytorch_msssim's 5 scales with an 11-px window need a side above this; smaller images get ``None``.
MS_SSIM_MIN_SIDE = 160
#: Images are padded to a multiple of this (6 stride-2 stages), as CompressAI's eval does.
PAD_MULTIPLE = 64
ZOO_PREFIX = "zoo:"


class EvalError(ValueError):
    """A model or image set cannot be evaluated (e.g. zoo weights unavailable offline)."""


@dataclass
class LoadedModel:
    """A model ready for coding and where it came from."""

    model: nn.Module
    name: str
    spec: str
    info: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- loading


def parse_zoo_spec(spec: str) -> tuple[str, int, str]:
    """``zoo:NAME:QUALITY[:METRIC]`` -> ``(NAME, QUALITY, METRIC)``.

    >>> parse_zoo_spec("zoo:bmshj2018-hyperprior:3")
    ('bmshj2018-hyperprior', 3, 'mse')
    """
    parts = spec[len(ZOO_PREFIX) :].split(":")
    if len(parts) not in (2, 3) or not parts[1].isdigit():
        raise EvalError(f"zoo model must be zoo:NAME:QUALITY[:METRIC], got {spec!r}")
    return parts[0], int(parts[1]), parts[2] if len(parts) == 3 else "mse"


def load_zoo(spec: str) -> LoadedModel:
    """A pretrained CompressAI zoo model (downloads its weights: needs the internet)."""
    from compressai.zoo import image_models

    name, quality, metric = parse_zoo_spec(spec)
    if name not in image_models:
        raise EvalError(f"unknown zoo model {name!r}; known: {', '.join(sorted(image_models))}")
    try:
        model = image_models[name](quality=quality, metric=metric, pretrained=True, progress=False)
    except (ValueError, KeyError) as err:
        raise EvalError(f"zoo model {name} has no quality {quality} / metric {metric!r}: {err}") from err
    except OSError as err:  # urllib's URLError is an OSError
        raise EvalError(
            f"could not download CompressAI's pretrained weights for {name} quality {quality} "
            f"({type(err).__name__}: {err}); this needs internet access, or put the file in "
            f"torch's hub cache ({torch.hub.get_dir()}/checkpoints)"
        ) from err
    return LoadedModel(
        model, f"{name}-{metric}-q{quality}", spec, {"zoo": name, "quality": quality, "metric": metric}
    )


def load_for_eval(spec: str | os.PathLike, arch: str | None = None) -> LoadedModel:
    """A checkpoint path or a ``zoo:NAME:QUALITY[:METRIC]`` spec, as a model ready for coding.

    A path may also hold a CompressAI state dict (see :func:`~dynaquant_brevitas.checkpoint.load_any`);
    ``arch`` names its architecture when it cannot be inferred.
    """
    spec = str(spec)
    if spec.startswith(ZOO_PREFIX):
        loaded = load_zoo(spec)
    else:
        ckpt = load_any(spec, arch)
        info = {
            "arch": ckpt["arch"],
            "model_kwargs": ckpt["model_kwargs"],
            "step": ckpt.get("step"),
            "dynaquant": ckpt.get("dynaquant"),
        }
        loaded = LoadedModel(model_from_checkpoint(ckpt, spec), Path(spec).stem, spec, info)
    prepare_for_coding(loaded.model)
    return loaded


def prepare_for_coding(model: nn.Module) -> nn.Module:
    """Eval mode and fresh entropy-coder tables (``model.update(force=True)``); returns the model.

    Refuses (:class:`~dynaquant_brevitas.checkpoint.CheckpointError`) weights holding NaN or inf.
    """
    check_finite(model)
    model.eval()
    model.update(force=True)
    return model


# --------------------------------------------------------------------------- coding


@dataclass
class Coded:
    """One image's bitstreams and the latent shape ``decompress`` needs."""

    strings: list[list[bytes]]
    shape: list[int]
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
    return Coded(strings, [int(s) for s in out["shape"]], (int(h), int(w)))


@torch.no_grad()
def decode_image(
    model: nn.Module, strings: Sequence[Sequence[bytes]], shape: Sequence[int], size: tuple[int, int]
) -> torch.Tensor:
    """``decompress`` and crop back to ``size``; returns a ``(1, 3, H, W)`` image in [0, 1].

    Raises :class:`~dynaquant_brevitas.container.ContainerError` when the strings, latent shape
    and size cannot come from this model (checked before and after decoding).
    """
    padded = _padded_size(size)
    check_coded(strings, shape, padded)
    tail = bytes(_rans_tail(strings, padded))
    try:
        out = model.decompress([[bytes(s) + tail for s in g] for g in strings], torch.Size(shape))
    except (RuntimeError, ValueError, IndexError, KeyError, TypeError, AssertionError) as err:
        raise ContainerError(f"the bitstreams do not fit this model: {type(err).__name__}: {err}") from err
    x_hat = out["x_hat"]
    if tuple(x_hat.shape[-2:]) != padded or not bool(torch.isfinite(x_hat).all()):
        raise ContainerError(
            f"the bitstreams do not fit this model: latent shape {list(shape)} decodes to "
            f"{tuple(x_hat.shape[-2:])}, the image needs {padded}"
        )
    _, unpad = compute_padding(size[0], size[1], min_div=PAD_MULTIPLE)
    return F.pad(x_hat, unpad).clamp(0, 1)


#: Every rANS string ends with the coder's 8-byte state flush, so shorter ones are damaged.
RANS_MIN_BYTES = 8


def _padded_size(size: tuple[int, int]) -> tuple[int, int]:
    return tuple(-(-int(side) // PAD_MULTIPLE) * PAD_MULTIPLE for side in size)  # type: ignore[return-value]


def check_coded(strings: Sequence[Sequence[bytes]], shape: Sequence[int], padded: tuple[int, int]) -> None:
    """Raise :class:`ContainerError` unless strings and latent shape fit one padded image.

    One string per group (one image), each at least :data:`RANS_MIN_BYTES` long, and a 2-d
    latent shape that divides the padded size by the same power of two along both sides.
    """
    if not strings or any(len(g) != 1 for g in strings):
        raise ContainerError(f"expected one string per group for one image, got {[len(g) for g in strings]}")
    if min(len(s) for g in strings for s in g) < RANS_MIN_BYTES:
        raise ContainerError(f"damaged file: a bitstream is shorter than {RANS_MIN_BYTES} bytes")
    ratios = {p / d for p, d in zip(padded, shape)} if len(shape) == 2 else set()
    ratio = ratios.pop() if len(ratios) == 1 else 0.0
    if not (ratio >= 1 and ratio.is_integer() and int(ratio) & (int(ratio) - 1) == 0):
        raise ContainerError(f"latent shape {list(shape)} does not fit an image padded to {padded}")


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


def chosen_bits(model: nn.Module) -> dict[str, Any] | None:
    """Per-layer bit widths chosen in the last ``compress`` + ``decompress`` (None if not dynamic)."""
    state = _dynaquant_state(model)
    if state is None or not getattr(state, "last", None):
        return None
    record = state.bits_record()
    return {"layers": list(record["layers"]), "bits": [int(b) for b in record["bits"][0].tolist()]}


# --------------------------------------------------------------------------- evaluation


def _now(device: torch.device) -> float:
    """Wall-clock time after the device has finished its queued work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def evaluate_image(
    model: nn.Module, path: str | os.PathLike, device: torch.device | str = "cpu"
) -> dict[str, Any]:
    """Code one image for real and measure it; quality is computed on the 8-bit decoded image."""
    x = read_image(path).to(device)
    start = _now(x.device)
    coded = encode_image(model, x)
    enc_time = _now(x.device) - start
    start = _now(x.device)
    x_hat = decode_image(model, coded.strings, coded.shape, coded.size)
    dec_time = _now(x.device) - start
    rec = to_uint8(x_hat).float() / 255.0
    h, w = coded.size
    record = {
        "image": Path(path).name,
        "bpp": 8.0 * coded.num_bytes / (h * w),
        "bytes": coded.num_bytes,
        "psnr-rgb": psnr(x, rec),
        "ms-ssim-rgb": ms_ssim(x, rec) if min(h, w) > MS_SSIM_MIN_SIDE else None,
        "encoding_time": enc_time,
        "decoding_time": dec_time,
    }
    bits = chosen_bits(model)
    if bits is not None:
        record["avg_bits"] = sum(bits["bits"]) / max(1, len(bits["bits"]))
        record["layer_bits"] = bits["bits"]
    return record


SUMMARY_KEYS = ("psnr-rgb", "ms-ssim-rgb", "bpp", "encoding_time", "decoding_time")


def _mean(values: Iterable[float | None]) -> float | None:
    """Mean of the values that are not ``None`` (``None`` if there are none)."""
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def evaluate_model(
    loaded: LoadedModel, images: Sequence[Path], device: str = "cpu", progress: bool = False
) -> dict[str, Any]:
    """Evaluate one model on every image; returns means and per-image records."""
    from tqdm import tqdm

    model = loaded.model.to(device)
    with tqdm(images, desc=loaded.name, disable=not progress) as bar:  # closed before any error prints
        records = [evaluate_image(model, p, device) for p in bar]
    summary: dict[str, Any] = {k: _mean(r[k] for r in records) for k in SUMMARY_KEYS}
    bits = chosen_bits(model)  # the dynamic layers' names (the same for every image)
    if bits is not None:
        summary["avg_bits"] = _mean(r["avg_bits"] for r in records)
        summary["layers"] = bits["layers"]
    return {"summary": summary, "per_image": records}


def evaluate(
    specs: Sequence[str],
    image_dir: str | os.PathLike,
    name: str | None = None,
    description: str = "",
    per_image: bool = False,
    device: str = "cpu",
    progress: bool = False,
    arch: str | None = None,
) -> dict[str, Any]:
    """Evaluate checkpoints (one rate-distortion point each) in CompressAI's result format.

    ``results`` holds CompressAI's lists (one entry per checkpoint) and, for DynaQuant models,
    ``avg_bits``; ``models`` describes each checkpoint; with ``per_image`` each model entry
    also lists every image's bpp, quality, times and (dynamic models) per-layer bits. ``arch``
    names the architecture of checkpoints that are bare CompressAI state dicts.
    """
    images = list_images(image_dir)
    results: dict[str, list[Any]] = {k: [] for k in SUMMARY_KEYS}
    models = []
    for spec in specs:
        loaded = load_for_eval(spec, arch)
        ev = evaluate_model(loaded, images, device, progress)
        for k in SUMMARY_KEYS:
            results[k].append(ev["summary"][k])
        # one entry per checkpoint, None for float ones, so the lists stay aligned
        results.setdefault("avg_bits", []).append(ev["summary"].get("avg_bits"))
        entry = {"checkpoint": loaded.spec, **loaded.info}
        if "layers" in ev["summary"]:
            entry["layers"] = ev["summary"]["layers"]
        if per_image:
            entry["per_image"] = ev["per_image"]
        models.append(entry)
    if not any(b is not None for b in results["avg_bits"]):
        del results["avg_bits"]
    return {
        "name": name or Path(str(specs[0])).stem,
        "description": description or f"dynaquant eval, real bitstreams, {device}",
        "results": results,
        "images": str(image_dir),
        "num_images": len(images),
        "models": models,
    }
