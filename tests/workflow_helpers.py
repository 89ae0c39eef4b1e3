"""Shared fixtures for the train/eval/container/CLI tests: tiny images, configs and checkpoints.

Imported by the test modules (``from workflow_helpers import ...``); tiny models keep every
test to seconds on two CPU cores.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from dynaquant_brevitas.cli import main
from dynaquant_brevitas.training import TrainConfig, train

TRAIN_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "train"
TINY_ARCH = {"arch": "bmshj2018-hyperprior", "N": 8, "M": 12}
#: Sizes of the evaluation images: not multiples of 64 (exercises padding), one above MS-SSIM's 160 px.
EVAL_SIZES = ((176, 200), (96, 136))


def write_images(folder: Path, sizes=EVAL_SIZES, sources=("wiki_001", "wiki_002", "skimage_coffee")) -> Path:
    """Crops of real training photos saved as PNG in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, (h, w) in enumerate(sizes):
        with Image.open(TRAIN_DIR / f"{sources[i % len(sources)]}.png") as img:
            img.convert("RGB").crop((10, 10, 10 + w, 10 + h)).save(folder / f"img{i}.png")
    return folder


def tiny_config(output: Path, steps: int = 4, **sections: dict[str, Any]) -> TrainConfig:
    """A config for a tiny ScaleHyperprior on 64 px crops of the training photos."""
    raw = {
        "model": dict(TINY_ARCH),
        "data": {"root": str(TRAIN_DIR), "patch_size": 64, "batch_size": 2},
        "train": {
            "steps": steps,
            "output": str(output),
            "checkpoint_every": 2,
            "log_every": 1,
            "progress": False,
            "device": "cpu",
            "lr": 1e-3,
        },
    }
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return TrainConfig.from_dict(raw)


@pytest.fixture(scope="session")
def float_run(tmp_path_factory) -> Path:
    """A tiny float model trained for 30 steps; returns its run directory (last.pt, final.pt)."""
    out = tmp_path_factory.mktemp("float_run")
    train(tiny_config(out, steps=30))
    return out


@pytest.fixture(scope="session")
def quant_run(tmp_path_factory, float_run) -> Path:
    """The float model fine-tuned 4 steps with DynaQuant (candidates 4/6/8, target 6 bits)."""
    out = tmp_path_factory.mktemp("quant_run")
    cfg = tiny_config(
        out,
        steps=4,
        train={"lr": 1e-4, "init_from": str(float_run / "final.pt")},
        quant={"config": {"candidate_bits": [4, 6, 8], "calibration_batches": 2}, "target_bits": 6.0, "tau_decay_steps": 10},
    )
    train(cfg)
    return out


@pytest.fixture(scope="session")
def eval_images(tmp_path_factory) -> Path:
    return write_images(tmp_path_factory.mktemp("images"))


def run_eval(checkpoint: str, images: str, output: str, *extra: str) -> int:
    """``dynaquant eval --checkpoint C --images I -o O [extra...]``; returns the exit status."""
    return main(["eval", "--checkpoint", checkpoint, "--images", images, "-o", output, *extra])
