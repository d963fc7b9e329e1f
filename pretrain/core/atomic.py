"""The one atomic write of the project: a temporary file in the same folder, fsync, rename, fsync the folder.

A reader (another rank, a rerun after ``kill -9``, a machine that lost power) sees either the old file or
the whole new one, never a half-written file. Checkpoints, token shards, manifests, completion markers and
the data caches all write through here, so they agree on what "written" means.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import IO, Iterator


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make a rename inside ``folder`` durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def tmp_path(path: str | os.PathLike) -> Path:
    """A temporary name beside ``path``, private to this process (concurrent writers never share one)."""
    path = Path(path)
    return path.with_name(f"{path.name}.tmp-{os.getpid()}")


def commit(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """fsync the finished temporary file ``tmp`` and rename it onto ``path`` (for files written by another
    library, e.g. Parquet or a token shard)."""
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(Path(path).parent)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """``with atomic_open(p, "w") as f: f.write(...)``: the file appears at ``p`` whole on success, and
    nothing appears (the temporary file is removed) when the block raises."""
    if "w" not in mode:
        raise ValueError(f"atomic_open writes files; mode {mode!r} has no 'w'")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path(path)
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    fsync_dir(path.parent)


def atomic_write(path: str | os.PathLike, data: bytes | str) -> None:
    """Write ``data`` (text as UTF-8) to ``path`` atomically and durably."""
    with atomic_open(path, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
