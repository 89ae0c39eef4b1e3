"""Real-bitstream evaluation of checkpoints on an image folder: bytes, quality, times, chosen bits.

Results follow CompressAI's ``eval_model`` JSON layout (``name``, ``description``, ``results``
with one list entry per checkpoint, i.e. per rate-distortion point) plus DynaQuant fields
(average chosen bits, optional per-image records with per-layer bit widths).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..io.checkpoint import load_any, model_from_checkpoint
from ..transform import profile_entry
from ..transform.report import choice_entropy, diversity
from ..io.images import list_images, read_image, to_uint8
from .coding import EvalError, decode_image, encode_image, last_choice, prepare_for_coding
from .metrics import ms_ssim, psnr

#: pytorch_msssim's 5 scales with an 11-px window need a side above this; smaller images get ``None``.
MS_SSIM_MIN_SIDE = 160
ZOO_PREFIX = "zoo:"


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
    bits = last_choice(model)
    if bits is not None:
        record["avg_bits"] = sum(bits["bits"]) / max(1, len(bits["bits"]))
        record["avg_weight_bits"] = sum(bits["weight_bits"]) / max(1, len(bits["weight_bits"]))
        record["layer_bits"] = bits["weight_bits"]
        record["layer_activation_bits"] = bits["activation_bits"]
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
    bits = last_choice(model)  # the dynamic layers' names (the same for every image)
    if bits is not None:
        summary["avg_bits"] = _mean(r["avg_bits"] for r in records)
        summary["avg_weight_bits"] = _mean(r["avg_weight_bits"] for r in records)
        summary["layers"] = bits["layers"]
        summary.update(choice_statistics(model, records))
    return {"summary": summary, "per_image": records}


def chosen_profiles(layers: Sequence[str], records: Sequence[dict[str, Any]]) -> tuple[dict | None, dict | None]:
    """``(mean, mode)`` profiles of per-image records (``layer_bits`` and ``layer_activation_bits``):
    per layer the mean ``(weight, activation)`` widths, and the most frequent pair (one number when
    equal); ``(None, None)`` without per-layer bits."""
    rows = [list(zip(r["layer_bits"], r.get("layer_activation_bits", r["layer_bits"]))) for r in records if "layer_bits" in r]
    if not layers or not rows:
        return None, None
    mean = {name: (sum(row[i][0] for row in rows) / len(rows), sum(row[i][1] for row in rows) / len(rows))
            for i, name in enumerate(layers)}
    mode = {name: profile_entry(*Counter(row[i] for row in rows).most_common(1)[0][0]) for i, name in enumerate(layers)}
    return mean, mode


def choice_statistics(model: nn.Module, records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """How the per-image choices vary: per side the share of images whose profile differs from
    the most common one (``diversity``), per layer the entropy of its choices in bits."""
    state = model.dynaquant
    layers = list(state.bits_record()["layers"]) if state.last else []
    pairs = [list(zip(r["layer_bits"], r["layer_activation_bits"])) for r in records]
    index = {name: i for i, name in enumerate(layers)}
    sides = {side: [index[n] for n in names if n in index] for side, names in state.layer_names.items()}
    histograms = {name: Counter(f"{row[i][0]}/{row[i][1]}" for row in pairs) for name, i in index.items()}
    return {
        "diversity": {side: diversity([tuple(row[i] for i in idx) for row in pairs]) for side, idx in sides.items() if idx},
        "entropy": {name: choice_entropy(h) for name, h in histograms.items()},
    }


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
