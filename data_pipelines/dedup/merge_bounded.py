"""The merge step within ``dedup.memory_mb``: a union-find over every document, the edges streamed from disk.

The in-memory merge holds every edge of every bucket part at once, and several copies of them while it sorts
them, finds the distinct documents and runs the union-find: about 150 bytes per edge at its peak. The edges
grow with the duplicates, so a corpus that is half duplicates has about as many edges as documents, and the
merge is the one step that sees all of them.

Here the union-find's parent array covers every document, numbered in key order (the shard's offset plus the
row), 4 bytes each (8 from 2**31 documents on), with one more array of the same size that holds, in turn,
the cluster sizes and the reasons: 8 bytes per document whatever the duplicate rate, checked against the
budget before the bucket stage starts (:func:`check_merge_budget`). The edges are read from the part files
in row ranges (:class:`~data_pipelines.dedup.io.StoredArray`) and hooked a chunk at a time: each chunk's
endpoints are followed to their roots (and pointed at them), and the larger root of every crossing edge is
hooked under the smaller one until no edge of the chunk crosses. ``parent[x] <= x`` holds throughout, so a
component's root is its smallest key, the document the rule keeps, whatever the order of the edges. One
pass in ascending blocks then points every document at its root: a block's parents are smaller, so those
before the block are final already.

The distinct candidate pairs of all parts (a pair can collide in bands of two parts) are counted by merging
the parts' sorted edge lists. Every output file is byte-identical to the in-memory merge
(``tests/pipeline/test_dedup_external.py``).
"""

from __future__ import annotations

import math
import os
from collections import Counter
from typing import Iterator, Sequence

import numpy as np

from data_pipelines.dedup.io import ArrayFile, StoredArray, save_json, save_npy
from data_pipelines.dedup.spill_pairs import DocIds, id_dtype
from data_pipelines.stats import StageStats
from pretrain.core.atomic import atomic_open
from pretrain.core.errors import ConfigError, DataError

MiB = 1 << 20
_EDGE_BYTES = 160  # working bytes per edge of a chunk while it is hooked (keys to ids, roots, masks)
_MIN_CHUNK = 1 << 12
_BLOCK_BYTES = 64  # working bytes per document of a block of the passes after the union-find


def merge_bytes(total_docs: int) -> int:
    """Bytes the bounded merge holds for ``total_docs`` documents: two arrays of one id each."""
    return 2 * total_docs * id_dtype(total_docs).itemsize


def check_merge_budget(total_docs: int, memory_mb: int) -> None:
    """A clear error, before any work, when the merge's per-document arrays do not fit in ``memory_mb``."""
    need = merge_bytes(total_docs)
    if need > memory_mb * MiB:
        raise ConfigError(
            f"dedup.memory_mb={memory_mb}: the bounded merge holds {need // max(total_docs, 1)} bytes per document, "
            f"{need / MiB:.1f} MiB for {total_docs:,} documents; set dedup.memory_mb to at least "
            f"{math.ceil(need / MiB)}")


def _chunks(array: StoredArray, rows: int) -> Iterator[np.ndarray]:
    for start in range(0, len(array), rows):
        yield array.read(start, start + rows).reshape(-1, 2)


def _find(parent: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The roots of ``x``, climbing a level at a time; every ``x`` then points straight at its root. Paths are
    short: :func:`_hook` leaves every node it touched two levels from its root at most, so a path grows by one
    level per chunk at most."""
    r = parent[x]
    while True:
        up = parent[r]
        if np.array_equal(up, r):
            break
        r = up
    parent[x] = r
    return r


def _hook(parent: np.ndarray, u: np.ndarray, v: np.ndarray) -> None:
    """Join the components of every edge ``(u, v)``: the larger root under the smaller, until none crosses."""
    while len(u):
        ru, rv = _find(parent, u), _find(parent, v)
        cross = ru != rv
        if not cross.any():
            return
        u, v, ru, rv = u[cross], v[cross], ru[cross], rv[cross]
        np.minimum.at(parent, np.maximum(ru, rv), np.minimum(ru, rv))
        _jump(parent, np.unique(np.concatenate((ru, rv))))


def _jump(parent: np.ndarray, roots: np.ndarray) -> None:
    """Point the roots one hooking round linked at their new roots. The round changed only the parents of
    some of ``roots``, each to another of them, so every path from one of them runs through them alone:
    pointer jumping over them halves all those paths at each pass (a chain of ``n`` hooked roots, as one
    bucket's window pairs make, takes ``log2(n)`` passes, not ``n`` levels climbed by every edge)."""
    while True:
        up = parent[roots]
        top = parent[up]
        if np.array_equal(top, up):
            return
        parent[roots] = top


def _flatten(parent: np.ndarray, size: int) -> None:
    """Point every document at its root, ``size`` at a time in ascending order (parents are smaller)."""
    for a in range(0, len(parent), size):
        block = parent[a:a + size]
        while True:
            up = parent[block]
            if np.array_equal(up, block):
                break
            block[:] = up


def _distinct_rows(readers: Sequence[StoredArray], rows: int, what: str) -> int:
    """The number of distinct rows of several sorted, duplicate-free ``(n, 2)`` uint64 arrays, read ``rows`` at
    a time from each: the rows up to the smallest last row of the buffers are taken from every buffer at once."""
    pos = [0] * len(readers)
    bufs: list[np.ndarray | None] = [None] * len(readers)
    last: list[tuple[int, int] | None] = [None] * len(readers)
    count = 0
    while True:
        for i, r in enumerate(readers):
            if (bufs[i] is None or not len(bufs[i])) and pos[i] < len(r):
                buf = r.read(pos[i], pos[i] + rows).reshape(-1, 2)
                pos[i] += len(buf)
                ascending = (buf[1:, 0] > buf[:-1, 0]) | ((buf[1:, 0] == buf[:-1, 0]) & (buf[1:, 1] > buf[:-1, 1]))
                if not ascending.all() or (last[i] is not None and tuple(buf[0].tolist()) <= last[i]):
                    raise DataError(f"dedup bucket file {r.path}: {what} are not sorted and distinct; "
                                    "rerun the bucket stage")
                bufs[i], last[i] = buf, tuple(buf[-1].tolist())
        live = [b for b in bufs if b is not None and len(b)]
        if not live:
            return count
        limit = min(tuple(b[-1].tolist()) for b in live)
        taken = []
        for i, b in enumerate(bufs):
            if b is None or not len(b):
                continue
            upto = int(((b[:, 0] < limit[0]) | ((b[:, 0] == limit[0]) & (b[:, 1] <= limit[1]))).sum())
            taken.append(b[:upto])
            bufs[i] = b[upto:]
        rows_now = np.concatenate(taken)
        rows_now = rows_now[np.lexsort((rows_now[:, 1], rows_now[:, 0]))]
        count += int(1 + ((rows_now[1:] != rows_now[:-1]).any(axis=1)).sum()) if len(rows_now) else 0


def merge_bounded(out_dir: str, memory_mb: int, part_paths: Sequence[str], shards: dict[int, int]) -> StageStats:
    """:func:`~data_pipelines.dedup.cluster.merge_stage`'s outputs within ``memory_mb`` (see the module docstring)."""
    from data_pipelines.dedup.cluster import EXACT, NEAR, REASONS, STATS_FILE, reason_path, removal_path

    ids = DocIds(shards)
    total = ids.total
    check_merge_budget(total, memory_mb)
    spare = memory_mb * MiB - merge_bytes(total)
    rows, block = max(_MIN_CHUNK, spare // _EDGE_BYTES), max(_MIN_CHUNK, spare // _BLOCK_BYTES)
    parent = np.arange(total, dtype=ids.dtype)
    files: list[ArrayFile] = []
    try:
        for p in part_paths:
            files.append(ArrayFile(p, "dedup bucket file"))
        for f in files:
            for name in ("exact_edges", "near_edges"):
                for e in _chunks(f.reader(name), rows):
                    _hook(parent, ids.of(e[:, 0]), ids.of(e[:, 1]))
        _flatten(parent, block)

        members = np.zeros(total, dtype=ids.dtype)  # per root: the documents of its cluster that are removed
        removed_total = 0
        for a in range(0, total, block):
            root = parent[a:a + block]
            gone = root != np.arange(a, a + len(root), dtype=ids.dtype)
            removed_total += int(gone.sum())
            np.add.at(members, root[gone], 1)
        hist: Counter = Counter()  # cluster sizes
        for a in range(0, total, block):
            m = members[a:a + block]
            sizes, n = np.unique(m[m > 0] + 1, return_counts=True)
            hist.update(dict(zip(sizes.tolist(), n.tolist())))
        nodes = removed_total + sum(hist.values())  # the documents of a cluster: removed ones and the kept roots

        with atomic_open(os.path.join(out_dir, "clusters.npy"), "wb") as out:  # (key, kept key) per node, key order
            header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint64)), "fortran_order": False,
                      "shape": (nodes, 2)}
            np.lib.format.write_array_header_1_0(out, header)
            for a in range(0, total, block):
                root = parent[a:a + block]
                node = (root != np.arange(a, a + len(root), dtype=ids.dtype)) | (members[a:a + block] > 0)
                at = np.flatnonzero(node) + a
                out.write(np.stack((ids.keys(at), ids.keys(parent[at])), axis=1).astype(np.uint64).tobytes())

        exact_sizes: Counter = Counter()
        flags = members  # from here on: 1 where a document is a non-first member of an exact group
        flags[:] = 0
        for f in files:
            src, run = None, 0  # the exact edges of a part are sorted: a group's edges are consecutive
            for e in _chunks(f.reader("exact_edges"), rows):
                flags[ids.of(e[:, 1])] = 1
                keys, n = np.unique(e[:, 0], return_counts=True)
                if src is not None and keys[0] == src:
                    n[0] += run
                elif src is not None:
                    exact_sizes[run + 1] += 1
                exact_sizes.update((n[:-1] + 1).tolist())
                src, run = keys[-1], int(n[-1])
            if src is not None:
                exact_sizes[run + 1] += 1
        counts = {code: 0 for code in (EXACT, NEAR)}
        for i, shard in enumerate(ids.shards.tolist()):
            a, b = int(ids.offsets[i]), int(ids.offsets[i + 1])
            gone = np.flatnonzero(parent[a:b] != np.arange(a, b, dtype=ids.dtype))
            why = np.where(flags[a:b][gone] == 1, EXACT, NEAR).astype(np.uint8)
            counts[EXACT] += int((why == EXACT).sum())
            save_npy(removal_path(out_dir, shard), gone.astype(np.uint32))
            save_npy(reason_path(out_dir, shard), why)
        counts[NEAR] = removed_total - counts[EXACT]
        per_reader = max(256, rows // max(1, len(files)))  # many parts: small buffers, not 4096 rows each
        near = _distinct_rows([f.reader("near_edges") for f in files], per_reader, "near edges")
        rejected = _distinct_rows([f.reader("rejected_edges") for f in files], per_reader, "rejected edges")
    finally:
        for f in files:
            f.close()

    stats = StageStats()
    stats.docs_in = total
    stats.docs_out = total - removed_total
    for code, name in enumerate(REASONS, start=1):
        if counts[code]:
            stats.drop(name, counts[code])
    stats.extra["cluster_sizes"] = {str(k): hist[k] for k in sorted(hist)}
    stats.extra["exact_cluster_sizes"] = {str(k): exact_sizes[k] for k in sorted(exact_sizes)}
    stats.extra["clusters"] = int(sum(hist.values()))
    stats.extra["candidate_edges"] = near + rejected
    stats.extra["rejected_edges"] = rejected
    save_json(os.path.join(out_dir, STATS_FILE), {"format": "dedup-removals/1", "shards": {
        str(s): n for s, n in sorted(shards.items())}, "stats": stats.to_dict()})
    return stats
