"""A small file format around one image's bitstreams, refusing damaged files and wrong models.

Layout (big-endian)::

    magic     4 bytes  b"DQIC"
    version   u8       FORMAT_VERSION
    model id  16 bytes SHA-256 prefix of the coding model's state_dict (architecture + weights)
    height    u32, width u32                  original image size (before padding)
    ndim      u8, then ndim x u32             latent shape for ``decompress``
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

import os
import stat
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

MAGIC = b"DQIC"
FORMAT_VERSION = 1
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
    shape: list[int]
    strings: list[list[bytes]]
    version: int = FORMAT_VERSION


def pack(
    model_id: bytes, size: tuple[int, int], shape: Sequence[int], strings: Sequence[Sequence[bytes]]
) -> bytes:
    """Serialise bitstreams with their model id, image size and latent shape (adds a CRC32)."""
    if len(model_id) != MODEL_ID_BYTES:
        raise ValueError(f"model id must be {MODEL_ID_BYTES} bytes, got {len(model_id)}")
    if isinstance(shape, dict):
        raise ValueError(f"cannot pack: this model reports named latent shapes ({', '.join(shape)}), which container "
                         f"format {FORMAT_VERSION} does not store yet; `dynaquant eval` codes such models for real")
    problem = _check_header(tuple(size), list(shape))
    if problem:
        raise ValueError(f"cannot pack: {problem}")
    parts = [_HEAD.pack(MAGIC, FORMAT_VERSION, model_id, size[0], size[1], len(shape))]
    parts += [_U32.pack(int(d)) for d in shape]
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
    if version != FORMAT_VERSION:
        raise ContainerError(
            f"unsupported format version {version} (this build reads version {FORMAT_VERSION})"
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
    shape = [reader.read(_U32) for _ in range(ndim)]
    lengths = [[reader.read(_U32) for _ in range(reader.read(_U16))] for _ in range(reader.read(_U8))]
    strings = [[reader.take(n) for n in group] for group in lengths]
    if reader.pos != len(body):
        raise ContainerError("damaged file: unexpected trailing bytes")
    problem = _check_header((height, width), shape)
    if problem:
        raise ContainerError(f"unusable file: {problem}")
    return Container(model_id, (height, width), shape, strings, version)


def _check_header(size: tuple[int, int], shape: list[int]) -> str:
    """Why an image size and latent shape cannot be decoded ('' if they can)."""
    height, width = size
    if height < 1 or width < 1:
        return f"empty image size {width}x{height}"
    if height * width > MAX_PIXELS:
        return f"image size {width}x{height} exceeds the limit of {MAX_PIXELS} pixels"
    if not shape or min(shape) < 1:
        return f"invalid latent shape {shape}"
    return ""
