"""Train a float codec, fine-tune it with DynaQuant, evaluate both with real bitstreams.

The same three commands you would type, run from Python through :func:`dynaquant_brevitas.cli.main`:

1. ``dynaquant train``: a small float ``bmshj2018-hyperprior`` on crops of scikit-image photos;
2. ``dynaquant train --init-from FLOAT``: quantization-aware fine-tuning with dynamic bit widths
   (candidates 4/6/8, gamma steered to a target average);
3. ``dynaquant eval``: compress and decompress a held-out photo, CompressAI-style JSON per model.

Settings are tiny so that it runs in a few minutes on a laptop CPU: the numbers show the workflow,
not the method's quality (see ``configs/`` for the real runs). Outputs go to ``--workdir``.

Run: ``python examples/finetune_and_evaluate.py [--steps 60] [--workdir runs/examples/finetune]``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import List, Optional

from sample_images import save_holdout_image, save_train_images

from dynaquant_brevitas.cli import main as dynaquant


def run(*args: str) -> None:
    """``dynaquant ARGS...``; stops with the command's message if it fails."""
    print("$ dynaquant " + " ".join(args), flush=True)
    status = dynaquant(list(args))
    if status:
        raise SystemExit(f"dynaquant {args[0]} failed with exit status {status}")


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60, help="training steps of each stage")
    parser.add_argument("--channels", type=int, nargs=2, default=(32, 48), metavar=("N", "M"))
    parser.add_argument("--patch", type=int, default=64, help="training crop size")
    parser.add_argument("--workdir", type=Path, default=Path("runs/examples/finetune"))
    args = parser.parse_args(argv)
    work = args.workdir
    train_dir = save_train_images(work / "train", 256)
    eval_dir = save_holdout_image(work / "eval", 256)
    common = [
        "--data", str(train_dir), "--steps", str(args.steps), "--device", "cpu", "--no-progress",
        "--set", f"data.patch_size={args.patch}", "--set", "data.batch_size=4",
        "--set", f"train.checkpoint_every={args.steps}", "--set", f"train.log_every={max(1, args.steps // 4)}",
    ]
    float_dir, quant_dir = work / "float", work / "dynaquant"

    run("train", "--arch", "bmshj2018-hyperprior", "--set", f"model.N={args.channels[0]}",
        "--set", f"model.M={args.channels[1]}", "--lr", "1e-3", "--output", str(float_dir), *common)
    run("train", "--init-from", str(float_dir / "final.pt"), "--lr", "1e-4", "--output", str(quant_dir),
        "--set", "quant.config.candidate_bits=[4, 6, 8]", "--set", "quant.target_bits=6.0",
        "--set", "quant.config.calibration_batches=2", *common)
    curves = {}
    for name, directory in (("float", float_dir), ("dynaquant", quant_dir)):
        # one checkpoint per call: each JSON is then one model's rate-distortion point
        results = work / f"eval-{name}.json"
        run("eval", "--checkpoint", str(directory / "final.pt"), "--images", str(eval_dir),
            "--output", str(results), "--name", name)
        curves[name] = json.loads(results.read_text())["results"]

    print(f"\nfloat:     {curves['float']['bpp'][0]:.3f} bpp, {curves['float']['psnr-rgb'][0]:.2f} dB")
    print(f"DynaQuant: {curves['dynaquant']['bpp'][0]:.3f} bpp, {curves['dynaquant']['psnr-rgb'][0]:.2f} dB, "
          f"{curves['dynaquant']['avg_bits'][0]:.2f} average bits in the dynamic layers")
    print(f"(checkpoints and logs under {work}; tiny settings, the numbers show the workflow only)")


if __name__ == "__main__":
    main()
