"""A small file format around one image's bitstreams, refusing damaged files and wrong models.

Layout (big-endian)::

    magic     4 bytes  b"DQIC"
    version   u8       FORMAT_VERSION
    model id  16 bytes SHA-256 prefix of the coding model's state_dict (architecture + weights)
    height    u32, width u32                  original image size (before padding)
    ndim      u8, then ndim x u32             latent shape for ``decompress``
              (version 2: ndim is 0, then u16 length and the shape as compact JSON: the named or
              grouped shapes of models on a CompressAI latent codec, e.g. {"y": [...], "hyper": [...]})
    groups    u8, then per group: count u16 and count x u32 string lengths
    payload   the strings, in order
    crc32     u32 over everything above

Example:
    >>> blob = pack(b"\\x01" * 16, (5, 7), [2, 3], [[b"ab"], [b"c"]])
    >>> unpack(blob, expected_model_id=b"\\x01" * 16).strings
    [[b'ab'], [b'c']]
    >>> unpack(blob[:-1] + bytes([blob[-1] ^ 1]))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    dynaquant_brevitas.io.container.ContainerError: damaged file: CRC32 mismatch (stored 0x..., computed 0x...)
"""

from __future__ import annotations

import json
import os
import stat
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

MAGIC = b"DQIC"
#: written for a plain latent shape (readable by every earlier build); version 2 for structured ones
FORMAT_VERSION = 1
STRUCTURED_SHAPE_VERSION = 2
#: most shapes a structured latent shape may hold, and how deep it may nest
MAX_SHAPES, MAX_SHAPE_DEPTH = 64, 4
MODEL_ID_BYTES = 16
#: Largest image a container may describe (height x width), so that a damaged or crafted header
#: cannot make the decoder allocate without bound; 2**28 pixels is e.g. 16384 x 16384.
MAX_PIXELS = 1 << 28
#: Largest container file read: far more than any image within MAX_PIXELS codes to.
MAX_FILE_BYTES = 1 << 30
_HEAD = struct.Struct(">4sB16sIIB")
_U8, _U16, _U32 = struct.Struct(">B"), struct.Struct(">H"), struct.Struct(">I")


class ContainerError(ValueError):
    """A container cannot be decoded: not ours, damaged, unsupported version or wrong model."""


@dataclass(frozen=True)
class Container:
    """The decoded fields of a container file."""

    model_id: bytes
    size: tuple[int, int]
    shape: Any  # a list of ints, or dicts and lists of such lists (see shape_leaves)
    strings: list[list[bytes]]
    version: int = FORMAT_VERSION


def pack(
    model_id: bytes, size: tuple[int, int], shape: Any, strings: Sequence[Sequence[bytes]]
) -> bytes:
    """Serialise bitstreams with their model id, image size and latent shape (adds a CRC32).

    ``shape``: a list of ints (format version 1), or dicts and lists of such lists (version 2).
    """
    if len(model_id) != MODEL_ID_BYTES:
        raise ValueError(f"model id must be {MODEL_ID_BYTES} bytes, got {len(model_id)}")
    plain = isinstance(shape, (list, tuple)) and all(isinstance(d, int) for d in shape)
    problem = _check_header(tuple(size), list(shape) if plain else shape)
    if problem:
        raise ValueError(f"cannot pack: {problem}")
    if plain:
        parts = [_HEAD.pack(MAGIC, FORMAT_VERSION, model_id, size[0], size[1], len(shape))]
        parts += [_U32.pack(int(d)) for d in shape]
    else:
        text = json.dumps(shape, separators=(",", ":")).encode()
        if len(text) > 0xFFFF:
            raise ValueError(f"cannot pack: the latent shape takes {len(text)} bytes as JSON, more than 65535")
        parts = [_HEAD.pack(MAGIC, STRUCTURED_SHAPE_VERSION, model_id, size[0], size[1], 0), _U16.pack(len(text)), text]
    parts.append(_U8.pack(len(strings)))
    for group in strings:
        parts.append(_U16.pack(len(group)))
        parts += [_U32.pack(len(s)) for s in group]
    parts += [bytes(s) for group in strings for s in group]
    body = b"".join(parts)
    return body + _U32.pack(zlib.crc32(body))


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ContainerError("damaged file: truncated")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def read(self, fmt: struct.Struct) -> int:
        return fmt.unpack(self.take(fmt.size))[0]


def read_container_file(path: str | os.PathLike) -> bytes:
    """The bytes of a container file; refuses devices, FIFOs and folders (``/dev/zero`` is not
    read) and files over :data:`MAX_FILE_BYTES`, before reading."""
    try:
        info = os.stat(path)
    except OSError as err:
        raise ContainerError(f"cannot read {path}: {err.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ContainerError(f"{path} is not a regular file")
    if info.st_size > MAX_FILE_BYTES:
        raise ContainerError(f"{path} has {info.st_size} bytes, more than a container holds ({MAX_FILE_BYTES})")
    with open(path, "rb") as f:
        data = f.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise ContainerError(f"{path} grew past {MAX_FILE_BYTES} bytes while being read")
    return data


def unpack(data: bytes, expected_model_id: bytes | None = None) -> Container:
    """Parse and verify a container; raises :class:`ContainerError` with the reason if unusable."""
    if not data:
        raise ContainerError("empty file")
    if len(data) < len(MAGIC) or data[: len(MAGIC)] != MAGIC:
        raise ContainerError("not a DynaQuant image file (bad magic bytes)")
    if len(data) < _HEAD.size + _U32.size:
        raise ContainerError("damaged file: truncated")
    version = data[len(MAGIC)]
    if version not in (FORMAT_VERSION, STRUCTURED_SHAPE_VERSION):
        raise ContainerError(
            f"unsupported format version {version} (this build reads versions {FORMAT_VERSION} and "
            f"{STRUCTURED_SHAPE_VERSION})"
        )
    body, (stored,) = data[:-4], _U32.unpack(data[-4:])
    computed = zlib.crc32(body)
    if stored != computed:
        raise ContainerError(
            f"damaged file: CRC32 mismatch (stored 0x{stored:08x}, computed 0x{computed:08x})"
        )
    reader = _Reader(body)
    _, _, model_id, height, width, ndim = _HEAD.unpack(reader.take(_HEAD.size))
    if expected_model_id is not None and model_id != expected_model_id:
        raise ContainerError(
            f"wrong model: the file was encoded with model {model_id.hex()}, "
            f"the given checkpoint is model {expected_model_id.hex()}"
        )
    if version == STRUCTURED_SHAPE_VERSION:
        shape = _read_structured_shape(reader)
    else:
        shape = [reader.read(_U32) for _ in range(ndim)]
    lengths = [[reader.read(_U32) for _ in range(reader.read(_U16))] for _ in range(reader.read(_U8))]
    strings = [[reader.take(n) for n in group] for group in lengths]
    if reader.pos != len(body):
        raise ContainerError("damaged file: unexpected trailing bytes")
    problem = _check_header((height, width), shape)
    if problem:
        raise ContainerError(f"unusable file: {problem}")
    return Container(model_id, (height, width), shape, strings, version)


def shape_leaves(shape: Any) -> list[list[int]]:
    """The plain shapes inside a latent shape, in order (one for a plain shape).

    >>> shape_leaves({"y": [[4, 8, 8], [8, 8, 8]], "hyper": [2, 2]})
    [[4, 8, 8], [8, 8, 8], [2, 2]]
    """
    if isinstance(shape, dict):
        return [leaf for value in shape.values() for leaf in shape_leaves(value)]
    if shape and all(isinstance(s, (dict, list)) for s in shape):
        return [leaf for value in shape for leaf in shape_leaves(value)]
    return [list(shape)]


def _read_structured_shape(reader: _Reader) -> Any:
    try:
        return json.loads(reader.take(reader.read(_U16)).decode())
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ContainerError("damaged file: the latent shape is not readable") from None


def _shape_problem(shape: Any, depth: int = 0) -> str:
    """Why a (possibly structured) latent shape is unusable ('' if it is fine)."""
    if depth > MAX_SHAPE_DEPTH:
        return f"latent shape nested deeper than {MAX_SHAPE_DEPTH}"
    if isinstance(shape, dict) and shape and all(isinstance(k, str) for k in shape):
        return next(filter(None, (_shape_problem(v, depth + 1) for v in shape.values())), "")
    if isinstance(shape, list) and shape and all(isinstance(s, (dict, list)) for s in shape):
        return next(filter(None, (_shape_problem(v, depth + 1) for v in shape)), "")
    if isinstance(shape, list) and shape and all(type(d) is int and d >= 1 for d in shape):
        return ""
    return f"invalid latent shape {shape}"


def _check_header(size: tuple[int, int], shape: Any) -> str:
    """Why an image size and latent shape cannot be decoded ('' if they can)."""
    height, width = size
    if height < 1 or width < 1:
        return f"empty image size {width}x{height}"
    if height * width > MAX_PIXELS:
        return f"image size {width}x{height} exceeds the limit of {MAX_PIXELS} pixels"
    problem = _shape_problem(shape)
    if not problem and len(shape_leaves(shape)) > MAX_SHAPES:
        problem = f"latent shape holds more than {MAX_SHAPES} shapes"
    return problem
