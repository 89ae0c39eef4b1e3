"""Classic codecs (JPEG, WebP through Pillow) on the same images, as reference curves.

Published curves (CompressAI's ``jpeg.json``) average over a whole dataset; on a subset of it,
or on other images, only a curve measured on the same images compares. This codes each image
in memory at each quality and returns CompressAI's result format (bpp and PSNR averaged over the
images, one entry per quality), which :func:`~dynaquant_brevitas.evaluation.plot.plot_rd` and
:func:`~dynaquant_brevitas.evaluation.metrics.bd_rate` take.

Example:
    >>> import tempfile
    >>> from PIL import Image
    >>> folder = tempfile.mkdtemp()
    >>> Image.new("RGB", (64, 48), (200, 30, 30)).save(folder + "/red.png")
    >>> result = classic_curve(folder, "jpeg", qualities=(50, 90))
    >>> result["name"], len(result["results"]["bpp"]), result["results"]["psnr-rgb"][1] > 30
    ('JPEG', 2, True)
"""

from __future__ import annotations

import io
import math
import os
from typing import Any, Dict, Sequence

import numpy as np
from PIL import Image

from ..io.images import list_images

__all__ = ["CODECS", "classic_curve"]

#: codec name -> (Pillow format, save options)
CODECS: Dict[str, tuple] = {"jpeg": ("JPEG", {}), "webp": ("WEBP", {"method": 6})}
DEFAULT_QUALITIES = (10, 20, 30, 40, 50, 60, 70, 80, 90)


def _code(image: Image.Image, codec: str, quality: int) -> tuple:
    fmt, options = CODECS[codec]
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, quality=int(quality), **options)
    with Image.open(io.BytesIO(buffer.getvalue())) as decoded:
        return buffer.tell() * 8, np.asarray(decoded.convert("RGB"), dtype=np.float64)


def classic_curve(folder: str | os.PathLike, codec: str, qualities: Sequence[int] = DEFAULT_QUALITIES) -> Dict[str, Any]:
    """``codec`` (``"jpeg"`` or ``"webp"``) on every image of ``folder`` at each quality."""
    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r}; choose from {sorted(CODECS)}")
    images = []
    for path in list_images(folder):
        with Image.open(path) as img:
            images.append(img.convert("RGB"))
    bpp, psnr = [], []
    for quality in qualities:
        rates, quals = [], []
        for image in images:
            bits, decoded = _code(image, codec, quality)
            mse = float(np.mean((decoded - np.asarray(image, dtype=np.float64)) ** 2))
            rates.append(bits / (image.width * image.height))
            quals.append(10 * math.log10(255.0**2 / max(mse, 1e-10)))
        bpp.append(sum(rates) / len(rates))
        psnr.append(sum(quals) / len(quals))
    return {"name": CODECS[codec][0], "description": f"Pillow {CODECS[codec][0]}, qualities {list(qualities)}",
            "results": {"bpp": bpp, "psnr-rgb": psnr}, "images": str(folder), "num_images": len(images)}
