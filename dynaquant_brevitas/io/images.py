"""Image loading and the training dataset (random crops and flips of an image folder).

Example:
    >>> import tempfile, numpy as np
    >>> from PIL import Image
    >>> root = tempfile.mkdtemp()
    >>> Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(f"{root}/a.png")
    >>> ds = ImageFolderCrops(root, patch_size=32)
    >>> ds[0].shape
    torch.Size([3, 32, 32])
"""

from __future__ import annotations

import os
from pathlib import Path

import io
import warnings

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset
from torchvision import transforms

from .files import write_atomic

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".tif", ".tiff", ".webp")


class DataError(ValueError):
    """An image folder or image file cannot be used."""


def list_images(root: str | os.PathLike) -> list[Path]:
    """Image files directly inside ``root``, sorted by name; raises :class:`DataError` if none."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder not found: {root}")
    files = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {root}")
    return files


def read_image_uint8(path: str | os.PathLike) -> torch.Tensor:
    """An image file as an RGB ``(3, H, W)`` uint8 tensor; raises :class:`DataError` naming the file.

    Grayscale is replicated to three channels, palette images are expanded, alpha is dropped
    (the colour values are kept as stored, as CompressAI's evaluation does), 16-bit samples keep
    their most significant 8 bits, and only the first frame of a multi-frame file is read.
    32-bit integer and floating-point images (modes ``I`` and ``F``) are refused: their range is
    not defined. The EXIF orientation is applied (the pixels come out as viewers show them), and
    colours with an embedded ICC profile are converted to sRGB.
    """
    try:
        if os.path.getsize(path) == 0:
            raise DataError(f"cannot read image {path}: empty file")
        with Image.open(path) as img:
            array = _rgb_uint8(_to_srgb(ImageOps.exif_transpose(img), path), path)
    except DataError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise DataError(f"cannot read image {path}: {_reason(err)}") from err
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def _rgb_uint8(img: Image.Image, path: str | os.PathLike) -> np.ndarray:
    """The pixels of an opened image as an ``(H, W, 3)`` uint8 array."""
    if img.mode.startswith("I;16"):  # 16-bit grayscale: most significant byte, as Pillow does for RGB
        gray = (np.asarray(img, dtype=np.uint16) >> 8).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if img.mode in ("I", "F"):
        raise DataError(
            f"cannot read image {path}: {img.mode!r} pixels (32-bit integer or float) are not "
            "supported; convert it to 8- or 16-bit RGB or grayscale"
        )
    return np.array(img.convert("RGB"), dtype=np.uint8)


def _to_srgb(img: Image.Image, path: str | os.PathLike) -> Image.Image:
    """``img`` with its embedded ICC profile applied (converted to sRGB), or as is without one."""
    icc = img.info.get("icc_profile")
    if not icc or img.mode not in ("RGB", "RGBA", "L", "CMYK"):
        return img
    from PIL import ImageCms

    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        mode = "RGBA" if img.mode == "RGBA" else "RGB"
        return ImageCms.profileToProfile(img, source, ImageCms.createProfile("sRGB"), outputMode=mode)
    except (ImageCms.PyCMSError, OSError, ValueError) as err:
        warnings.warn(f"{path}: its ICC colour profile cannot be applied ({_reason(err)}); colours read as stored", stacklevel=3)
        return img


def _reason(err: BaseException) -> str:
    """The first line of an error message (Pillow's can be long), or its type name."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def read_image(path: str | os.PathLike) -> torch.Tensor:
    """An RGB image as a ``(1, 3, H, W)`` float tensor in [0, 1]."""
    return read_image_uint8(path).float().div_(255.0).unsqueeze(0)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Round a [0, 1] float image to 8-bit levels (uint8, same shape)."""
    return x.detach().clamp(0, 1).mul(255).round().to(torch.uint8)


def write_image(x: torch.Tensor, path: str | os.PathLike) -> None:
    """Save a ``(1, 3, H, W)`` or ``(3, H, W)`` [0, 1] image as PNG (or by suffix).

    Written with :func:`~dynaquant_brevitas.io.files.write_atomic`: complete or not at all.
    """
    x = to_uint8(x.squeeze(0) if x.dim() == 4 else x)
    path = Path(path)
    image = Image.fromarray(x.permute(1, 2, 0).cpu().numpy())
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise DataError(f"cannot write image {path}: unknown image file extension {path.suffix!r}")
    write_atomic(path, lambda f: image.save(f, format=fmt))


class ImageFolderCrops(Dataset):
    """Random ``patch_size`` crops with random horizontal and vertical flips of every image in a folder.

    Images are decoded once and kept in memory as uint8 (the training set is small); images
    smaller than the patch are padded by reflection. Randomness comes from torch's global
    generator (or the worker's), so a run is reproducible from its RNG state.
    """

    def __init__(self, root: str | os.PathLike, patch_size: int = 256, cache: bool = True) -> None:
        self.files = list_images(root)
        self.patch_size = int(patch_size)
        self._cache: dict[int, torch.Tensor] = {} if cache else None  # type: ignore[assignment]
        self.transform = transforms.Compose(
            [
                transforms.RandomCrop(self.patch_size, pad_if_needed=True, padding_mode="reflect"),
                transforms.RandomHorizontalFlip(),
                transforms.RandomVerticalFlip(),
            ]
        )

    def __len__(self) -> int:
        return len(self.files)

    def _image(self, index: int) -> torch.Tensor:
        if self._cache is None:
            return read_image_uint8(self.files[index])
        if index not in self._cache:
            self._cache[index] = read_image_uint8(self.files[index])
        return self._cache[index]

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.transform(self._image(index)).float().div(255.0)
