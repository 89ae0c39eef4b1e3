"""Evaluation sets written from packages already installed (no download): the benchmarks' and the demo's.

* ``photos2``: photographs never used for training or calibration, a second test set beside
  Kodak: scikit-image's sample photographs and matplotlib's ``grace_hopper.jpg``, grayscale ones
  replicated to RGB, stored as PNG at their own sizes (the evaluation pads to a multiple of 64).
  Every image is compared with the training folder; one that is already there (scikit-image's
  ``cat`` *is* ``train/skimage_chelsea.png``) is left out, and the manifest says why;
* ``unusual``: content the training photographs do not cover, synthetic and seeded (smooth
  gradients, a saturated colour wheel and colour sweeps, rendered text, screen-like content,
  noise, a very dark and a very bright photograph), 512 x 512 by default.

Each writer returns the PNG paths and writes ``MANIFEST.json`` beside them (source, licence, size,
and what was left out). Sources and licences are also listed in ``docs/benchmarks.md``.

From the command line: ``python benchmarks/datasets.py photos2|unusual FOLDER``.

Example:
    >>> import tempfile
    >>> [p.name for p in unusual(tempfile.mkdtemp(), size=64)][:3]
    ['gradients.png', 'colour_wheel.png', 'colour_sweeps.png']
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from ..io.images import IMAGE_SUFFIXES

# --------------------------------------------------------------------------- photos2


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from skimage import data

        image = getattr(data, name)()
        return image[0] if isinstance(image, tuple) else image  # stereo pairs: the left view

    return load


def _grace_hopper() -> np.ndarray:
    from matplotlib import cbook
    from PIL import Image

    with cbook.get_sample_data("grace_hopper.jpg") as f, Image.open(f) as img:
        return np.asarray(img.convert("RGB"))


#: name -> (loader, source, licence). Grayscale photographs are replicated to three channels.
PHOTOS2: Dict[str, Dict[str, Any]] = {
    "cat": {"load": _skimage("cat"), "source": "scikit-image data.cat() (Chelsea the cat, Stefan van der Walt)",
            "licence": "CC0"},
    "motorcycle": {"load": _skimage("stereo_motorcycle"),
                   "source": "scikit-image data.stereo_motorcycle(), left view (Middlebury 2014 stereo benchmark, "
                             "Scharstein et al., downscaled 4x)",
                   "licence": "no licence stated by scikit-image; Middlebury asks to cite Scharstein et al., GCPR 2014"},
    "grace_hopper": {"load": _grace_hopper, "source": "matplotlib sample data grace_hopper.jpg (US Navy portrait)",
                     "licence": "public domain (work of the US federal government)"},
    "hubble_deep_field": {"load": _skimage("hubble_deep_field"),
                          "source": "scikit-image data.hubble_deep_field() (NASA, Hubble eXtreme Deep Field)",
                          "licence": "public domain (NASA)"},
    "immunohistochemistry": {"load": _skimage("immunohistochemistry"),
                             "source": "scikit-image data.immunohistochemistry() (CMMI, IHC staining)",
                             "licence": "no known copyright restrictions (scikit-image)"},
    "camera": {"load": _skimage("camera"), "source": "scikit-image data.camera(), grayscale (Lav Varshney)",
               "licence": "CC0"},
    "moon": {"load": _skimage("moon"), "source": "scikit-image data.moon(), grayscale (surface of the moon)",
             "licence": "no licence stated by scikit-image (distributed in its BSD-3-Clause package)"},
    "clock": {"load": _skimage("clock"), "source": "scikit-image data.clock(), grayscale, motion-blurred "
              "(Stefan van der Walt)", "licence": "public domain (released by the photographer)"},
}


def _rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"expected 8-bit pixels, got {image.dtype}")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3])


def _thumbnail(image: np.ndarray, size: int = 32) -> np.ndarray:
    from PIL import Image

    gray = Image.fromarray(image).convert("L").resize((size, size), Image.BILINEAR)
    x = np.asarray(gray, dtype=np.float64)
    return (x - x.mean()) / (x.std() + 1e-9)


def training_duplicates(images: Dict[str, np.ndarray], train: Optional[Path]) -> Dict[str, str]:
    """``{name: training file}`` for images that are in the training folder: the same pixels, or
    the same picture at another size (thumbnails correlated above 0.98 with the same aspect ratio)."""
    from PIL import Image

    if train is None or not Path(train).is_dir():
        return {}
    exact = {hashlib.sha256(img.tobytes()).hexdigest(): name for name, img in images.items()}
    thumbs = {name: (_thumbnail(img), img.shape[1] / img.shape[0]) for name, img in images.items()}
    found: Dict[str, str] = {}
    for path in sorted(Path(train).iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        with Image.open(path) as img:
            pixels = np.asarray(img.convert("RGB"))
        digest = hashlib.sha256(pixels.tobytes()).hexdigest()
        if digest in exact:
            found.setdefault(exact[digest], path.name)
            continue
        thumb, aspect = _thumbnail(pixels), pixels.shape[1] / pixels.shape[0]
        for name, (other, other_aspect) in thumbs.items():
            if abs(math.log(aspect / other_aspect)) < 0.02 and float((thumb * other).mean()) > 0.98:
                found.setdefault(name, path.name)
    return found


def photos2(folder: str | os.PathLike, train: Optional[Path] = None, names: Optional[Sequence[str]] = None) -> List[Path]:
    """Write the ``photos2`` set into ``folder`` (kept when already there); returns its PNGs.

    Images found in ``train`` (see :func:`training_duplicates`) are left out and listed in
    ``MANIFEST.json`` under ``excluded``.
    """
    folder = Path(folder)
    names = list(names or PHOTOS2)
    manifest_path = folder / "MANIFEST.json"
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        files = [folder / entry["file"] for entry in manifest["images"]]
        if manifest.get("names") == names and all(f.exists() for f in files):
            return files
    images = {name: _rgb(PHOTOS2[name]["load"]()) for name in names}
    duplicates = training_duplicates(images, train)
    folder.mkdir(parents=True, exist_ok=True)
    entries, excluded = [], []
    for name, image in images.items():
        info = {"name": name, "source": PHOTOS2[name]["source"], "licence": PHOTOS2[name]["licence"]}
        if name in duplicates:
            excluded.append(dict(info, reason=f"already in the training folder as {duplicates[name]}"))
            continue
        entries.append(dict(info, file=f"{name}.png", width=int(image.shape[1]), height=int(image.shape[0]),
                            grayscale=bool((image[:, :, 0] == image[:, :, 1]).all() and (image[:, :, 1] == image[:, :, 2]).all())))
        _write_png(folder / f"{name}.png", image)
    manifest = {"set": "photos2", "names": names, "images": entries, "excluded": excluded,
                "checked_against": str(train) if train is not None else None,
                "written_by": "dynaquant_brevitas.evaluation.datasets.photos2"}
    manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
    return [folder / entry["file"] for entry in entries]


# --------------------------------------------------------------------------- unusual content


def _grid(size: int) -> tuple:
    y, x = np.mgrid[0:size, 0:size].astype(np.float64) / max(1, size - 1)
    return y, x


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    from matplotlib.colors import hsv_to_rgb

    return hsv_to_rgb(np.stack([h % 1.0, np.clip(s, 0, 1), np.clip(v, 0, 1)], axis=-1))


def _gradients(size: int, rng: np.random.RandomState) -> np.ndarray:
    """Smooth ramps: red left to right, green top to bottom, blue along the diagonal, plus a
    radial ramp in one quadrant (the banding case)."""
    y, x = _grid(size)
    r = np.sqrt((x - 0.75) ** 2 + (y - 0.75) ** 2) / 0.35
    image = np.stack([x, y, 1.0 - (x + y) / 2], axis=-1)
    quadrant = (x > 0.5) & (y > 0.5)
    image[quadrant] = np.clip(1.0 - r[quadrant], 0, 1)[:, None] * np.array([1.0, 0.85, 0.3])
    return image


def _colour_wheel(size: int, rng: np.random.RandomState) -> np.ndarray:
    """A fully saturated hue wheel (value falling towards the centre) on black."""
    y, x = _grid(size)
    dx, dy = x - 0.5, y - 0.5
    radius = np.sqrt(dx**2 + dy**2) / 0.48
    hue = (np.arctan2(dy, dx) / (2 * np.pi)) % 1.0
    image = _hsv_to_rgb(hue, np.ones_like(hue), np.clip(radius, 0, 1))
    image[radius > 1] = 0.0
    return image


def _colour_sweeps(size: int, rng: np.random.RandomState) -> np.ndarray:
    """Horizontal bands: the hue swept at full saturation, then pure primaries and secondaries
    against each other, then saturation and value sweeps."""
    y, x = _grid(size)
    band = np.minimum((y * 6).astype(int), 5)
    image = np.zeros((size, size, 3))
    hue = _hsv_to_rgb(x, np.ones_like(x), np.ones_like(x))
    blocks = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 1, 1], [1, 0, 1], [1, 1, 1], [0, 0, 0]], float)
    steps = blocks[np.minimum((x * 16).astype(int), 15) % 8]
    saturation = _hsv_to_rgb(np.full_like(x, 0.6), x, np.ones_like(x))
    value = _hsv_to_rgb(np.full_like(x, 0.95), np.ones_like(x), x)
    stripes = blocks[(np.floor(x * size / 2).astype(int) + np.floor(y * size / 2).astype(int)) % 2 * 2]
    for i, layer in enumerate((hue, steps, saturation, value, hue[:, ::-1], stripes)):
        image[band == i] = layer[band == i]
    return image


def _font(size: int, bold: bool = False):
    from matplotlib import get_data_path
    from PIL import ImageFont

    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    try:
        return ImageFont.truetype(str(Path(get_data_path()) / "fonts" / "ttf" / name), size)
    except OSError:
        return ImageFont.load_default()


_TEXT = ("The quick brown fox jumps over the lazy dog 0123456789. Learned image codecs are trained on "
         "photographs; sharp glyph edges on flat backgrounds are not what they see in training.")


def _text(size: int, rng: np.random.RandomState) -> np.ndarray:
    """Rendered text at sizes from 9 to 40 px: black on white, white on black, coloured on colour."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    draw.rectangle([0, int(size * 0.62), size, int(size * 0.8)], fill=(0, 0, 0))
    draw.rectangle([0, int(size * 0.8), size, size], fill=(30, 60, 200))
    y = 4
    words = _TEXT.split()
    for px in (40, 28, 20, 14, 11, 9):
        line, parts = "", []
        for word in words:
            if draw.textlength(line + " " + word, font=_font(px, bold=px >= 28)) > size - 8:
                parts.append(line)
                line = word
            else:
                line = (line + " " + word).strip()
        parts.append(line)
        for text in parts[:2]:
            if y + px > size * 0.6:
                break
            draw.text((4, y), text, fill=(0, 0, 0), font=_font(px, bold=px >= 28))
            y += int(px * 1.25)
    draw.text((6, int(size * 0.64)), "white on black 0123456789", fill=(255, 255, 255), font=_font(max(10, size // 20)))
    draw.text((6, int(size * 0.72)), "yellow on black", fill=(255, 230, 0), font=_font(max(9, size // 28)))
    draw.text((6, int(size * 0.83)), "red on blue, small", fill=(255, 40, 40), font=_font(max(9, size // 32)))
    draw.text((6, int(size * 0.9)), "white on blue", fill=(255, 255, 255), font=_font(max(10, size // 22), bold=True))
    return np.asarray(img, dtype=np.float64) / 255.0


def _screen(size: int, rng: np.random.RandomState) -> np.ndarray:
    """Screen-like content: a desktop with windows, title bars, buttons, a table with one-pixel
    grid lines, a line chart and small UI text."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), (46, 52, 64))
    draw = ImageDraw.Draw(img)
    s = size / 512
    small = _font(max(8, int(11 * s)))
    # a window with a table
    draw.rectangle([20 * s, 20 * s, 330 * s, 300 * s], fill=(250, 250, 250), outline=(120, 120, 120))
    draw.rectangle([20 * s, 20 * s, 330 * s, 42 * s], fill=(52, 101, 164))
    draw.text((28 * s, 25 * s), "results.csv - Editor", fill=(255, 255, 255), font=small)
    for i, colour in enumerate(((237, 106, 94), (245, 191, 79), (98, 197, 84))):
        draw.ellipse([(300 + 10 * i - 20) * s, 26 * s, (308 + 10 * i - 20) * s, 34 * s], fill=colour)
    for row in range(12):
        top = (50 + row * 20) * s
        if row % 2:
            draw.rectangle([22 * s, top, 328 * s, top + 20 * s], fill=(236, 240, 246))
        draw.line([22 * s, top, 328 * s, top], fill=(200, 200, 200), width=1)
        for col, x in enumerate((28, 110, 190, 260)):
            value = "method" if row == 0 and col == 0 else f"{rng.randint(0, 99999) / 100:.2f}" if row else f"col {col}"
            draw.text((x * s, top + 4 * s), value, fill=(20, 20, 20), font=small)
    # a chart window
    draw.rectangle([200 * s, 240 * s, 495 * s, 495 * s], fill=(255, 255, 255), outline=(90, 90, 90))
    draw.rectangle([200 * s, 240 * s, 495 * s, 262 * s], fill=(70, 70, 70))
    draw.text((208 * s, 245 * s), "PSNR over bpp", fill=(255, 255, 255), font=small)
    for k in range(6):
        x = (220 + k * 45) * s
        draw.line([x, 270 * s, x, 480 * s], fill=(225, 225, 225))
    points = [((220 + 45 * k) * s, (470 - 30 * k - 8 * math.sin(k)) * s) for k in range(6)]
    draw.line(points, fill=(214, 39, 40), width=max(1, int(2 * s)))
    draw.line([(x, y + 25 * s) for x, y in points], fill=(31, 119, 180), width=max(1, int(2 * s)))
    # buttons and a toolbar
    for i, label in enumerate(("OK", "Cancel", "Apply")):
        left = (20 + 60 * i) * s
        draw.rounded_rectangle([left, 320 * s, left + 54 * s, 344 * s], radius=int(4 * s) or 1,
                               fill=(0, 120, 215) if i == 0 else (225, 225, 225), outline=(80, 80, 80))
        draw.text((left + 8 * s, 325 * s), label, fill=(255, 255, 255) if i == 0 else (0, 0, 0), font=small)
    draw.rectangle([0, size - 24 * s, size, size], fill=(20, 20, 20))
    for i in range(8):
        draw.rectangle([(8 + 26 * i) * s, size - 20 * s, (26 + 26 * i) * s, size - 4 * s],
                       fill=tuple(int(c) for c in rng.randint(60, 255, 3)))
    draw.text((size - 60 * s, size - 19 * s), "22:24", fill=(255, 255, 255), font=small)
    return np.asarray(img, dtype=np.float64) / 255.0


def _noise(size: int, rng: np.random.RandomState) -> np.ndarray:
    """Independent colour noise: uniform in the left half, Gaussian around mid-grey in the right."""
    image = rng.uniform(0, 1, (size, size, 3))
    image[:, size // 2:] = np.clip(0.5 + 0.15 * rng.standard_normal((size, size - size // 2, 3)), 0, 1)
    return image


def _photo(size: int) -> np.ndarray:
    """scikit-image's motorcycle, right view (photos2 holds the left one), resized to ``size``
    high and centre-cropped square: the base of the dark and bright images."""
    from PIL import Image
    from skimage import data

    right = data.stereo_motorcycle()[1]
    img = Image.fromarray(right)
    width = int(round(img.width * size / img.height))
    img = img.resize((width, size), Image.LANCZOS)
    left = (width - size) // 2
    return np.asarray(img.crop((left, 0, left + size, size)), dtype=np.float64) / 255.0


def _dark(size: int, rng: np.random.RandomState) -> np.ndarray:
    """A photograph at about 1/16 of its exposure (values mostly below 16 of 255)."""
    return _photo(size) ** 1.2 * 0.07


def _bright(size: int, rng: np.random.RandomState) -> np.ndarray:
    """A photograph pushed to the top of the range (values mostly above 235 of 255)."""
    return 1.0 - (1.0 - _photo(size)) ** 1.2 * 0.08


#: name -> generator(size, rng) giving floats in [0, 1], ``(size, size, 3)``
UNUSUAL: Dict[str, Callable[[int, np.random.RandomState], np.ndarray]] = {
    "gradients": _gradients,
    "colour_wheel": _colour_wheel,
    "colour_sweeps": _colour_sweeps,
    "text": _text,
    "screen": _screen,
    "noise": _noise,
    "dark": _dark,
    "bright": _bright,
}


def unusual(folder: str | os.PathLike, size: int = 512, seed: int = 0) -> List[Path]:
    """Write the unusual-content set (``size`` x ``size`` PNGs, seeded) into ``folder``; returns them."""
    folder = Path(folder)
    manifest_path = folder / "MANIFEST.json"
    settings = {"set": "unusual", "size": int(size), "seed": int(seed), "names": list(UNUSUAL)}
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        files = [folder / entry["file"] for entry in manifest.get("images", [])]
        if {k: manifest.get(k) for k in settings} == settings and all(f.exists() for f in files):
            return files
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for index, (name, make) in enumerate(UNUSUAL.items()):
        image = _to_uint8(make(int(size), np.random.RandomState(seed * 1000 + index)))
        _write_png(folder / f"{name}.png", image)
        entries.append({"name": name, "file": f"{name}.png", "what": (make.__doc__ or "").split("\n\n")[0].strip(),
                        "mean": float(image.mean() / 255.0)})
    manifest = dict(settings, images=entries, written_by="dynaquant_brevitas.evaluation.datasets.unusual",
                    licence="generated by dynaquant_brevitas.evaluation.datasets; the dark and bright images derive from scikit-image's "
                            "stereo_motorcycle (Middlebury 2014)")
    manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
    return [folder / entry["file"] for entry in entries]


def _write_png(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    tmp = path.with_name(path.name + ".tmp")
    Image.fromarray(image).save(tmp, format="PNG")
    tmp.replace(path)


#: evaluation sets this module writes: name -> writer(folder) -> PNG paths
GENERATED = {"photos2": photos2, "unusual": unusual}
