"""Writing outputs: whole or not at all. A file is written to a temporary name beside it and
renamed into place, so an interruption never leaves a half-written result where a good one (or
nothing) was."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["write_atomic", "write_atomic_with", "atomic_path", "write_npz_atomic"]


def _temp_beside(path: Path, suffix: str = ".tmp") -> tuple[int, str]:
    """A temporary file beside `path` with the permissions a plain open() would give (mkstemp
    makes it owner-only, which the renamed output would keep)."""
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(tmp, 0o666 & ~mask)
    return handle, tmp


def write_atomic(path: str | Path, data: str | bytes) -> Path:
    """Write `data` (text as UTF-8) to `path`, creating its folder; return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    handle, tmp = _temp_beside(path)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(payload)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_atomic_with(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Let `write` fill a temporary file beside `path`, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = _temp_beside(path)
    os.close(handle)
    try:
        write(Path(tmp))
        _fsync(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path` with the same suffix (so a writer that appends a missing
    suffix, as numpy's savez does, writes exactly there), renamed to `path` when the block
    ends without an error and removed when it raises."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = _temp_beside(path, f".tmp{path.suffix}")
    os.close(handle)
    try:
        yield Path(tmp)
        _fsync(Path(tmp))
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_npz_atomic(path: str | Path, arrays: Mapping[str, Any], *,
                     compressed: bool = True) -> Path:
    """Arrays to exactly `path` (numpy appends `.npz` to a name; a file handle it does not)."""
    import numpy as np

    save = np.savez_compressed if compressed else np.savez

    def write(tmp: Path) -> None:
        with tmp.open("wb") as handle:
            save(handle, **arrays)

    return write_atomic_with(path, write)


def _fsync(path: Path) -> None:
    """Flush a written file to disk before it is renamed into place."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot; the rename still replaces whole files
    finally:
        os.close(fd)
