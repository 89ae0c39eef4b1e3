"""Pack a quantized model for real: integer weights at their bit widths in one byte buffer.

:func:`~dynaquant_brevitas.cost.model_size_bytes` *estimates* a model's size from bit widths.
This module writes the bytes, so the size can be measured as a file length:

* every quantized weight (a Brevitas layer whose weight quantizer is on: DynaQuant layers and
  Brevitas's stock quantized layers alike) becomes its integers ``q`` (``x_hat = s * (q - z)``),
  bit-packed at the layer's bit width, plus its per-channel scale ``s`` as float32 and, only when
  some channel has one, its zero point ``z`` as float32;
* every other parameter (biases, GDN, entropy models, activation-quantizer ranges and offsets,
  selectors) is stored as float32; the weight quantizer's own parameters are not, the stored
  scales replace them;
* buffers are not stored: they are constants rebuilt by the constructor (GDN's pedestals,
  Brevitas's sentinels) or by ``model.update()`` (the entropy coder's tables).

File layout: ``b"DQPK"``, a version byte, the header length (uint32, little endian), a JSON
header listing the tensors in payload order, then the payload. Each tensor starts on a byte.

Example:
    >>> import numpy as np
    >>> values = np.array([-8, -1, 0, 3, 7])
    >>> data = pack_ints(values, bits=4, signed=True)
    >>> len(data), unpack_ints(data, bits=4, count=5, signed=True).tolist()
    (3, [-8, -1, 0, 3, 7])
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ..nn import DynaQuantLayer
from ..quant import int_range

__all__ = [
    "PackReport", "integer_weight", "pack_ints", "pack_model", "quantized_weight_layers", "unpack_ints",
    "unpack_model"
]

MAGIC = b"DQPK"
VERSION = 1


def _bounds(bits: int, signed: bool) -> Tuple[int, int]:
    """The full two's-complement (or unsigned) range of ``bits`` bits."""
    if not 1 <= bits <= 32:
        raise ValueError(f"bit width must be in 1..32, got {bits}")
    return int_range(bits, signed, narrow_range=False)


def pack_ints(values: Any, bits: int, signed: bool) -> bytes:
    """Integers packed at ``bits`` bits each (two's-complement range when ``signed``), MSB first.

    Raises:
        ValueError: when a value does not fit in ``bits`` bits.
    """
    v = np.asarray(values).astype(np.int64, copy=False).ravel()
    lo, hi = _bounds(bits, signed)
    if v.size and (v.min() < lo or v.max() > hi):
        raise ValueError(f"values in [{v.min()}, {v.max()}] do not fit {bits} {'signed' if signed else 'unsigned'} bits")
    unsigned = (v - lo).astype(np.uint64)
    shifts = np.arange(bits - 1, -1, -1, dtype=np.uint64)
    planes = ((unsigned[:, None] >> shifts) & np.uint64(1)).astype(np.uint8)
    return np.packbits(planes.ravel()).tobytes()


def unpack_ints(data: bytes, bits: int, count: int, signed: bool) -> np.ndarray:
    """The ``count`` integers :func:`pack_ints` wrote into ``data`` (int64)."""
    lo, _ = _bounds(bits, signed)
    planes = np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=count * bits).reshape(count, bits)
    weights = np.left_shift(np.int64(1), np.arange(bits - 1, -1, -1, dtype=np.int64))
    return planes.astype(np.int64) @ weights + lo


# --------------------------------------------------------------------------- models


def quantized_weight_layers(model: nn.Module) -> Iterator[Tuple[str, nn.Module]]:
    """``(name, layer)`` for every layer whose weight goes through an enabled Brevitas quantizer."""
    for name, module in model.named_modules():
        proxy = getattr(module, "weight_quant", None)
        if proxy is not None and hasattr(module, "quant_weight") and getattr(proxy, "is_quant_enabled", False):
            yield name, module


@torch.no_grad()
def integer_weight(layer: nn.Module, bits: Optional[int] = None) -> Dict[str, Any]:
    """The integer form of ``layer``'s quantized weight: ``q``, ``scale``, ``zero_point``, ``bits``, ``signed``.

    ``x_hat = scale * (q - zero_point)`` is the weight the layer computes with. ``bits`` picks
    another candidate width of a DynaQuant layer (default: its static width); a layer that
    still follows a per-sample bit choice is refused.
    """
    if isinstance(layer, DynaQuantLayer):
        if bits is None and layer.bit_choice is not None:
            raise ValueError("the layer follows a per-sample bit choice: freeze the model or pass bits=")
        quant = layer.weight_quant.tensor_quant
        bits = int(bits if bits is not None else layer.bit_width)
        qp = quant.qparams(bits)
        return {"q": qp.quantize(layer.weight), "scale": qp.scale.float(), "zero_point": qp.zero_point.float(),
                "bits": bits, "signed": quant.signed}
    if bits is not None and bits != int(layer.quant_weight().bit_width):
        raise ValueError("only DynaQuant layers can be packed at another bit width")
    qt = layer.quant_weight()
    x_hat, scale, zero_point = qt.value, qt.scale, qt.zero_point
    bits, signed = int(qt.bit_width), bool(qt.signed)
    scale = torch.as_tensor(scale).float()
    zero_point = torch.as_tensor(zero_point).float()
    q = torch.round(x_hat / scale + zero_point).to(torch.int64)
    return {"q": q, "scale": scale, "zero_point": zero_point, "bits": bits, "signed": signed}


@dataclass
class PackReport:
    """What :func:`pack_model` wrote.

    Attributes:
        path: the packed file.
        size_bytes: its length (header included): the measured packed size.
        header_bytes: the JSON header and the fixed preamble.
        int_bytes: the bit-packed integer weights.
        float_bytes: float32 scales, zero points and every unquantized parameter.
        layers: quantized layer name -> the bit widths stored for it.
        int_params: number of weights stored as integers (once per stored bit width).
        float_params: number of values stored as float32.
    """

    path: str
    size_bytes: int
    header_bytes: int
    int_bytes: int
    float_bytes: int
    layers: Dict[str, List[int]] = field(default_factory=dict)
    int_params: int = 0
    float_params: int = 0

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def _channel_array(t: torch.Tensor) -> np.ndarray:
    """A scale or zero point as float32, in its broadcastable shape (e.g. ``(C, 1, 1, 1)``, or
    ``(1, C, 1, 1)`` for a transposed convolution, whose output channels are dimension 1)."""
    return t.detach().cpu().float().numpy()


def pack_model(
    model: nn.Module, path: str | os.PathLike, candidates: Optional[Mapping[str, Sequence[int]]] = None
) -> PackReport:
    """Write ``model`` packed (see the module docstring) and return what was written.

    Args:
        model: a model with static bit widths (e.g. :func:`~dynaquant_brevitas.transform.freeze`
            of a dynamic one), or a dynamic one with ``candidates`` naming its dynamic layers.
        path: the output file.
        candidates: layer name -> bit widths to store for it, one integer copy each (a dynamic
            layer that must be able to run at every candidate); other layers store their
            static width.
    """
    candidates = {k: [int(b) for b in v] for k, v in dict(candidates or {}).items()}
    entries: List[Dict[str, Any]] = []
    chunks: List[bytes] = []
    report = PackReport(str(path), 0, 0, 0, 0)
    skip: set = set()

    def add_float(name: str, array: np.ndarray) -> None:
        data = np.ascontiguousarray(array, dtype="<f4").tobytes()
        entries.append({"name": name, "kind": "float32", "shape": list(array.shape), "nbytes": len(data)})
        chunks.append(data)
        report.float_bytes += len(data)
        report.float_params += int(array.size)

    layers = list(quantized_weight_layers(model))
    unknown = sorted(set(candidates) - {name for name, _ in layers})
    if unknown:
        raise ValueError(f"candidates name layers without a quantized weight: {unknown}")
    for name, layer in layers:
        skip.add(id(layer.weight))
        skip.update(id(p) for p in layer.weight_quant.parameters())
        widths = candidates.get(name) or [None]
        report.layers[name] = []
        for bits in widths:
            iw = integer_weight(layer, bits)
            data = pack_ints(iw["q"].cpu().numpy(), iw["bits"], iw["signed"])
            key = f"{name}.weight@{iw['bits']}"
            entries.append(
                {"name": key, "kind": "int", "shape": list(iw["q"].shape), "bits": iw["bits"],
                 "signed": iw["signed"], "nbytes": len(data)}
            )
            chunks.append(data)
            report.int_bytes += len(data)
            report.int_params += int(iw["q"].numel())
            report.layers[name].append(iw["bits"])
            add_float(f"{key}.scale", _channel_array(iw["scale"]))
            if bool(torch.any(iw["zero_point"] != 0)):
                add_float(f"{key}.zero_point", _channel_array(iw["zero_point"]))
    seen = set()
    for name, param in model.named_parameters():
        if id(param) in skip or id(param) in seen or param.numel() == 0:
            continue
        seen.add(id(param))
        add_float(name, param.detach().cpu().float().numpy())
    header = json.dumps({"version": VERSION, "tensors": entries}, separators=(",", ":")).encode()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(MAGIC + bytes([VERSION]) + struct.pack("<I", len(header)) + header)
        for chunk in chunks:
            f.write(chunk)
    report.header_bytes = len(MAGIC) + 1 + 4 + len(header)
    report.size_bytes = path.stat().st_size
    return report


def unpack_model(path: str | os.PathLike) -> Dict[str, Any]:
    """Read a file written by :func:`pack_model`.

    Returns ``{"tensors": {name: array}, "dequantized": {layer name: {bits: float32 weight}}}``;
    integer tensors come back as int64 arrays, the others as float32.
    """
    blob = Path(path).read_bytes()
    if blob[:4] != MAGIC:
        raise ValueError(f"{path} is not a packed dynaquant model (magic {blob[:4]!r})")
    (length,) = struct.unpack("<I", blob[5:9])
    header = json.loads(blob[9 : 9 + length])
    offset = 9 + length
    tensors: Dict[str, np.ndarray] = {}
    meta: Dict[str, Dict[str, Any]] = {}
    for entry in header["tensors"]:
        data = blob[offset : offset + entry["nbytes"]]
        offset += entry["nbytes"]
        count = math.prod(entry["shape"])
        if entry["kind"] == "int":
            values = unpack_ints(data, entry["bits"], count, entry["signed"])
        else:
            values = np.frombuffer(data, dtype="<f4", count=count).astype(np.float32)
        tensors[entry["name"]] = values.reshape(entry["shape"])
        meta[entry["name"]] = entry
    if offset != len(blob):
        raise ValueError(f"{path}: {len(blob) - offset} trailing bytes")
    dequantized: Dict[str, Dict[int, np.ndarray]] = {}
    for key, entry in meta.items():
        if entry["kind"] != "int":
            continue
        layer, bits = key.rsplit(".weight@", 1)
        q = torch.from_numpy(tensors[key])
        scale = torch.from_numpy(tensors[f"{key}.scale"].copy())
        zero = tensors.get(f"{key}.zero_point")
        zero = torch.from_numpy(zero.copy()) if zero is not None else torch.zeros(())
        dequantized.setdefault(layer, {})[int(bits)] = ((q.float() - zero) * scale).numpy()
    return {"tensors": tensors, "dequantized": dequantized}
