"""The bucket step with bounded memory: bucket keys sorted externally, one radix file at a time.

In memory, a bucket part holds every document's band hashes for its bands (and its exact hashes): 16 bytes
per document and band, 4.5 GB for 20 million documents and 14 bands. With ``dedup.memory_mb`` set, the
part instead streams the signature files once and appends each ``(hash, key)`` record to a spill file
chosen by the band and the top bits of the hash (``2**bits`` radix files per band, ``bits`` chosen so one
radix file, sorted, fits in the budget). Every bucket (equal hash in one band) lies in exactly one radix
file, so grouping the files one by one yields exactly the edges of the in-memory path -- the output is
byte-identical, which ``tests/pipeline/test_dedup_external.py`` checks on 200k signatures.

Memory: while spilling, one signature file's band array (the shards of a big run are small) and a quarter of
the budget of records waiting to be appended; while grouping, one radix file and its sort (about 6x its size),
plus a sixteenth of the budget of edges waiting to go to disk. The edges found grow with the duplicates, not
with the corpus, so they are never held: they go to :class:`~data_pipelines.dedup.spill_pairs.PairSpill`
files, which give them back sorted and distinct. The candidate verification that follows takes them a batch
at a time within the same budget (:mod:`data_pipelines.dedup.verify_external`), the part file is written
from disk, and the merge is bounded too (:mod:`data_pipelines.dedup.merge_bounded`: 8 bytes per document,
edges streamed).
"""

from __future__ import annotations

import os
import shutil
from typing import Callable, Iterable, Sequence

import numpy as np

from data_pipelines.dedup.config import DedupConfig
from data_pipelines.dedup.signatures import check_bands, check_exact, doc_key, open_signatures
from data_pipelines.dedup.spill_pairs import PairSpill

_SORT_OVERHEAD = 6  # bytes held while grouping one radix file, per byte of its records (them included:
# measured 4.9x for window pairs, 5.6x for star edges, 4.1x for exact groups)
EXACT = -1  # the "band" of the exact-hash records
_SPILL_BUFFER_SHARE = 4  # records held before an append: this fraction of the budget


def radix_bits(records: int, record_bytes: int, budget_bytes: int) -> int:
    """Smallest ``bits`` such that ``records / 2**bits`` records, sorted, fit in ``budget_bytes``."""
    need = records * record_bytes * _SORT_OVERHEAD
    bits = 0
    while need > budget_bytes * (1 << bits) and bits < 16:
        bits += 1
    return bits


def external_edges(
    signature_paths: Sequence[str],
    cfg: DedupConfig,
    part: int,
    num_parts: int,
    spill_dir: str,
    exact_edges: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray],
    near_edges: Callable[[np.ndarray, np.ndarray], Iterable[np.ndarray]],
    exact_out: PairSpill,
    near_out: PairSpill,
) -> dict[int, int]:
    """The shards of one bucket part, whose exact and near edges go to ``exact_out`` and ``near_out``, in
    ``cfg.memory_mb`` of memory.

    ``exact_edges(keys, hi, lo)`` and ``near_edges(keys, hashes)`` (blocks of edges) group one radix file (the
    in-memory path's functions, so both paths make the same edges).
    """
    budget = int(cfg.memory_mb) << 20
    metas = []
    for path in sorted(signature_paths):
        with open_signatures(path, cfg) as f:
            metas.append((path, int(f.meta["shard"]), int(f.meta["num_docs"])))
    total_docs = sum(n for _, _, n in metas)
    exact_bits = radix_bits(total_docs // num_parts + 1, 24, budget)
    band_bits = radix_bits(total_docs, 16, budget)
    shutil.rmtree(spill_dir, ignore_errors=True)  # a killed earlier run's files would be appended to
    os.makedirs(spill_dir)
    shards: dict[int, int] = {}
    spill = _SpillBuffer(spill_dir, budget // _SPILL_BUFFER_SHARE)
    try:
        for path, shard, num_docs in metas:
            shards[shard] = num_docs
            with open_signatures(path, cfg) as f:
                if cfg.exact:
                    exact = f["exact"]
                    check_exact(path, exact, num_docs)
                    sel = np.flatnonzero(exact[:, 0] % np.uint64(num_parts) == np.uint64(part))
                    rec = np.stack((exact[sel, 0], exact[sel, 1], doc_key(shard, sel)), axis=1)
                    spill.add(EXACT, rec, exact_bits)
                if cfg.minhash:
                    bands, rows = f["bands"], f["band_rows"]
                    check_bands(path, bands, rows, num_docs)
                    keys = doc_key(shard, rows)
                    for b in range(part, bands.shape[0], num_parts):
                        spill.add(b, np.stack((bands[b], keys), axis=1), band_bits)
                    del bands
        spill.flush()
        for name in sorted(os.listdir(spill_dir)):
            band = int(name.rsplit("-", 1)[0])
            rec = np.fromfile(os.path.join(spill_dir, name), dtype=np.uint64)
            os.remove(os.path.join(spill_dir, name))
            if band == EXACT:
                rec = rec.reshape(-1, 3)
                exact_out.add(exact_edges(rec[:, 2], rec[:, 0], rec[:, 1]))
            else:
                rec = rec.reshape(-1, 2)
                for found in near_edges(rec[:, 1], rec[:, 0]):  # a huge bucket's pairs: block by block
                    near_out.add(found)  # on disk: a pair found in several bands is made distinct there
    finally:
        shutil.rmtree(spill_dir, ignore_errors=True)
    return shards


class _SpillBuffer:
    """Records for the radix files, held until ``limit_bytes`` of them are waiting, then appended file by file.

    Appending each signature file's records at once opened every radix file of every band once per signature
    file: shards x bands x 2**bits appends, which grows with the square of data / budget (both the shards and
    the radix files grow with the data). Held back, a radix file gets one append per ``limit_bytes`` of
    records. Each file receives its records in the order they came, so its bytes are unchanged."""

    def __init__(self, spill_dir: str, limit_bytes: int):
        self.spill_dir = spill_dir
        self.limit = max(int(limit_bytes), 1)
        self.held: dict[tuple[int, int], list[np.ndarray]] = {}
        self.held_bytes = 0
        self.appends = 0

    def add(self, band: int, records: np.ndarray, bits: int) -> None:
        """Queue ``records`` (first column: the hash) for the radix files of ``band``."""
        if len(records) == 0:
            return
        if bits == 0:
            groups = [(0, records)]
        else:
            radix = records[:, 0] >> np.uint64(64 - bits)
            order = np.argsort(radix, kind="stable")
            radix, records = radix[order], records[order]
            cuts = np.flatnonzero(np.diff(radix)) + 1
            starts = np.concatenate(([0], cuts))
            groups = [(int(radix[s]), chunk) for s, chunk in zip(starts, np.split(records, cuts))]
        for r, chunk in groups:
            self.held.setdefault((band, r), []).append(np.ascontiguousarray(chunk, dtype=np.uint64))
            self.held_bytes += chunk.size * 8
        if self.held_bytes >= self.limit:
            self.flush()

    def flush(self) -> None:
        for (band, r), chunks in self.held.items():
            with open(os.path.join(self.spill_dir, f"{band:+04d}-{r:05d}.u64"), "ab") as fh:
                for chunk in chunks:
                    chunk.tofile(fh)
            self.appends += 1
        self.held.clear()
        self.held_bytes = 0
