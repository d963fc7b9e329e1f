"""Connected components of an edge list with a vectorised union-find (numpy, no Python loop per edge).

Each round hooks, for every edge whose endpoints are in different trees, the larger root under the smaller
one (``np.minimum.at``, so concurrent hooks resolve to the smallest candidate), then compresses every path
with pointer jumping (``parent = parent[parent]`` until stable) and drops the edges that became internal.
``parent[x] <= x`` holds throughout, so no cycle can form and the final root of a component is its
smallest node: with nodes numbered in key order, the root *is* the document the dedup rule keeps. The
result depends only on the edge set, never on edge order. Every round merges at least the largest root
that still has a cross edge, and in practice the number of rounds is logarithmic (pointer jumping halves
path lengths, hooking to the minimum merges stars at once).

scipy's ``connected_components`` would also do, but it returns arbitrary component labels that need a
second pass to map to minimum keys, and this keeps the dedup package numpy-only.
"""

from __future__ import annotations

import numpy as np


def connected_components(num_nodes: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``root[i]`` = smallest node of ``i``'s component, for nodes ``0..num_nodes-1`` and edges ``(u, v)``."""
    u = np.asarray(u, dtype=np.int64)
    v = np.asarray(v, dtype=np.int64)
    if u.shape != v.shape:
        raise ValueError(f"edge endpoint arrays differ in shape: {u.shape} vs {v.shape}")
    if len(u) and (min(u.min(), v.min()) < 0 or max(u.max(), v.max()) >= num_nodes):
        raise ValueError(f"edge endpoint outside [0, {num_nodes})")
    parent = np.arange(num_nodes, dtype=np.int64)
    while len(u):
        pu, pv = parent[u], parent[v]
        cross = pu != pv
        if not cross.any():
            break
        u, v, pu, pv = u[cross], v[cross], pu[cross], pv[cross]
        lo, hi = np.minimum(pu, pv), np.maximum(pu, pv)
        np.minimum.at(parent, hi, lo)
        while True:  # pointer jumping: afterwards every node points at its root
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand
    return parent
