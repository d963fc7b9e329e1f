"""Candidate verification within ``dedup.memory_mb``: the two sides of every pair gathered through spill files.

:func:`data_pipelines.dedup.verify.verify_edges` holds the full signature (``num_perm x 4`` bytes, 448 with
112 permutations) of every document that has a candidate, and reads each shard's whole ``sig`` array to
get them: 1.8 GB for 4 million candidate documents, whatever the budget. Here the same decisions are made
in bounded memory, as a sort-merge join of the candidate pairs with the signature files:

1. The pairs ``(a, b)`` (sorted, edge ``i`` = row ``i``) are cut into *partitions* of consecutive edge ids,
   each small enough that both sides of all its pairs fit in a slice of the budget. For ``verify=exact``
   a first pass reads each shard's ``shingle_offsets`` to size every pair's two shingle sets.
2. The endpoint keys of each side, argsorted, are a request list in key order. One pass over the signature
   files (key order = shard order, then row order) reads each shard's ``sig`` rows (or ``shingles``
   values) in bounded row ranges from disk (:meth:`data_pipelines.dedup.io.ArrayFile.reader`), never the
   whole array, and appends each request's ``(edge id, width, length)`` and payload to the spill files of
   its edge's partition and side.
3. Each partition is read back, its two sides placed by edge id, and compared with the in-memory rule --
   the same expressions, so the accepted and rejected edges are the same arrays, byte for byte
   (``tests/pipeline/test_dedup_external.py``).

Memory: under ``memory_mb / 2`` of working buffers (a row range of one shard of ``memory_mb / 8``, one
write batch and its sorted copy; or one partition's two sides, ``memory_mb / 4``; ``verify=exact`` reads
shingles ``memory_mb / 16`` at a time, as it also holds a Python view per set), plus 32 bytes per
candidate pair for the sorted requests of both sides (48 while ``verify=exact`` sizes its partitions) and
about 60 bytes per pair while the signature file of its documents is read (one file at a time), then the
decisions and the two output arrays; the pairs themselves (16 bytes each) are the caller's. Disk: both
sides of every pair, ``2 x (num_perm x 4 + 24)`` bytes per pair, removed at the end. A document not found
in any given signature file has width 0, so its pairs are rejected, as in memory.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from typing import Sequence

import numpy as np

from data_pipelines.dedup.config import DedupConfig
from data_pipelines.dedup.io import ArrayFile
from data_pipelines.dedup.signatures import ROW_BITS, doc_key, open_signatures
from pretrain.core.errors import DataError

log = logging.getLogger(__name__)

_IDX = 3  # int64 columns of a spilled request: edge id, signature width (num_perm), payload length
_ROW_MASK = np.uint64((1 << ROW_BITS) - 1)


class _Sides:
    """Spill files of one verification: per partition and side, request headers and payloads."""

    def __init__(self, spill_dir: str, bounds: np.ndarray):
        self.dir = spill_dir
        self.bounds = bounds  # partition p holds edge ids bounds[p]:bounds[p + 1]

    def path(self, side: int, part: int, what: str) -> str:
        return os.path.join(self.dir, f"{side}-{part:06d}.{what}")

    def write(self, side: int, eids: np.ndarray, widths: np.ndarray, lengths: np.ndarray, values: np.ndarray) -> None:
        """Append requests to their partitions. ``values``: the payloads, one row per request (fixed length,
        signatures) or concatenated in request order (shingle sets)."""
        if len(eids) == 0:
            return
        part = np.searchsorted(self.bounds, eids, side="right") - 1
        order = np.argsort(part, kind="stable")
        lens = lengths[order]
        head = np.stack((eids[order], widths[order], lens), axis=1).astype(np.int64)
        part = part[order]
        cuts = np.flatnonzero(np.diff(part)) + 1
        if values.ndim == 2:
            pieces = np.split(values[order], cuts)
        else:  # views of each request's payload, joined per partition: no index arrays 4x the payload
            each = np.split(values, np.cumsum(lengths)[:-1])
            pieces = [np.concatenate([each[i] for i in chunk]) for chunk in np.split(order, cuts)]
        for p, h, v in zip(part[np.concatenate(([0], cuts))].tolist(), np.split(head, cuts), pieces):
            for what, arr in (("idx", h), ("val", v)):
                with open(self.path(side, p, what), "ab") as fh:
                    np.ascontiguousarray(arr).tofile(fh)
            del v

    def read(self, side: int, part: int) -> tuple[np.ndarray, np.ndarray]:
        paths = [self.path(side, part, w) for w in ("idx", "val")]
        if not os.path.exists(paths[0]):
            return np.zeros((0, _IDX), dtype=np.int64), np.zeros(0, dtype=np.uint32)
        head = np.fromfile(paths[0], dtype=np.int64).reshape(-1, _IDX)
        values = np.fromfile(paths[1], dtype=np.uint32)
        for p in paths:
            os.remove(p)
        return head, values


def verify_edges_bounded(
    edges: np.ndarray, signature_paths: Sequence[str], cfg: DedupConfig, spill_dir: str
) -> tuple[np.ndarray, np.ndarray]:
    """``(accepted, rejected)`` exactly as :func:`~data_pipelines.dedup.verify.verify_edges`, in bounded memory.

    ``edges`` are the caller's sorted, distinct candidate pairs; ``spill_dir`` is created and removed here.
    """
    if cfg.verify == "none" or len(edges) == 0:
        return edges, np.zeros((0, 2), dtype=np.uint64)
    budget = max(int(cfg.memory_mb), 1) << 20
    paths = sorted(signature_paths)
    metas = []
    for path in paths:
        with open_signatures(path, cfg) as f:
            params = f.meta.get("params") or {}
            metas.append((path, int(f.meta["shard"]), int(params.get("num_perm", 0))))
    wmax = max([w for _, _, w in metas] + [1])
    exact = cfg.verify == "exact"
    requests = []  # per side: (endpoint keys in key order, their edge ids)
    for side in (0, 1):
        order = np.argsort(edges[:, side], kind="stable")
        requests.append((edges[order, side], order))
    shutil.rmtree(spill_dir, ignore_errors=True)  # a killed earlier run's files would be appended to
    os.makedirs(spill_dir)
    try:
        part_bytes = max(budget // 4, 1)
        if exact:  # a first pass sizes each pair's two shingle sets from the shards' offsets
            first = np.full(len(edges), 2 * _IDX * 8, dtype=np.int64)
            for path, shard, _ in metas:
                with open_signatures(path, cfg) as f:
                    looked = [(eids[found], at[found]) for (_, eids), at, found in _lookups(f, path, shard, requests)]
                    if any(len(e) for e, _ in looked):
                        offsets = _offsets(f, path)
                        for eids, at in looked:
                            first[eids] += 4 * (offsets[at + 1] - offsets[at])
            before = np.cumsum(first)
            before -= first
            first = before // part_bytes  # partition of each edge (numbers may be skipped: cut where they change)
            del before
            bounds = np.concatenate((np.flatnonzero(np.diff(first, prepend=-1)), [len(edges)]))
            del first
        else:
            per_part = max(1, part_bytes // (2 * (_IDX * 8 + 4 * wmax)))
            bounds = np.append(np.arange(0, len(edges), per_part), len(edges))
        sides = _Sides(spill_dir, bounds)
        log.info("dedup verify: %d candidate pairs (verify=%s) in %d partitions, gathering from %d signature files",
                 len(edges), cfg.verify, len(bounds) - 1, len(metas))
        t0, last = time.monotonic(), time.monotonic()
        for i, (path, shard, width) in enumerate(metas):
            with open_signatures(path, cfg) as f:
                found_sides = [(eids[found], at[found]) for (_, eids), at, found in _lookups(f, path, shard, requests)]
                if any(len(e) for e, _ in found_sides):
                    _check_sig(f, path, width)
                    if exact:
                        _gather_shingles(f, path, width, found_sides, sides, budget // 16)  # + views
                    else:
                        _gather_signatures(f, path, width, wmax, found_sides, sides, budget // 8)
            if time.monotonic() - last > 30 or i + 1 == len(metas):
                last = time.monotonic()
                rate = (i + 1) / max(last - t0, 1e-9)
                log.info("dedup verify: %d/%d signature files read (%.2f/s, ETA %.0f s)", i + 1, len(metas), rate,
                         (len(metas) - i - 1) / rate)
        del requests
        keep = np.zeros(len(edges), dtype=bool)
        for p in range(len(bounds) - 1):
            e0, e1 = int(bounds[p]), int(bounds[p + 1])
            if exact:
                keep[e0:e1] = _compare_shingles(sides, p, e0, e1, cfg.threshold)
            else:
                keep[e0:e1] = _compare_signatures(sides, p, e0, e1, wmax, cfg.threshold)
        log.info("dedup verify: %d of %d candidate pairs accepted (%.0f s)", int(keep.sum()), len(edges),
                 time.monotonic() - t0)
    finally:
        shutil.rmtree(spill_dir, ignore_errors=True)
    return edges[keep], edges[~keep]


def _lookups(f: ArrayFile, path: str, shard: int, requests: list[tuple[np.ndarray, np.ndarray]]):
    """Per side: ``((keys, eids) of this shard, position in band_rows, found)``; band_rows read lazily."""
    lo_key, hi_key = doc_key(shard, 0), doc_key(shard + 1, 0)
    band_rows = None
    for keys, eids in requests:
        lo, hi = np.searchsorted(keys, [lo_key, hi_key])
        if lo == hi:
            yield (keys[:0], eids[:0]), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool)
            continue
        if band_rows is None:
            band_rows = f["band_rows"]
            if band_rows.ndim != 1 or (len(band_rows) and int(band_rows.max()) >= int(f.meta["num_docs"])):
                raise DataError(f"dedup signature file {path}: band_rows {band_rows.shape} do not match its "
                                f"{f.meta['num_docs']} documents")
        rows = keys[lo:hi] & _ROW_MASK
        at = np.searchsorted(band_rows, rows)
        clipped = np.minimum(at, max(len(band_rows) - 1, 0))
        found = band_rows[clipped] == rows if len(band_rows) else np.zeros(hi - lo, dtype=bool)
        yield (keys[lo:hi], eids[lo:hi]), clipped.astype(np.int64), found


def _check_sig(f: ArrayFile, path: str, width: int) -> None:
    sig, n = f.reader("sig"), len(f.reader("band_rows"))
    if sig.shape != (n, width):
        raise DataError(f"dedup signature file {path}: signatures {sig.shape}, expected ({n}, {width}); "
                        "rerun the signature stage")


def _offsets(f: ArrayFile, path: str) -> np.ndarray:
    offsets = f["shingle_offsets"]
    n = len(f.reader("band_rows"))
    total = len(f.reader("shingles"))
    if offsets.shape != (n + 1,) or offsets[0] != 0 or np.any(np.diff(offsets) < 0) or offsets[-1] != total:
        raise DataError(f"dedup signature file {path}: shingle_offsets {offsets.shape} do not bound its shingles "
                        f"for {n} documents; rerun the signature stage")
    return offsets


def _gather_signatures(f: ArrayFile, path: str, width: int, wmax: int,
                       found_sides: list[tuple[np.ndarray, np.ndarray]], sides: _Sides, chunk_bytes: int) -> None:
    """Spill the ``sig`` rows of this shard's requests, reading ``chunk_bytes`` of rows at a time."""
    sig = f.reader("sig")
    rows_per_chunk = max(1, chunk_bytes // (4 * wmax))
    chunks = np.unique(np.concatenate([at // rows_per_chunk for _, at in found_sides]))
    for c in chunks.tolist():
        r0 = c * rows_per_chunk
        block = sig.read(r0, r0 + rows_per_chunk)
        for side, (eids, at) in enumerate(found_sides):
            lo, hi = np.searchsorted(at, [r0, r0 + rows_per_chunk])
            for s in range(lo, hi, rows_per_chunk):  # a hot document can be asked for many times
                e = min(s + rows_per_chunk, hi)
                payload = np.zeros((e - s, wmax), dtype=np.uint32)  # zero padding: equal in both rows, subtracted
                payload[:, :width] = block[at[s:e] - r0]
                sides.write(side, eids[s:e], np.full(e - s, width), np.full(e - s, wmax), payload)


def _gather_shingles(f: ArrayFile, path: str, width: int, found_sides: list[tuple[np.ndarray, np.ndarray]],
                     sides: _Sides, chunk_bytes: int) -> None:
    """Spill the shingle sets of this shard's requests, reading about ``chunk_bytes`` of values at a time."""
    offsets = _offsets(f, path)
    values = f.reader("shingles")
    chunk = max(1, chunk_bytes // 4)
    for side, (eids, at) in enumerate(found_sides):
        if len(eids) == 0:
            continue
        starts, stops = offsets[at], offsets[at + 1]
        lens = stops - starts
        # batches of requests (in row order) whose values span at most about `chunk` values of the shard and
        # whose payloads (a hot document is asked for once per pair) add up to at most about `chunk`
        window = starts // chunk
        first = np.flatnonzero(np.diff(window, prepend=-1))
        before = np.cumsum(lens) - lens
        sub = (before - np.repeat(before[first], np.diff(np.append(first, len(eids))))) // chunk
        cuts = np.concatenate((np.flatnonzero((np.diff(window, prepend=-1) != 0) | (np.diff(sub, prepend=-1) != 0)),
                               [len(eids)]))
        for s, e in zip(cuts[:-1].tolist(), cuts[1:].tolist()):
            v0, v1 = int(starts[s:e].min()), int(stops[s:e].max())
            span = values.read(v0, v1)
            payload = np.concatenate([span[a - v0 : b - v0] for a, b in zip(starts[s:e].tolist(), stops[s:e].tolist())])
            del span
            sides.write(side, eids[s:e], np.full(e - s, width), lens[s:e], payload)


def _placed(head: np.ndarray, e0: int, e1: int) -> np.ndarray:
    """Record index of each edge ``e0..e1-1`` in ``head`` (-1: no record, the document was not found)."""
    at = np.full(e1 - e0, -1, dtype=np.int64)
    at[head[:, 0] - e0] = np.arange(len(head))
    return at


def _compare_signatures(sides: _Sides, part: int, e0: int, e1: int, wmax: int, threshold: float) -> np.ndarray:
    mats, widths = [], []
    for side in (0, 1):
        head, values = sides.read(side, part)
        mat = np.zeros((e1 - e0, wmax), dtype=np.uint32)
        width = np.zeros(e1 - e0, dtype=np.int64)
        mat[head[:, 0] - e0] = values.reshape(-1, wmax)
        width[head[:, 0] - e0] = head[:, 1]
        del values
        mats.append(mat)
        widths.append(width)
    w = widths[0]
    # the in-memory rule (verify.verify_edges), expression for expression: zero padding counts as equal
    agree = (mats[0] == mats[1]).sum(axis=1) - (wmax - w)
    ok = (w > 0) & (w == widths[1])
    return ok & (agree >= threshold * np.maximum(w, 1) - 1e-9)


def _compare_shingles(sides: _Sides, part: int, e0: int, e1: int, threshold: float) -> np.ndarray:
    data = []
    for side in (0, 1):
        head, values = sides.read(side, part)
        data.append((head, values, np.concatenate(([0], np.cumsum(head[:, 2]))), _placed(head, e0, e1)))
    keep = np.zeros(e1 - e0, dtype=bool)
    (hu, vu, ou, pu), (hv, vv, ov, pv) = data
    for i, (a, b) in enumerate(zip(pu.tolist(), pv.tolist())):
        if a < 0 or b < 0 or hu[a, 1] != hv[b, 1]:
            continue
        sa, sb = vu[ou[a] : ou[a + 1]], vv[ov[b] : ov[b + 1]]
        inter = len(np.intersect1d(sa, sb, assume_unique=True))
        union = len(sa) + len(sb) - inter
        keep[i] = union > 0 and inter >= threshold * union - 1e-9
    return keep
