"""Completion markers: what makes a killed run resumable and a rerun cheap.

Every unit of work (one part of a per-part stage, or a global stage) writes its output under a temporary
name, renames it, and only then writes its **completion marker** (``<name>.done.json``, atomic rename as
well) holding the unit's statistics and the fingerprint of the config it was made with. A rerun skips units
whose marker exists with the current fingerprint and redoes the rest, so after ``kill -9`` only unfinished
units are redone and the output is byte-identical to an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Any

from pretrain.core.atomic import atomic_write
from pretrain.core.errors import DataError

log = logging.getLogger(__name__)


def dump_json(obj: Any) -> bytes:
    """Canonical JSON bytes (sorted keys, fixed indentation) so equal content gives equal files."""
    return (json.dumps(obj, indent=1, sort_keys=True, ensure_ascii=False, default=str) + "\n").encode("utf-8")


def fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def write_marker(path: str | os.PathLike, fp: str, payload: dict[str, Any]) -> None:
    """The completion marker of a unit of work: written last, atomically."""
    atomic_write(path, dump_json({"fingerprint": fp, **payload}))


def read_marker(path: str | os.PathLike, fp: str) -> dict[str, Any] | None:
    """The marker's payload if the unit is complete with config fingerprint ``fp``; None otherwise."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        log.warning("ignoring unreadable completion marker %s (%s); the unit will be redone", path, e)
        return None
    if data.get("fingerprint") != fp:
        return None
    return data


def remove_stale_tmp(directory: str | os.PathLike, stem: str = "") -> int:
    """Delete temporary files a killed run left in ``directory`` whose names start with ``stem``.

    Called for one part (``stem="part-00003"``) just before that part is redone, or for a global stage's own
    folder, so concurrent shard tasks never touch each other's files. Returns how many were removed.
    """
    n = 0
    if not os.path.isdir(directory):
        return 0
    for f in os.listdir(directory):
        if f.startswith(stem) and ".tmp" in f:
            try:
                os.unlink(os.path.join(directory, f))
                n += 1
            except OSError:
                pass
    return n


def require(condition: bool, message: str) -> None:
    """A missing prerequisite (a stage that has not run) is a :class:`DataError` with what to run."""
    if not condition:
        raise DataError(message)
