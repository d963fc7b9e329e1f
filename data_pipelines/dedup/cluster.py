"""Stages 2 and 3 of dedup: band buckets -> duplicate edges -> clusters -> per-shard removal lists.

Scaling
-------
:func:`bucket_stage` handles one *part* of ``num_parts``: the bands ``b`` with ``b % num_parts == part``
and the exact hashes whose high word is ``part`` modulo ``num_parts``. It reads one signature file at a
time (only its part is kept), so its memory is ``docs x bands_in_part x 16`` bytes; with enough parts no
process ever holds every band of every document, and the parts run in parallel (executor workers or a
SLURM array). Inside a part, each band's hashes are grouped by one argsort and every bucket member
is linked to the bucket's smallest key (a star, so a bucket of ``m`` documents gives
``m - 1`` edges, never ``m**2``). :func:`merge_stage` then reads only the edges -- their number grows
with the duplicates, not with the corpus -- and runs the vectorised union-find of
:mod:`data_pipelines.dedup.unionfind`; with ``dedup.memory_mb`` set it runs a union-find over every document
instead, with the edges streamed from the part files (:mod:`data_pipelines.dedup.merge_bounded`).

Rule
----
Exact duplicates (same 128-bit normalised-content hash, across all sources and kinds) and LSH candidates
(same bucket in any band) are edges of one graph; each connected component keeps its smallest global key
(first copy in corpus order). A removed document counts as ``exact_duplicate`` when an identical
document with a smaller key exists, otherwise as ``near_duplicate``. LSH candidates become edges only
after verification (:mod:`data_pipelines.dedup.verify`): their estimated (``verify=signature``) or exact
(``verify=exact``) Jaccard must reach ``dedup.threshold``; with ``verify=none`` every bucket collision is
an edge (star edges, the classic large-scale choice). Buckets are sets (grouped by band and hash), edges are sorted
and de-duplicated, roots are minimum keys: every output is independent of shard processing order and of
``num_parts``, byte for byte.

Outputs in ``out_dir``: ``remove-<shard:05d>.npy`` (sorted uint32 rows to drop), ``reason-<shard:05d>.npy``
(uint8 reason code per removed row, :data:`REASONS`), ``clusters.npy`` (``(n, 2)`` uint64: key, kept key
for every document of a duplicate cluster) and ``dedup.json`` (shards and the stage's :class:`StageStats`),
written last: its presence marks the stage complete.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections import Counter
from typing import Any, Iterator, Sequence

import numpy as np

from data_pipelines.dedup.config import DedupConfig, as_dedup_config
from data_pipelines.dedup.external import external_edges
from data_pipelines.dedup.io import ArrayFile, RawArray, load_npy, save_arrays, save_json, save_npy
from data_pipelines.dedup.merge_bounded import check_merge_budget, merge_bounded
from data_pipelines.dedup.signatures import check_bands, check_exact, doc_key, open_signatures, split_keys
from data_pipelines.dedup.spill_pairs import DocIds, PairSpill
from data_pipelines.dedup.unionfind import connected_components
from data_pipelines.dedup.verify import verify_edges, window_edge_blocks, window_edges
from data_pipelines.dedup.verify_external import verify_edges_bounded
from data_pipelines.stats import StageStats
from pretrain.core.errors import ConfigError, DataError

log = logging.getLogger(__name__)

_VERIFY_PAIR_BYTES = 320  # budget per candidate pair verified in one batch (half of it for working buffers)
REASONS = ("exact_duplicate", "near_duplicate")  # reason code i+1 in reason-<shard>.npy
EXACT, NEAR = 1, 2
STATS_FILE = "dedup.json"


def removal_path(out_dir: str, shard: int) -> str:
    return os.path.join(out_dir, f"remove-{shard:05d}.npy")


def reason_path(out_dir: str, shard: int) -> str:
    return os.path.join(out_dir, f"reason-{shard:05d}.npy")


def part_path(out_dir: str, part: int, num_parts: int) -> str:
    return os.path.join(out_dir, f"buckets-{part:04d}-of-{num_parts:04d}.npz")


def _star_edges(keys: np.ndarray, *hash_cols: np.ndarray) -> np.ndarray:
    """Edges (bucket's smallest key, member key) for every bucket of equal hash columns.

    Only the grouping needs a sort (an unstable argsort for one column, ``lexsort`` for the two words of
    a 128-bit hash); each bucket's smallest key comes from ``np.minimum.reduceat``, so the result is the
    same set of edges whatever order the rows arrive in.
    """
    empty = np.zeros((0, 2), dtype=np.uint64)
    if len(keys) < 2:
        return empty
    order = np.argsort(hash_cols[0]) if len(hash_cols) == 1 else np.lexsort(tuple(reversed(hash_cols)))
    new = np.zeros(len(keys), dtype=bool)
    new[0] = True
    for col in hash_cols:
        c = col[order]
        new[1:] |= c[1:] != c[:-1]
    starts = np.flatnonzero(new)
    sizes = np.diff(np.append(starts, len(keys)))
    if sizes.max() < 2:
        return empty
    k = keys[order]
    bucket = np.repeat(np.arange(len(starts)), sizes)
    shared = (sizes >= 2)[bucket]
    src = np.minimum.reduceat(k, starts)[bucket[shared]]
    dst = k[shared]
    member = dst != src
    return np.stack((src[member], dst[member]), axis=1)


def _unique_edges(edges: np.ndarray) -> np.ndarray:
    """Sorted, duplicate-free rows of an (n, 2) uint64 edge array."""
    if len(edges) == 0:
        return np.zeros((0, 2), dtype=np.uint64)
    edges = edges[np.lexsort((edges[:, 1], edges[:, 0]))]
    keep = np.ones(len(edges), dtype=bool)
    keep[1:] = (edges[1:] != edges[:-1]).any(axis=1)
    return edges[keep]


def bucket_stage(
    signature_paths: Sequence[str], out_dir: str, cfg: Any, part: int = 0, num_parts: int = 1
) -> str:
    """Bucket part ``part`` of ``num_parts`` (see the module docstring); returns the part file's path."""
    dcfg: DedupConfig = as_dedup_config(cfg)
    if not isinstance(num_parts, int) or num_parts < 1 or not isinstance(part, int) or not 0 <= part < num_parts:
        raise ConfigError(f"dedup bucket part {part!r} of {num_parts!r}: expected 0 <= part < num_parts")
    if dcfg.memory_mb:
        return _bucket_external(signature_paths, out_dir, dcfg, part, num_parts)
    shards: dict[int, int] = {}
    exact_cols: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    band_cols: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
    for path in sorted(signature_paths):
        with open_signatures(path, dcfg) as f:
            shard = int(f.meta["shard"])
            if shard in shards:
                raise DataError(f"dedup: two signature files for shard {shard} (one is {path})")
            shards[shard] = int(f.meta["num_docs"])
            if dcfg.exact:
                exact = f["exact"]
                check_exact(path, exact, shards[shard])
                sel = np.flatnonzero(exact[:, 0] % np.uint64(num_parts) == np.uint64(part))
                exact_cols.append((exact[sel, 0], exact[sel, 1], doc_key(shard, sel)))
            if dcfg.minhash:
                bands, rows = f["bands"], f["band_rows"]
                check_bands(path, bands, rows, shards[shard])
                keys = doc_key(shard, rows)
                for b in range(part, bands.shape[0], num_parts):
                    band_cols.setdefault(b, []).append((bands[b].copy(), keys))
    edges_exact = np.zeros((0, 2), dtype=np.uint64)
    if exact_cols:
        hi = np.concatenate([c[0] for c in exact_cols])
        lo = np.concatenate([c[1] for c in exact_cols])
        keys = np.concatenate([c[2] for c in exact_cols])
        edges_exact = _unique_edges(_star_edges(keys, hi, lo))
    near = []
    for b in sorted(band_cols):
        hashes = np.concatenate([c[0] for c in band_cols[b]])
        keys = np.concatenate([c[1] for c in band_cols[b]])
        near.append(_near_edges(dcfg, keys, hashes))
    band_cols.clear()
    edges_near = _unique_edges(np.concatenate(near)) if near else np.zeros((0, 2), dtype=np.uint64)
    return _write_part(out_dir, signature_paths, dcfg, part, num_parts, shards, edges_exact, edges_near)


def _near_edges(dcfg: DedupConfig, keys: np.ndarray, hashes: np.ndarray) -> np.ndarray:
    if dcfg.verify == "none":
        return _star_edges(keys, hashes)
    return window_edges(keys, hashes, dcfg.verify_window)


def _near_edge_blocks(dcfg: DedupConfig, keys: np.ndarray, hashes: np.ndarray) -> Iterator[np.ndarray]:
    """:func:`_near_edges` in blocks of at most one edge per key (window pairs one distance at a time)."""
    if dcfg.verify == "none":
        yield _star_edges(keys, hashes)
    else:
        yield from window_edge_blocks(keys, hashes, dcfg.verify_window)


def _bucket_external(signature_paths: Sequence[str], out_dir: str, dcfg: DedupConfig, part: int, num_parts: int) -> str:
    """:func:`bucket_stage` within ``dcfg.memory_mb`` (:mod:`data_pipelines.dedup.external`); same output."""
    sizes: dict[int, int] = {}
    for path in signature_paths:
        with open_signatures(path, dcfg) as f:
            shard = int(f.meta["shard"])
            if shard in sizes:
                raise DataError(f"dedup: two signature files for shard {shard} (one is {path})")
            sizes[shard] = int(f.meta["num_docs"])
    check_merge_budget(sum(sizes.values()), dcfg.memory_mb)  # before the bucket work, not after it
    tag = f"{part:04d}-of-{num_parts:04d}"
    budget = dcfg.memory_mb << 20
    ids = DocIds(sizes)
    folders = [os.path.join(out_dir, f"spill-{what}-{tag}") for what in ("exact", "near")]
    try:  # the pair files go when they are read back, and here when anything before that fails
        exact, near = (PairSpill(folder, ids, budget) for folder in folders)
        shards = external_edges(
            signature_paths, dcfg, part, num_parts, os.path.join(out_dir, f"spill-{tag}"),
            exact_edges=lambda k, hi, lo: _star_edges(k, hi, lo),
            near_edges=lambda k, h: _near_edge_blocks(dcfg, k, h), exact_out=exact, near_out=near,
        )
        return _write_part_bounded(out_dir, signature_paths, dcfg, part, num_parts, shards, exact, near)
    finally:
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)


def _write_part_bounded(out_dir: str, signature_paths: Sequence[str], dcfg: DedupConfig, part: int, num_parts: int,
                        shards: dict[int, int], exact: PairSpill, near: PairSpill) -> str:
    """:func:`_write_part` from the pair spills: the exact edges and the verified near edges go to raw files
    (the candidates verified a batch at a time), and the part file is written from them."""
    tag = f"{part:04d}-of-{num_parts:04d}"
    raw = os.path.join(out_dir, f"spill-edges-{tag}")
    shutil.rmtree(raw, ignore_errors=True)
    os.makedirs(raw)
    counts = {"exact_edges": 0, "near_edges": 0, "rejected_edges": 0}
    files: dict[str, Any] = {}

    def write(name: str, edges: np.ndarray) -> None:
        edges.astype(np.uint64, copy=False).tofile(files[name])
        counts[name] += len(edges)

    try:
        for name in counts:
            files[name] = open(os.path.join(raw, f"{name}.u64"), "wb")
        for edges in exact.sorted_pairs():
            write("exact_edges", edges)
        batch = max(1 << 12, (dcfg.memory_mb << 20) // _VERIFY_PAIR_BYTES)  # candidate pairs verified at once
        held: list[np.ndarray] = []
        held_rows = 0

        def verify() -> None:
            nonlocal held, held_rows
            if held:
                accepted, rejected = verify_edges_bounded(np.concatenate(held), signature_paths, dcfg,
                                                          os.path.join(out_dir, f"spill-verify-{tag}"))
                write("near_edges", accepted)
                write("rejected_edges", rejected)
            held, held_rows = [], 0

        for edges in near.sorted_pairs():
            while len(edges):
                piece, edges = edges[:batch - held_rows], edges[batch - held_rows:]
                held.append(piece)
                held_rows += len(piece)
                if held_rows >= batch:
                    verify()
        verify()
        for fh in files.values():
            fh.close()
        return _save_part(out_dir, part, num_parts, shards, counts, {
            name: RawArray(os.path.join(raw, f"{name}.u64"), (n, 2), np.dtype(np.uint64)) for name, n in counts.items()})
    finally:
        for fh in files.values():
            fh.close()
        shutil.rmtree(raw, ignore_errors=True)


def _write_part(out_dir: str, signature_paths: Sequence[str], dcfg: DedupConfig, part: int, num_parts: int,
                shards: dict[int, int], edges_exact: np.ndarray, edges_near: np.ndarray) -> str:
    edges_near, rejected = verify_edges(edges_near, signature_paths, dcfg)
    arrays = {"exact_edges": edges_exact, "near_edges": edges_near, "rejected_edges": rejected}
    return _save_part(out_dir, part, num_parts, shards, {name: len(a) for name, a in arrays.items()}, arrays)


def _save_part(out_dir: str, part: int, num_parts: int, shards: dict[int, int], counts: dict[str, int],
               arrays: dict[str, Any]) -> str:
    """Write a part file (arrays or :class:`RawArray` files) and log its edge counts."""
    out = part_path(out_dir, part, num_parts)
    meta = {"part": part, "num_parts": num_parts, "shards": {str(s): n for s, n in sorted(shards.items())}}
    save_arrays(out, arrays, meta)
    log.info("dedup buckets part %d/%d: %d exact, %d near edges (%d candidates below the threshold)",
             part, num_parts, counts["exact_edges"], counts["near_edges"], counts["rejected_edges"])
    return out


def merge_stage(out_dir: str, cfg: Any, num_parts: int = 1) -> StageStats:
    """Union-find over the edges of every bucket part; writes removal lists, clusters and ``dedup.json``."""
    dcfg = as_dedup_config(cfg)  # the rule itself has no parameters; memory_mb bounds the merge
    shards: dict[int, int] | None = None
    paths = [part_path(out_dir, part, num_parts) for part in range(num_parts)]
    for path in paths:
        with ArrayFile(path, "dedup bucket file") as f:
            part_shards = {int(s): int(n) for s, n in f.meta["shards"].items()}
            if shards is None:
                shards = part_shards
            elif part_shards != shards:
                raise DataError(f"dedup bucket file {path} was built from other shards than part 0; rerun the bucket stage")
    assert shards is not None
    if dcfg.memory_mb:
        stats = merge_bounded(out_dir, dcfg.memory_mb, paths, shards)
        _log_merge(sum(shards.values()), stats)
        return stats
    exact_parts, near_parts, rejected_parts = [], [], []
    for path in paths:
        with ArrayFile(path, "dedup bucket file") as f:
            exact_parts.append(f["exact_edges"])
            near_parts.append(f["near_edges"])
            rejected_parts.append(f["rejected_edges"])
    exact_edges = np.concatenate(exact_parts).reshape(-1, 2)
    near_edges = _unique_edges(np.concatenate(near_parts).reshape(-1, 2))  # a pair can collide in bands of two parts
    all_edges = np.concatenate((exact_edges, near_edges))

    nodes = np.unique(all_edges)  # sorted keys of every document that has a duplicate
    roots = connected_components(
        len(nodes), np.searchsorted(nodes, all_edges[:, 0]), np.searchsorted(nodes, all_edges[:, 1])
    )
    removed = roots != np.arange(len(nodes))
    reasons = np.where(removed, NEAR, 0).astype(np.uint8)
    exact_members = np.searchsorted(nodes, exact_edges[:, 1])  # non-first members of exact groups
    reasons[exact_members] = EXACT

    stats = StageStats()
    total = sum(shards.values())
    stats.docs_in = total
    stats.docs_out = total - int(removed.sum())
    for code, name in enumerate(REASONS, start=1):
        n = int((reasons == code).sum())
        if n:
            stats.drop(name, n)
    sizes = np.bincount(roots, minlength=len(nodes))
    hist = Counter(sizes[sizes > 0].tolist())
    stats.extra["cluster_sizes"] = {str(k): hist[k] for k in sorted(hist)}
    exact_sizes = Counter((np.unique(exact_edges[:, 0], return_counts=True)[1] + 1).tolist()) if len(exact_edges) else Counter()
    stats.extra["exact_cluster_sizes"] = {str(k): exact_sizes[k] for k in sorted(exact_sizes)}
    stats.extra["clusters"] = int(sum(hist.values()))
    rejected = _unique_edges(np.concatenate(rejected_parts).reshape(-1, 2))
    stats.extra["candidate_edges"] = int(len(near_edges) + len(rejected))
    stats.extra["rejected_edges"] = int(len(rejected))  # LSH candidates below dedup.threshold, never merged

    shard_of, row_of = split_keys(nodes[removed])
    removed_reasons = reasons[removed]
    for shard in sorted(shards):
        lo, hi = np.searchsorted(shard_of, [shard, shard + 1])
        save_npy(removal_path(out_dir, shard), row_of[lo:hi].astype(np.uint32))
        save_npy(reason_path(out_dir, shard), removed_reasons[lo:hi])
    save_npy(os.path.join(out_dir, "clusters.npy"), np.stack((nodes, nodes[roots]), axis=1).astype(np.uint64))
    save_json(
        os.path.join(out_dir, STATS_FILE),
        {"format": "dedup-removals/1", "shards": {str(s): n for s, n in sorted(shards.items())}, "stats": stats.to_dict()},
    )
    _log_merge(total, stats)
    return stats


def _log_merge(total: int, stats: StageStats) -> None:
    log.info(
        "dedup: %d documents, %d exact and %d near duplicates removed, %d clusters",
        total, stats.dropped["exact_duplicate"], stats.dropped["near_duplicate"], stats.extra["clusters"],
    )


def cluster_stage(
    signature_paths: Sequence[str], out_dir: str, cfg: Any, num_parts: int | None = None
) -> StageStats:
    """Buckets (all parts, here one after the other) then merge: the whole clustering in one call.

    ``num_parts`` defaults to ``cfg.bucket_parts``. To run the parts in parallel, call
    :func:`bucket_stage` for each part in its own worker, then :func:`merge_stage` once; the output is the
    same byte for byte whatever ``num_parts`` is.
    """
    dcfg = as_dedup_config(cfg)
    if not signature_paths:
        raise ConfigError("dedup cluster stage: no signature files given")
    parts = dcfg.bucket_parts if num_parts is None else num_parts
    os.makedirs(out_dir, exist_ok=True)
    for part in range(parts):
        bucket_stage(signature_paths, out_dir, dcfg, part, parts)
    return merge_stage(out_dir, dcfg, parts)


def load_clusters(out_dir: str) -> np.ndarray:
    """``(n, 2)`` uint64 array of (key, kept key) for every document of a duplicate cluster."""
    return load_npy(os.path.join(out_dir, "clusters.npy"), "dedup cluster file")
