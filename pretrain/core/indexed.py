"""The Megatron-family indexed token format: ``<prefix>.bin`` (raw tokens) + ``<prefix>.idx``.

This is the ONE implementation of the format in the project: the data pipeline writes shards with
:class:`IndexedDatasetWriter`, the trainer reads them with :class:`IndexedDataset`. Files written here load
unchanged in Megatron-LM / Megatron-DeepSpeed / GPT-NeoX (``MMapIndexedDataset``) and theirs load here.

``.idx`` layout (little endian)::

    magic      9 bytes  b"MMIDIDX\\x00\\x00"
    version    u64      1
    dtype      u8       code (see DTYPE_CODES)
    n_seq      u64      number of sequences
    n_doc      u64      number of entries in the document index (documents + 1)
    sizes      i32[n_seq]   tokens per sequence
    pointers   i64[n_seq]   byte offset of each sequence in .bin
    doc_idx    i64[n_doc]   sequence index where each document starts, plus the end sentinel

We write one sequence per document, so ``doc_idx == arange(n_seq + 1)``; readers accept any doc index.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from pretrain.core.atomic import atomic_open, commit
from pretrain.core.errors import DataError

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
DTYPE_CODES: dict[int, type] = {
    1: np.uint8,
    2: np.int8,
    3: np.int16,
    4: np.int32,
    5: np.int64,
    6: np.float64,
    7: np.float32,
    8: np.uint16,
}
_CODE_OF = {np.dtype(v): k for k, v in DTYPE_CODES.items()}
_HEADER = struct.Struct("<9sQBQQ")  # magic, version, dtype code, n_seq, n_doc


def best_dtype(vocab_size: int) -> type:
    """uint16 when every token id fits (the Megatron rule: vocab < 65,500), int32 otherwise."""
    return np.uint16 if vocab_size < 65500 else np.int32


def idx_path(prefix: str | os.PathLike) -> str:
    return f"{prefix}.idx"


def bin_path(prefix: str | os.PathLike) -> str:
    return f"{prefix}.bin"


class IndexedDatasetWriter:
    """Streams documents into ``<prefix>.bin`` and writes ``<prefix>.idx`` on :meth:`finalize`.

    Files are written under temporary names and renamed at the end, so a killed writer never leaves a
    ``.bin``/``.idx`` pair that looks complete.
    """

    def __init__(self, prefix: str | os.PathLike, dtype: type = np.uint16):
        self.prefix = str(prefix)
        self.dtype = np.dtype(dtype)
        if self.dtype not in _CODE_OF:
            raise ValueError(f"unsupported token dtype {self.dtype}; expected one of {sorted(map(str, _CODE_OF))}")
        Path(self.prefix).parent.mkdir(parents=True, exist_ok=True)
        self._bin_tmp = bin_path(self.prefix) + ".tmp"
        self._bin = open(self._bin_tmp, "wb")
        self._sizes: list[int] = []
        self._doc_idx: list[int] = [0]
        self._max = np.iinfo(self.dtype).max if self.dtype.kind in "iu" else None

    def add_document(self, tokens: Sequence[int] | np.ndarray) -> None:
        arr = np.asarray(tokens)
        if self._max is not None and arr.size and (arr.max() > self._max or arr.min() < 0):
            raise ValueError(f"token id out of range for {self.dtype} in {self.prefix}: max {arr.max()}")
        self._bin.write(arr.astype(self.dtype, copy=False).tobytes(order="C"))
        self._sizes.append(int(arr.size))
        self._doc_idx.append(len(self._sizes))

    def add_documents(self, docs: Iterable[Sequence[int] | np.ndarray]) -> None:
        for d in docs:
            self.add_document(d)

    def finalize(self) -> None:
        self._bin.close()
        write_index(idx_path(self.prefix), self.dtype, np.asarray(self._sizes, np.int32), np.asarray(self._doc_idx, np.int64))
        commit(self._bin_tmp, bin_path(self.prefix))

    def __enter__(self) -> "IndexedDatasetWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finalize()
        else:
            self._bin.close()
            Path(self._bin_tmp).unlink(missing_ok=True)


def write_index(path: str, dtype, sizes: np.ndarray, doc_idx: np.ndarray) -> None:
    dtype = np.dtype(dtype)
    sizes = np.asarray(sizes, dtype=np.int32)
    pointers = np.zeros(len(sizes), dtype=np.int64)
    if len(sizes) > 1:
        np.cumsum(sizes[:-1].astype(np.int64) * dtype.itemsize, out=pointers[1:])
    with atomic_open(path, "wb") as f:
        f.write(_HEADER.pack(MAGIC, VERSION, _CODE_OF[dtype], len(sizes), len(doc_idx)))
        f.write(sizes.tobytes(order="C"))
        f.write(pointers.tobytes(order="C"))
        f.write(np.asarray(doc_idx, dtype=np.int64).tobytes(order="C"))


class IndexedDataset:
    """Memory-mapped reader. ``ds[i]`` is the token array of sequence ``i`` (a view, no copy).

    Validates the index against the ``.bin`` size when opened, so a truncated or foreign file fails with a
    message naming it instead of returning garbage mid-training.
    """

    def __init__(self, prefix: str | os.PathLike):
        self.prefix = str(prefix)
        ipath, bpath = idx_path(self.prefix), bin_path(self.prefix)
        for p in (ipath, bpath):
            if not os.path.isfile(p):
                raise DataError(f"missing data file {p} (expected the .bin/.idx pair of token shard '{self.prefix}')")
        with open(ipath, "rb") as f:
            head = f.read(_HEADER.size)
        if head[:9] == MAGIC and len(head) < _HEADER.size:
            raise DataError(f"{ipath} is truncated: {len(head)} bytes, shorter than the {_HEADER.size}-byte header")
        if head[:9] != MAGIC:
            raise DataError(
                f"{ipath} is not an indexed token file: expected magic {MAGIC!r}, found {head[:9]!r}"
            )
        _, version, code, n_seq, n_doc = _HEADER.unpack(head)
        if version != VERSION:
            raise DataError(f"{ipath}: unsupported index version {version} (expected {VERSION})")
        if code not in DTYPE_CODES:
            raise DataError(f"{ipath}: unknown dtype code {code} (expected one of {sorted(DTYPE_CODES)})")
        self.dtype = np.dtype(DTYPE_CODES[code])
        expected = _HEADER.size + n_seq * 4 + n_seq * 8 + n_doc * 8
        actual = os.path.getsize(ipath)
        if actual < expected:
            raise DataError(f"{ipath} is truncated: {actual} bytes, header promises {expected}")
        self._idx = np.memmap(ipath, mode="r", dtype=np.uint8)
        off = _HEADER.size
        self.sizes = np.frombuffer(self._idx, dtype=np.int32, count=n_seq, offset=off)
        off += n_seq * 4
        self.pointers = np.frombuffer(self._idx, dtype=np.int64, count=n_seq, offset=off)
        off += n_seq * 8
        self.doc_idx = np.frombuffer(self._idx, dtype=np.int64, count=n_doc, offset=off)
        need = int(self.pointers[-1] + self.sizes[-1] * self.dtype.itemsize) if n_seq else 0
        have = os.path.getsize(bpath)
        if have < need:
            raise DataError(
                f"{bpath} is truncated: {have} bytes, its index {ipath} needs {need} "
                f"({n_seq} sequences of {self.dtype})"
            )
        self._bin = np.memmap(bpath, mode="r", dtype=np.uint8) if have else np.zeros(0, np.uint8)

    def __len__(self) -> int:
        return len(self.sizes)

    @property
    def num_tokens(self) -> int:
        return int(self.sizes.sum(dtype=np.int64))

    def get(self, i: int, offset: int = 0, length: int | None = None) -> np.ndarray:
        """Tokens ``[offset, offset+length)`` of sequence ``i``."""
        size = int(self.sizes[i])
        if length is None:
            length = size - offset
        start = int(self.pointers[i]) + offset * self.dtype.itemsize
        return np.frombuffer(self._bin, dtype=self.dtype, count=length, offset=start)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.get(i)

    def max_token(self, chunk: int = 1 << 24) -> int:
        """Largest token id in the shard (streams the .bin; used to check against the model vocabulary)."""
        toks = np.frombuffer(self._bin, dtype=self.dtype) if len(self._bin) else np.zeros(0, self.dtype)
        best = -1
        for s in range(0, toks.size, chunk):
            best = max(best, int(toks[s : s + chunk].max()))
        return best
