"""One inter-process lock for the data caches (sample data, sample indices).

``fcntl.flock`` on a lock file: it needs no process group (ranks call it before one exists), works across
processes of one node and on shared file systems that support flock, and is released by the kernel if its
holder is killed, so a crashed builder never leaves the cache locked.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
