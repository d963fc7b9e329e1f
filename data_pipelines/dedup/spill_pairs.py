"""Document pairs on disk, given back sorted and distinct within a memory budget (the bounded bucket step).

A bucket part finds its edges one radix file at a time, and a corpus with many duplicates has about as many
edges as documents, each found in several bands. Held in memory, they grow with the duplicates whatever
``dedup.memory_mb`` says. Here each pair ``(u, v)`` of global keys becomes one uint64, ``id(u) << 32 | id(v)``
with the dense document ids of :class:`DocIds` (key order, so the uint64 order is the pairs' order), and is
appended to one of 256 files by the top 8 bits of that number's range. A file that fits in the budget,
sorted, is read back, sorted and made distinct; a larger one is first split the same way by its next 8 bits.
Equal pairs always share a file, so the files in order give every distinct pair once, in order. Pairs wait
in memory up to a sixteenth of the budget before they are appended.
"""

from __future__ import annotations

import os
import shutil
from typing import Iterator

import numpy as np

from data_pipelines.dedup.signatures import ROW_BITS, split_keys
from pretrain.core.errors import ConfigError, DataError

_FAN = 8  # bits per split: 256 files
_SORT_OVERHEAD = 4  # bytes held while sorting a file, per byte of it
_HELD_SHARE = 16  # pairs wait in memory up to this fraction of the budget (about 3x that while appended)
_KEYS_OVERHEAD = 8  # bytes per byte of pair numbers while they become keys: done in blocks of budget / this
_U32 = np.uint64(32)
_LOW = np.uint64(0xFFFFFFFF)


def id_dtype(total_docs: int) -> np.dtype:
    """The dense document ids' dtype: 4 bytes below 2**31 documents, 8 from there on."""
    return np.dtype(np.int32) if total_docs < 2**31 else np.dtype(np.int64)


class DocIds:
    """Global keys <-> dense document ids (the shards' rows, shard after shard in ascending order)."""

    def __init__(self, shards: dict[int, int]):
        order = sorted(shards)
        self.shards = np.array(order, dtype=np.int64)
        self.counts = np.array([shards[s] for s in order], dtype=np.int64)
        self.offsets = np.concatenate(([0], np.cumsum(self.counts)))
        self.total = int(self.offsets[-1])
        self.dtype = id_dtype(self.total)

    def of(self, keys: np.ndarray) -> np.ndarray:
        shard, row = split_keys(keys)
        at = np.searchsorted(self.shards, shard)
        if len(at) and (at.max() >= len(self.shards) or (self.shards[at] != shard).any()
                        or (row >= self.counts[at]).any()):
            raise DataError("dedup: an edge names a document outside the signature files' shards; "
                            "rerun the bucket stage")
        return (self.offsets[at] + row).astype(self.dtype)

    def keys(self, ids: np.ndarray) -> np.ndarray:
        at = np.searchsorted(self.offsets, ids, side="right") - 1
        return (self.shards[at].astype(np.uint64) << np.uint64(ROW_BITS)) | (ids - self.offsets[at]).astype(np.uint64)


class PairSpill:
    """``add`` pairs of keys in any order, with repeats; ``sorted_pairs`` gives each distinct one, in order."""

    def __init__(self, folder: str, ids: DocIds, budget_bytes: int):
        if ids.total > 2**32:
            raise ConfigError(f"dedup.memory_mb: the bounded bucket step numbers documents in 32 bits; "
                              f"{ids.total:,} documents are more (split the corpus, or dedup.memory_mb=0)")
        self.folder, self.ids = folder, ids
        self.budget = max(int(budget_bytes), 1 << 16)
        self.held: list[np.ndarray] = []
        self.held_bytes = 0
        top = max(1, (max(ids.total, 2) - 1).bit_length() + 32)  # bits of the largest pair number
        self.shift = max(0, top - _FAN)
        shutil.rmtree(folder, ignore_errors=True)  # a killed earlier run's files would be appended to
        os.makedirs(folder)

    def add(self, pairs: np.ndarray) -> None:
        if len(pairs) == 0:
            return
        pairs = pairs.reshape(-1, 2)
        number = (self.ids.of(pairs[:, 0]).astype(np.uint64) << _U32) | self.ids.of(pairs[:, 1]).astype(np.uint64)
        self.held.append(number)
        self.held_bytes += number.nbytes
        if self.held_bytes * _HELD_SHARE >= self.budget:
            self._flush()

    def _flush(self) -> None:
        if self.held:
            _scatter(np.concatenate(self.held), self.shift, os.path.join(self.folder, "p"))
        self.held, self.held_bytes = [], 0

    def sorted_pairs(self) -> Iterator[np.ndarray]:
        """``(n, 2)`` uint64 key blocks: every distinct pair added, in ascending order (each file once)."""
        self._flush()
        try:
            yield from self._sorted(os.path.join(self.folder, "p"), self.shift)
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)

    def _sorted(self, prefix: str, shift: int) -> Iterator[np.ndarray]:
        for r in range(1 << _FAN):
            path = f"{prefix}-{r:03d}.u64"
            if not os.path.exists(path):
                continue
            size = os.path.getsize(path)
            if size * _SORT_OVERHEAD <= self.budget or shift == 0:
                number = np.unique(np.fromfile(path, dtype=np.uint64))
                os.remove(path)
                step = max(1, self.budget // (8 * _KEYS_OVERHEAD))
                for a in range(0, len(number), step):
                    block = number[a:a + step]
                    yield np.stack((self.ids.keys((block >> _U32).astype(np.int64)),
                                    self.ids.keys((block & _LOW).astype(np.int64))), axis=1)
                continue
            sub = max(0, shift - _FAN)  # too big to sort at once: split by the next bits first
            rows = max(1, self.budget // (8 * _SORT_OVERHEAD))
            with open(path, "rb") as fh:
                while len(block := np.fromfile(fh, dtype=np.uint64, count=rows)):
                    _scatter(block, sub, path[:-4], mask=True)
            os.remove(path)
            yield from self._sorted(path[:-4], sub)


def _scatter(number: np.ndarray, shift: int, prefix: str, mask: bool = False) -> None:
    """Append ``number`` to the files ``<prefix>-<r>.u64`` by ``r`` = its bits from ``shift`` up (8 of them)."""
    radix = number >> np.uint64(shift)
    if mask:
        radix &= np.uint64((1 << _FAN) - 1)
    radix = radix.astype(np.uint8)  # 8 bits: a one-byte radix sort
    order = np.argsort(radix, kind="stable")
    radix, number = radix[order], number[order]
    cuts = np.flatnonzero(np.diff(radix)) + 1
    for start, block in zip(np.concatenate(([0], cuts)).tolist(), np.split(number, cuts)):
        with open(f"{prefix}-{int(radix[start]):03d}.u64", "ab") as fh:
            block.tofile(fh)
