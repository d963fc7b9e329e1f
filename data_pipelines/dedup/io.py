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
import shutil
import struct
import zipfile
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from pretrain.core.atomic import atomic_open, atomic_write
from pretrain.core.errors import DataError

_EPOCH = (1980, 1, 1, 0, 0, 0)


def save_npy(path: str, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.ascontiguousarray(array), allow_pickle=False)
    atomic_write(path, buf.getvalue())


def save_json(path: str, obj: Any) -> None:
    atomic_write(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


@dataclass(frozen=True)
class RawArray:
    """An array whose bytes (C order) are in a raw file: :func:`save_arrays` copies it in blocks, never whole."""

    path: str
    shape: tuple[int, ...]
    dtype: np.dtype

    def header(self) -> bytes:
        """The ``.npy`` header ``np.lib.format.write_array`` writes for such an array."""
        buf = io.BytesIO()
        np.lib.format.write_array_header_1_0(buf, {"descr": np.lib.format.dtype_to_descr(np.dtype(self.dtype)),
                                                   "fortran_order": False, "shape": tuple(self.shape)})
        return buf.getvalue()

    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


def save_arrays(path: str, arrays: Mapping[str, np.ndarray | RawArray], meta: Mapping[str, Any]) -> None:
    """An uncompressed ``.npz`` (readable with ``np.load``) holding ``arrays`` plus a JSON ``meta`` entry,
    written to the file entry by entry (a :class:`RawArray` in blocks): the same bytes either way."""
    entries: dict[str, np.ndarray | RawArray] = {
        "meta": np.frombuffer(json.dumps(dict(meta), sort_keys=True).encode(), dtype=np.uint8)}
    entries.update(arrays)
    with atomic_open(path, "wb") as fh, zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, array in entries.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_EPOCH)
            info.external_attr = 0o644 << 16
            if isinstance(array, RawArray):
                if os.path.getsize(array.path) != array.nbytes():
                    raise DataError(f"{array.path}: {os.path.getsize(array.path)} bytes, expected {array.nbytes()}")
                header = array.header()
                info.file_size = len(header) + array.nbytes()  # as writestr sets it: the same zip bytes
                with zf.open(info, "w") as dest, open(array.path, "rb") as src:
                    dest.write(header)
                    shutil.copyfileobj(src, dest, 1 << 20)
            else:
                member = io.BytesIO()
                np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)
                zf.writestr(info, member.getvalue())


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

    def reader(self, name: str) -> "StoredArray":
        """Slices of array ``name`` along its first axis, read from disk on demand (never the whole array)."""
        try:
            info = self._npz.zip.getinfo(f"{name}.npy")
        except KeyError:
            raise DataError(f"{self.what} {self.path}: cannot read array {name!r} (no such entry)") from None
        if info.compress_type != zipfile.ZIP_STORED:  # save_arrays never compresses; a foreign file is read whole
            return StoredArray(self.path, self.what, name, array=self[name])
        return StoredArray(self.path, self.what, name, info=info)

    def close(self) -> None:
        self._npz.close()

    def __enter__(self) -> "ArrayFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class StoredArray:
    """Row ranges of one uncompressed ``.npz`` entry, read with a seek and one ``readinto`` each.

    ``np.load`` of an ``.npz`` entry reads all of it; the bounded dedup steps need a few rows of arrays
    (full signatures, shingle sets) far larger than their memory budget. An entry written by
    :func:`save_arrays` is stored, so its bytes lie contiguous in the file after the zip local header and
    the ``.npy`` header.
    """

    def __init__(self, path: str, what: str, name: str, info: zipfile.ZipInfo | None = None,
                 array: np.ndarray | None = None):
        self.path, self.what, self.name = path, what, name
        self._array = array
        if array is not None:
            self.shape, self.dtype = array.shape, array.dtype
            return
        assert info is not None
        try:
            with open(path, "rb") as fh:
                fh.seek(info.header_offset)
                local = fh.read(30)
                if len(local) != 30 or local[:4] != b"PK\x03\x04":
                    raise ValueError("bad zip local header")
                name_len, extra_len = struct.unpack("<HH", local[26:30])
                fh.seek(info.header_offset + 30 + name_len + extra_len)
                version = np.lib.format.read_magic(fh)
                fmt = np.lib.format
                read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
                shape, fortran, dtype = read_header(fh)
                self._offset = fh.tell()
        except (OSError, ValueError, struct.error) as exc:
            raise DataError(f"{what} {path}: cannot read array {name!r} ({exc})") from None
        if fortran or dtype.hasobject or not shape:
            raise DataError(f"{what} {path}: array {name!r} is not a C-ordered numeric array; "
                            "rerun the stage that writes it")
        self.shape, self.dtype = tuple(shape), dtype
        self._row_items = int(np.prod(self.shape[1:], dtype=np.int64))
        if self._offset + self.shape[0] * self._row_items * dtype.itemsize > os.path.getsize(path):
            raise DataError(f"{what} {path}: array {name!r} is truncated; rerun the stage that writes it")

    def __len__(self) -> int:
        return self.shape[0]

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` (clipped to the array) as a new array."""
        start, stop = max(0, int(start)), min(int(stop), self.shape[0])
        stop = max(stop, start)
        if self._array is not None:
            return np.array(self._array[start:stop])
        out = np.empty((stop - start,) + self.shape[1:], dtype=self.dtype)
        if out.size == 0:
            return out
        with open(self.path, "rb") as fh:
            fh.seek(self._offset + start * self._row_items * self.dtype.itemsize)
            got = fh.readinto(memoryview(out).cast("B"))
        if got != out.nbytes:
            raise DataError(f"{self.what} {self.path}: array {self.name!r} is truncated; "
                            "rerun the stage that writes it")
        return out


def load_npy(path: str, what: str) -> np.ndarray:
    if not os.path.isfile(path):
        raise DataError(f"{what} {path} does not exist")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{what} {path} is unreadable ({exc}); rerun the stage that writes it") from None
