"""``dynaquant demo``: the project's main job on a built-in default (what ``make demo`` runs).

1. take a committed float reference checkpoint (``checkpoints/reference/``) or ``--checkpoint``;
2. evaluate it with real bitstreams on default images that ship with scikit-image (photos that
   are not in the training set) or on ``--images DIR``;
3. ``dynaquantize`` it and fine-tune briefly (``--minutes``, 5 by default) on the training photos;
4. evaluate the DynaQuant model the same way, print a table (bpp, PSNR, MS-SSIM, average bits,
   model size) and write the rate-distortion plot and the heat map of chosen bit widths.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from ..evaluation import evaluate
from ..evaluation.evaluate import chosen_profiles
from ..evaluation.plot import plot_bit_heatmap, plot_rd
from ..io.checkpoint import load_checkpoint, model_from_checkpoint
from ..io.files import write_json
from ..training import TrainConfig, train
from ..transform import DynaQuantConfig, model_size_bytes

__all__ = ["DEFAULT_IMAGES", "find_reference", "run_demo", "write_default_images"]

#: scikit-image's bundled colour photos that are not among the training photos, plus textures.
DEFAULT_IMAGES = ("hubble_deep_field", "immunohistochemistry", "retina", "colorwheel", "brick", "gravel")
#: scikit-image's bundled photos that are also in ``shared/data/train`` (fallback training set).
FALLBACK_TRAINING_IMAGES = ("astronaut", "chelsea", "coffee", "rocket")
SHARED_TRAINING_IMAGES = Path("../shared/data/train")


class DemoError(ValueError):
    """The demo cannot run with what it was given."""


def _save_skimage(names: Sequence[str], folder: Path, max_side: int) -> Path:
    import skimage.data

    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        image = np.asarray(getattr(skimage.data, name)())
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        top = max(0, (image.shape[0] - max_side) // 2)
        left = max(0, (image.shape[1] - max_side) // 2)
        crop = image[top : top + max_side, left : left + max_side, :3]
        Image.fromarray(crop.astype(np.uint8)).save(folder / f"{name}.png")
    return folder


def write_default_images(folder: Path, max_side: int = 384) -> Path:
    """Write the default evaluation images (centre crops of at most ``max_side``) into ``folder``."""
    return _save_skimage(DEFAULT_IMAGES, folder, max_side)


DEFAULT_REFERENCE = "bmshj2018-hyperprior-N64-M96-q4.pt"


def find_reference(root: Path = Path("checkpoints/reference")) -> Path:
    """The committed float reference: :data:`DEFAULT_REFERENCE` (ScaleHyperprior at lambda 0.013),
    else the first checkpoint in ``root``."""
    preferred = root / DEFAULT_REFERENCE
    if preferred.is_file():
        return preferred
    candidates = sorted(root.glob("*.pt"))
    if not candidates:
        raise DemoError(f"no reference checkpoint in {root}/: pass --checkpoint PATH (a `dynaquant train` checkpoint)")
    return candidates[0]


def _training_folder(output: Path) -> Path:
    if SHARED_TRAINING_IMAGES.is_dir():
        return SHARED_TRAINING_IMAGES
    return _save_skimage(FALLBACK_TRAINING_IMAGES, output / "train-images", max_side=512)


def _finetune(checkpoint: Path, output: Path, minutes: float, steps: int, config: DynaQuantConfig) -> Path:
    cfg = TrainConfig.from_dict(
        {
            "data": {"root": str(_training_folder(output)), "patch_size": 128, "batch_size": 8},
            "train": {
                "steps": steps,
                "lr": 1e-4,
                "init_from": str(checkpoint),
                "output": str(output / "dynaquant"),
                "checkpoint_every": steps,
                "log_every": 10,
                "threads": torch.get_num_threads(),
            },
            "quant": {"config": config.to_dict()},
        }
    )
    train(cfg, time_limit_s=60.0 * minutes, overwrite=True)
    return output / "dynaquant" / "last.pt"


def _size_bytes(checkpoint: Path, layer_bits: Optional[Dict[str, float]] = None) -> int:
    model = model_from_checkpoint(load_checkpoint(checkpoint))
    return model_size_bytes(model, layer_bits)


def _mean_layer_bits(result: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    entry = result["models"][0]
    return chosen_profiles(entry.get("layers") or [], entry.get("per_image", []))[0]


def _row(name: str, result: Dict[str, Any], size: int) -> Dict[str, Any]:
    r = result["results"]
    return {
        "model": name,
        "bpp": r["bpp"][0],
        "psnr": r["psnr-rgb"][0],
        "ms-ssim": r["ms-ssim-rgb"][0],
        "avg_bits": (r.get("avg_bits") or [None])[0] or 32.0,
        "size_bytes": size,
    }


def _print_table(rows: List[Dict[str, Any]]) -> None:
    print(f"\n{'model':<12}{'bpp':>8}{'PSNR dB':>10}{'MS-SSIM':>10}{'avg bits':>10}{'size (kB)':>12}")
    for row in rows:
        ms = f"{row['ms-ssim']:.4f}" if row["ms-ssim"] is not None else "n/a"
        print(
            f"{row['model']:<12}{row['bpp']:>8.3f}{row['psnr']:>10.2f}{ms:>10}"
            f"{row['avg_bits']:>10.2f}{row['size_bytes'] / 1000:>12.1f}"
        )


def run_demo(
    output: Path,
    checkpoint: Optional[Path] = None,
    images: Optional[Path] = None,
    minutes: float = 5.0,
    steps: int = 400,
    config: Optional[DynaQuantConfig] = None,
    threads: int = 1,
) -> Dict[str, Any]:
    """Run the demo (see the module docstring); returns the summary written to ``summary.json``.

    ``threads`` sets torch's intra-op threads: one is the safe default on a small machine, where
    two OpenMP threads slow down many times over as soon as another process competes.
    """
    torch.set_num_threads(threads)
    output.mkdir(parents=True, exist_ok=True)
    checkpoint = checkpoint or find_reference()
    image_dir = images or write_default_images(output / "images")
    float_result = evaluate([str(checkpoint)], image_dir, name="float", per_image=True)
    quantized = _finetune(checkpoint, output, minutes, steps, config or DynaQuantConfig())
    dq_result = evaluate([str(quantized)], image_dir, name="dynaquant", per_image=True)
    rows = [
        _row("float", float_result, _size_bytes(checkpoint)),
        _row("dynaquant", dq_result, _size_bytes(quantized, _mean_layer_bits(dq_result))),
    ]
    _print_table(rows)
    figures = plot_rd([float_result, dq_result], output / "rd") + plot_bit_heatmap(dq_result, output / "bits")
    summary = {
        "checkpoint": str(checkpoint),
        "images": str(image_dir),
        "rows": rows,
        "figures": [str(p) for p in figures],
        "float": float_result,
        "dynaquant": dq_result,
    }
    write_json(output / "summary.json", summary)
    print(f"\nwrote {output / 'summary.json'} and " + ", ".join(str(p) for p in figures))
    return summary
