"""The integer entropy path (``dynaquant_brevitas.nn.integer_path``) outside PyTorch: numpy only.

:func:`save_program` writes the program of a model (integer weights, multipliers, biases, clamps
and the input grid) to one ``.npz`` file; :func:`run_numpy` runs it with numpy's int64
arithmetic and :func:`indexes_numpy` finds the scale-table indexes, so a decoder written in
another language can check itself against the same arrays. Nothing here imports torch at run
time: the file and numpy are all it needs.

Example:
    >>> import tempfile, torch
    >>> from compressai.models import ScaleHyperprior
    >>> from dynaquant_brevitas import DynaQuantConfig, calibrate, dynaquantize
    >>> from dynaquant_brevitas.nn.integer_path import build_program, run_program
    >>> model = dynaquantize(ScaleHyperprior(8, 12), DynaQuantConfig(candidate_bits=(8,)))
    >>> calibrate(model, [torch.rand(2, 3, 128, 128)])
    >>> path = save_program(build_program(model.h_s), tempfile.mkdtemp() + "/h_s.npz")
    >>> z_hat = torch.round(torch.randn(1, 8, 2, 3) * 3)
    >>> bool((run_numpy(load_program(path), z_hat.numpy()) == run_program(build_program(model.h_s), z_hat).numpy()).all())
    True
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict

import numpy as np

__all__ = ["indexes_numpy", "load_program", "run_numpy", "save_program"]

def save_program(program: Any, path: str | os.PathLike) -> Path:
    """Write an :class:`~dynaquant_brevitas.nn.integer_path.IntegerProgram` to ``path`` (``.npz``)."""
    from ..io.files import write_atomic
    from ..nn.integer_path import OUTPUT_STEP, SHIFT

    arrays: Dict[str, np.ndarray] = {
        "input_scale": program.input_scale.numpy().astype(np.float32),
        "input_zero_point": program.input_zero_point.numpy().astype(np.float32),
        "input_bounds": np.array([program.input_low, program.input_high], dtype=np.int64),
        "constants": np.array([len(program.layers), SHIFT], dtype=np.int64),
        "output_step": np.array(OUTPUT_STEP, dtype=np.float64),
    }
    for i, layer in enumerate(program.layers):
        arrays[f"{i}.weight"] = layer.weight.numpy()
        arrays[f"{i}.bias"] = layer.bias.numpy()
        arrays[f"{i}.ints"] = np.array([layer.stride, *layer.padding, layer.leaky, layer.low, layer.high], dtype=np.int64)
        arrays[f"{i}.kind"] = np.array(f"{layer.kind}:{layer.activation}")
    return write_atomic(path, lambda f: np.savez(f, **arrays))


def load_program(path: str | os.PathLike) -> Dict[str, np.ndarray]:
    """The arrays :func:`save_program` wrote."""
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def _conv(x: np.ndarray, weight: np.ndarray, stride: int, before: int, after: int) -> np.ndarray:
    x = np.pad(x, ((0, 0), (0, 0), (before, after), (before, after)))
    k = weight.shape[-1]
    h, w = (x.shape[2] - k) // stride + 1, (x.shape[3] - k) // stride + 1
    out = np.zeros((x.shape[0], weight.shape[0], h, w), dtype=np.int64)
    for i in range(k):
        for j in range(k):
            patch = x[:, :, i: i + stride * (h - 1) + 1: stride, j: j + stride * (w - 1) + 1: stride]
            out += np.tensordot(patch, weight[:, :, i, j], axes=([1], [1])).transpose(0, 3, 1, 2)
    return out


def run_numpy(program: Dict[str, np.ndarray], z_hat: np.ndarray) -> np.ndarray:
    """The output integers of the program for decoded hyper-latents ``z_hat`` (N, C, H, W)."""
    low, high = (int(v) for v in program["input_bounds"])
    q = np.round(z_hat.astype(np.float32) / program["input_scale"] + program["input_zero_point"])
    x = np.clip(q, low, high).astype(np.int64)
    layers, shift = (int(v) for v in program["constants"])
    for i in range(layers):
        stride, before, after, leaky, low, high = (int(v) for v in program[f"{i}.ints"])
        kind, activation = str(program[f"{i}.kind"]).split(":")
        if kind == "deconv":
            dilated = np.zeros(x.shape[:2] + ((x.shape[2] - 1) * stride + 1, (x.shape[3] - 1) * stride + 1), np.int64)
            dilated[:, :, ::stride, ::stride] = x
            x, stride = dilated, 1
        total = _conv(x, program[f"{i}.weight"], stride, before, after) + program[f"{i}.bias"][None, :, None, None]
        out = (total + (1 << (shift - 1))) >> shift
        if activation == "leaky":
            fine = (total + (1 << (shift - 9))) >> (shift - 8)
            scale = 1 << 24
            out = np.where(total < 0, (fine * leaky + scale // 2) // scale, out)
        x = np.clip(out, low, high)
    return x


def indexes_numpy(q_scales: np.ndarray, scale_table: np.ndarray, output_step: float) -> np.ndarray:
    """Scale-table indexes of integer scales, by integer comparison (as ``nn.integer_path.scale_indexes``)."""
    thresholds = np.floor(np.asarray(scale_table, dtype=np.float64) / output_step).astype(np.int64)
    below = (q_scales[..., None] <= thresholds[:-1]).sum(-1)
    return (len(thresholds) - 1 - below).astype(np.int32)
