"""Candidate verification: an LSH bucket collision is a *candidate*, merged only if its Jaccard is high enough.

Why: a 14 x 8 band scheme finds pairs of Jaccard 0.5 with probability 0.05 and 0.6 with 0.21, so on a real
corpus some documents are removed as near-duplicates of documents they share barely half their shingles
with. Checking each candidate pair against ``dedup.threshold`` cuts those off at the cost of one
comparison per candidate (candidates grow with the duplicates, not with the corpus):

* ``verify=signature``: the fraction of equal entries of the two full ``num_perm`` signatures (the MinHash
  estimate of the Jaccard similarity; standard deviation ``sqrt(J(1-J)/num_perm)``, 0.043 at J = 0.7 with
  112 permutations);
* ``verify=exact``: the exact Jaccard of the two documents' distinct shingle values (32-bit shingle hashes:
  two different shingles collide with probability ``2**-32``).

Candidate pairs come from :func:`window_edges`: inside each bucket (sorted by key), every member is paired
with the ``window`` members before it, so buckets of up to ``window + 1`` members give all their pairs and a
huge bucket of boilerplate costs ``m * window`` checks instead of ``m**2``; the chain of verified edges
still joins such a bucket into one cluster. Every step depends only on the set of pairs, never on the
order of shards or rows, so the output stays byte-identical whatever the sharding or ``bucket_parts``.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

from data_pipelines.dedup.config import DedupConfig
from data_pipelines.dedup.signatures import open_signatures, split_keys
from pretrain.core.errors import DataError

_CHUNK = 1 << 18  # edges compared per vectorised block: 256k x 112 x 4 bytes x 2 = 230 MB at most


def window_edges(keys: np.ndarray, hashes: np.ndarray, window: int) -> np.ndarray:
    """Candidate pairs ``(smaller key, larger key)`` of one band: each bucket member with the ``window``
    members before it in key order (see the module docstring)."""
    return np.concatenate([np.zeros((0, 2), dtype=np.uint64), *window_edge_blocks(keys, hashes, window)])


def window_edge_blocks(keys: np.ndarray, hashes: np.ndarray, window: int) -> Iterator[np.ndarray]:
    """:func:`window_edges` one distance at a time (each block at most one pair per key): a bucket of ``m``
    members gives up to ``window x m`` pairs, more than the keys themselves, so the bounded path takes them
    block by block."""
    if len(keys) < 2:
        return
    order = np.lexsort((keys, hashes))  # by hash, then key: every bucket is a run sorted by key
    h, k = hashes[order], keys[order]
    new = np.ones(len(k), dtype=bool)
    new[1:] = h[1:] != h[:-1]
    starts = np.flatnonzero(new)
    sizes = np.diff(np.append(starts, len(k)))
    if sizes.max() < 2:
        return
    pos = np.arange(len(k)) - np.repeat(starts, sizes)  # position inside the bucket
    for j in range(1, min(window, int(sizes.max()) - 1) + 1):
        idx = np.flatnonzero(pos >= j)
        yield np.stack((k[idx - j], k[idx]), axis=1)


def verify_edges(
    edges: np.ndarray, signature_paths: Sequence[str], cfg: DedupConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Split candidate ``edges`` ((n, 2) uint64 keys) into (accepted, rejected) by ``cfg.verify``.

    Reads each signature file once and keeps only the rows of documents that have a candidate, so memory
    is ``candidate documents x num_perm x 4`` bytes (plus their shingle sets with ``verify=exact``); with
    ``dedup.memory_mb`` the cluster stage uses :func:`~data_pipelines.dedup.verify_external.verify_edges_bounded`
    instead (the same decisions within the budget).
    """
    if cfg.verify == "none" or len(edges) == 0:
        return edges, np.zeros((0, 2), dtype=np.uint64)
    nodes = np.unique(edges)
    node_shard, node_row = split_keys(nodes)
    width = np.zeros(len(nodes), dtype=np.int64)  # num_perm of each node's kind (0: not found)
    sigs: np.ndarray | None = None
    shingles: list[np.ndarray | None] = [None] * len(nodes) if cfg.verify == "exact" else []
    for path in sorted(signature_paths):
        with open_signatures(path, cfg) as f:
            shard = int(f.meta["shard"])
            lo, hi = np.searchsorted(node_shard, [shard, shard + 1])
            if lo == hi:
                continue
            band_rows = f["band_rows"]
            at = np.searchsorted(band_rows, node_row[lo:hi])
            at = np.minimum(at, max(len(band_rows) - 1, 0))
            found = band_rows[at] == node_row[lo:hi] if len(band_rows) else np.zeros(hi - lo, dtype=bool)
            sig = f["sig"]
            width_of_file = int((f.meta.get("params") or {}).get("num_perm", -1))
            if sig.shape != (len(band_rows), width_of_file):
                raise DataError(f"dedup signature file {path}: signatures {sig.shape}, expected ({len(band_rows)}, "
                                f"{width_of_file}); rerun the signature stage")
            if sigs is None or sig.shape[1] > sigs.shape[1]:
                grown = np.zeros((len(nodes), sig.shape[1]), dtype=np.uint32)
                if sigs is not None:
                    grown[:, : sigs.shape[1]] = sigs
                sigs = grown
            take = np.flatnonzero(found)
            sigs[lo + take, : sig.shape[1]] = sig[at[take]]
            width[lo + take] = sig.shape[1]
            if cfg.verify == "exact":
                values, offsets = f["shingles"], f["shingle_offsets"]
                for t in take.tolist():
                    r = int(at[t])
                    shingles[lo + t] = values[offsets[r] : offsets[r + 1]].copy()  # a view would pin the whole shard
    if sigs is None:  # no endpoint in any given signature file: nothing can be verified
        return np.zeros((0, 2), dtype=np.uint64), edges
    u = np.searchsorted(nodes, edges[:, 0])
    v = np.searchsorted(nodes, edges[:, 1])
    keep = np.zeros(len(edges), dtype=bool)
    if cfg.verify == "signature":
        for c0 in range(0, len(edges), _CHUNK):
            cu, cv = u[c0 : c0 + _CHUNK], v[c0 : c0 + _CHUNK]
            w = width[cu]
            agree = (sigs[cu] == sigs[cv]).sum(axis=1) - (sigs.shape[1] - w)  # padding columns are equal zeros
            ok = (w > 0) & (w == width[cv])
            keep[c0 : c0 + _CHUNK] = ok & (agree >= cfg.threshold * np.maximum(w, 1) - 1e-9)
    else:
        for i, (a, b) in enumerate(zip(u.tolist(), v.tolist())):
            sa, sb = shingles[a], shingles[b]
            if sa is None or sb is None or width[a] != width[b]:
                continue
            inter = len(np.intersect1d(sa, sb, assume_unique=True))
            union = len(sa) + len(sb) - inter
            keep[i] = union > 0 and inter >= cfg.threshold * union - 1e-9
    return edges[keep], edges[~keep]
