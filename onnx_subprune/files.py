"""Output files: checked up front, written atomically (temporary file + rename)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import SubpruneError


def check_writable(path: str | os.PathLike) -> None:
    """Fail early, with one line, when ``path`` cannot be written."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise SubpruneError(f"cannot write {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise SubpruneError(f"cannot write {path}: folder {folder} is not writable")
    if path.is_dir():
        raise SubpruneError(f"cannot write {path}: it is a folder")


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path`` and rename it: never a partial file."""
    path = Path(path)
    check_writable(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise SubpruneError(f"cannot write {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except OSError as exc:
        os.unlink(tmp)
        raise SubpruneError(f"cannot write {path}: {exc.strerror}") from None
    except BaseException:
        os.unlink(tmp)
        raise
