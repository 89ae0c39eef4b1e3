"""Writing files the user owns: atomically, never replacing what is not a regular file.

Every output of the package goes through :func:`write_atomic`: the data goes to a uniquely named
temporary file in the same folder, is flushed to disk, then renamed over the target, so a crash,
a kill or a full disk leaves either the old file or the new one, and two processes writing the
same path never see each other's half. A symbolic link is followed (the file it points to is
replaced, the link kept); a device, FIFO or socket (``-o /dev/null``) is written through, never
replaced; a folder is refused.

Example:
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "a.json"
    >>> write_atomic(path, '{"ok": true}\\n').read_text()
    '{"ok": true}\\n'
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["LockedError", "check_distinct", "folder_lock", "write_atomic", "write_json"]

Writer = Callable[[IO[bytes]], None]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: str | os.PathLike, data: bytes | str | Writer) -> Path:
    """Write ``data`` (bytes, text, or a function that writes to a binary file) to ``path``.

    Raises:
        IsADirectoryError: if ``path`` is a folder.
        OSError: from the file system, naming ``path`` (e.g. a full disk); the old file is kept.
    """
    path = Path(path)
    writer = _writer(data)
    if path.is_symlink():
        path = path.resolve()
    if path.exists() and path.is_dir():
        raise IsADirectoryError(f"{path} is a folder, not a file")
    if path.exists() and not stat.S_ISREG(path.stat().st_mode):
        with open(path, "wb") as f:  # a device or FIFO: write through, never replace it
            writer(f)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        _replace_atomically(path, writer)
    except OSError as err:
        if err.filename is None:
            raise type(err)(err.errno, f"cannot write {path}: {err.strerror}", str(path)) from err
        raise
    return path


def _writer(data: bytes | str | Writer) -> Writer:
    if callable(data):
        return data
    payload = data.encode() if isinstance(data, str) else bytes(data)
    return lambda f: f.write(payload)


def _replace_atomically(path: Path, writer: Writer) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600 files; use what open() would
        with os.fdopen(fd, "wb") as f:
            writer(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    with contextlib.suppress(OSError):  # some file systems cannot sync a folder
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """``obj`` as indented JSON (strict: NaN and infinities are refused, they are not JSON)."""
    return write_atomic(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def check_distinct(output: str | os.PathLike, *inputs: str | os.PathLike) -> None:
    """Refuse an output path that is one of the inputs (``encode x.png -o x.png``).

    Raises:
        ValueError: naming both.
    """
    out = Path(output)
    for item in inputs:
        src = Path(item)
        if out.exists() and src.exists() and os.path.samefile(out, src):
            raise ValueError(f"output {out} is the input {src}; choose another output file")
        if not out.exists() and out.resolve() == src.resolve():
            raise ValueError(f"output {out} is the input {src}; choose another output file")



class LockedError(RuntimeError):
    """Another process holds the lock on a folder."""


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike) -> Iterator[Path]:
    """Hold an exclusive lock on ``folder`` (a ``.lock`` file in it) for the duration of the block.

    Raises:
        LockedError: at once, if another process holds it.
    """
    import fcntl

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockedError(f"{folder} is in use by another process (locked); wait for it or use another folder") from None
        try:
            yield folder
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
