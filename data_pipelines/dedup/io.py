"""Byte-deterministic, atomic array files for the dedup stages.

``np.savez`` stamps the current time into its zip entries, so the same arrays give different bytes on
each run; here entries carry a fixed timestamp and are written in the given order. Every file is written
to a temporary name and renamed, so a killed stage never leaves a half-written file that a rerun trusts
(``pretrain.core.atomic``, with fsync).
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from typing import Any, Mapping

import numpy as np

from pretrain.core.atomic import atomic_write
from pretrain.core.errors import DataError

_EPOCH = (1980, 1, 1, 0, 0, 0)


def save_npy(path: str, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.ascontiguousarray(array), allow_pickle=False)
    atomic_write(path, buf.getvalue())


def save_json(path: str, obj: Any) -> None:
    atomic_write(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


def save_arrays(path: str, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
    """An uncompressed ``.npz`` (readable with ``np.load``) holding ``arrays`` plus a JSON ``meta`` entry."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        entries = {"meta": np.frombuffer(json.dumps(dict(meta), sort_keys=True).encode(), dtype=np.uint8)}
        entries.update(arrays)
        for name, array in entries.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_EPOCH)
            info.external_attr = 0o644 << 16
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)
            zf.writestr(info, member.getvalue())
    atomic_write(path, buf.getvalue())


class ArrayFile:
    """Lazy reader of a :func:`save_arrays` file: ``meta`` at once, arrays on access, clear errors."""

    def __init__(self, path: str, what: str):
        self.path = path
        self.what = what
        if not os.path.isfile(path):
            raise DataError(f"{what} {path} does not exist")
        try:
            self._npz = np.load(path, allow_pickle=False)
            self.meta: dict[str, Any] = json.loads(bytes(self._npz["meta"]).decode())
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
            raise DataError(f"{what} {path} is unreadable ({exc}); rerun the stage that writes it") from None

    def __getitem__(self, name: str) -> np.ndarray:
        try:
            return self._npz[name]
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
            raise DataError(f"{self.what} {self.path}: cannot read array {name!r} ({exc})") from None

    def close(self) -> None:
        self._npz.close()

    def __enter__(self) -> "ArrayFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load_npy(path: str, what: str) -> np.ndarray:
    if not os.path.isfile(path):
        raise DataError(f"{what} {path} does not exist")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{what} {path} is unreadable ({exc}); rerun the stage that writes it") from None
