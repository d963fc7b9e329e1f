"""Synthetic signature files at any scale, for the bounded-memory clustering test and benchmark.

Real signatures of 20 million documents would take hours to compute here; the clustering stages only read
the arrays, so these files carry made-up ones with the real layout (:mod:`data_pipelines.dedup.signatures`)
and planted duplicates: every document has a *content id*; a ``dup_fraction`` of them reuse an earlier
document's content (in any earlier shard), half as exact copies (same exact hash, same signature), half as
near copies (a tenth of the signature entries redrawn, the band hashes recomputed from it, a new exact
hash). A ``hot_fraction`` of them are instead near copies of document 0, one cluster as large as a page of
boilerplate copied all over a crawl: its buckets are huge, and so is its number of candidate pairs.
Everything derives from counter-based hashes of (content, variant), so a shard is generated alone,
in memory proportional to its size.
"""

from __future__ import annotations

import os
from dataclasses import asdict

import numpy as np

from data_pipelines.dedup.config import DedupConfig
from data_pipelines.dedup.io import save_arrays
from data_pipelines.dedup.signatures import FORMAT

_U = np.uint64


def _mix(z: np.ndarray) -> np.ndarray:
    z = z + _U(0x9E3779B97F4A7C15)
    z = (z ^ (z >> _U(30))) * _U(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> _U(27))) * _U(0x94D049BB133111EB)
    return z ^ (z >> _U(31))


def write_signatures(
    out_dir: str, num_docs: int, num_shards: int, cfg: DedupConfig, dup_fraction: float = 0.1, seed: int = 0,
    with_signatures: bool = True, hot_fraction: float = 0.0,
) -> list[str]:
    """Write ``num_shards`` signature files for ``num_docs`` synthetic documents; returns their paths.

    ``with_signatures=False`` leaves out the full signatures (only ``verify=none`` can cluster such files).
    """
    params = cfg.params_for(None)
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    bounds = [num_docs * i // num_shards for i in range(num_shards + 1)]
    with np.errstate(over="ignore"):
        for shard in range(num_shards):
            lo, hi = bounds[shard], bounds[shard + 1]
            n = hi - lo
            rng = np.random.Generator(np.random.PCG64([seed, shard]))
            content = np.arange(lo, hi, dtype=np.uint64)
            variant = np.zeros(n, dtype=np.uint64)
            dup = np.flatnonzero(rng.random(n) < dup_fraction)
            if lo + len(dup):
                content[dup] = (rng.random(len(dup)) * (lo + dup)).astype(np.uint64)  # an earlier document
                near = dup[rng.random(len(dup)) < 0.5]
                variant[near] = _U(1) + rng.integers(0, 1 << 30, size=len(near), dtype=np.uint64)
            if hot_fraction:
                hot = np.flatnonzero(rng.random(n) < hot_fraction)
                hot = hot[lo + hot > 0]  # document 0 itself stays the original
                content[hot] = 0
                variant[hot] = _U(1) + rng.integers(0, 1 << 30, size=len(hot), dtype=np.uint64)
            cols = np.arange(params.num_perm, dtype=np.uint64)[None, :]
            base = content[:, None] * _U(params.num_perm) + cols
            sig = (_mix(base ^ _U(seed)) >> _U(32)).astype(np.uint32)
            redraw = (variant[:, None] > 0) & (_mix(base * _U(31) + variant[:, None]) % _U(10) == 0)
            sig = np.where(redraw, (_mix(base + variant[:, None] * _U(7)) >> _U(32)).astype(np.uint32), sig)
            weights = _mix(np.arange(params.rows, dtype=np.uint64) + _U(params.fingerprint))
            used = sig[:, : params.bands * params.rows].astype(np.uint64).reshape(n, params.bands, params.rows)
            bands = _mix((used * weights[None, None, :]).sum(axis=2, dtype=np.uint64) + _U(params.fingerprint)).T
            exact = np.stack((_mix(content * _U(2) + variant * _U(1 << 33)), _mix(content * _U(2) + _U(1) + variant)),
                             axis=1)
            arrays = {"exact": exact, "band_rows": np.arange(n, dtype=np.uint32),
                      "bands": np.ascontiguousarray(bands)}
            if with_signatures:
                arrays["sig"] = sig
            del sig, used, base, redraw
            meta = {"format": FORMAT, "shard": shard, "num_docs": n, "kind": None, "exact": True, "minhash": True,
                    "params": asdict(params), "fingerprint": params.fingerprint, "shingles": False}
            paths.append(os.path.join(out_dir, f"sig-{shard:05d}.npz"))
            save_arrays(paths[-1], arrays, meta)
    return paths
