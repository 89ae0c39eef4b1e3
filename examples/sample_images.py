"""Test images for the examples: photos that ship with scikit-image, cropped, as tensors or PNGs.

Nothing is downloaded: ``skimage.data`` holds these files. The astronaut is held out for testing;
the others calibrate and train.
"""

from __future__ import annotations

from pathlib import Path
from typing import List

import numpy as np
import skimage.data
import torch
from PIL import Image

HOLDOUT_IMAGE = "astronaut"
TRAIN_IMAGES = ("chelsea", "coffee", "rocket", "immunohistochemistry")


def crop(name: str, size: int) -> np.ndarray:
    """The central ``size x size`` crop of ``skimage.data.<name>()`` as ``(H, W, 3)`` uint8."""
    image = getattr(skimage.data, name)()[..., :3]
    h, w = image.shape[:2]
    if min(h, w) < size:
        raise ValueError(f"skimage.data.{name}() is {h}x{w}, smaller than the {size}px crop asked for")
    top, left = (h - size) // 2, (w - size) // 2
    return image[top : top + size, left : left + size]


def as_tensor(image: np.ndarray) -> torch.Tensor:
    """``(1, 3, H, W)`` float in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div(255).unsqueeze(0)


def holdout_image(size: int) -> torch.Tensor:
    return as_tensor(crop(HOLDOUT_IMAGE, size))


def train_images(size: int) -> List[torch.Tensor]:
    return [as_tensor(crop(name, size)) for name in TRAIN_IMAGES]


def save_train_images(folder: Path, size: int) -> Path:
    """Write the training crops as PNG files (what ``dynaquant train`` reads) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in TRAIN_IMAGES:
        Image.fromarray(crop(name, size)).save(folder / f"{name}.png")
    return folder


def save_holdout_image(folder: Path, size: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(crop(HOLDOUT_IMAGE, size)).save(folder / f"{HOLDOUT_IMAGE}.png")
    return folder
