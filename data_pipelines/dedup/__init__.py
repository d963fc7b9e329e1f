"""Exact and MinHash-LSH near-duplicate removal across shards, as file-based stages.

Stages (each parallel over shards, see the module docstrings for formats and scaling):

1. :func:`signature_stage` per shard: 128-bit normalised-content hashes and MinHash band hashes;
2. :func:`cluster_stage` (= :func:`bucket_stage` per band/hash part, then :func:`merge_stage`): band
   buckets and exact groups become edges, a vectorised union-find makes clusters, each keeps its smallest
   global key (``shard << 32 | row``); writes ``remove-<shard>.npy`` per shard and ``dedup.json``;
3. :func:`load_removals` / :class:`DedupFilter` in the final filter stage of each shard.
"""

from data_pipelines.dedup.cluster import REASONS, bucket_stage, cluster_stage, load_clusters, merge_stage
from data_pipelines.dedup.config import DedupConfig, KindOverride, MinHashParams, optimal_bands_rows
from data_pipelines.dedup.minhash import compute_signatures, estimate_jaccard, exact_hash, normalize
from data_pipelines.dedup.removals import DedupFilter, load_removal_reasons, load_removals
from data_pipelines.dedup.signatures import doc_key, signature_stage, split_keys

__all__ = [
    "REASONS",
    "DedupConfig",
    "DedupFilter",
    "KindOverride",
    "MinHashParams",
    "bucket_stage",
    "cluster_stage",
    "compute_signatures",
    "doc_key",
    "estimate_jaccard",
    "exact_hash",
    "load_clusters",
    "load_removal_reasons",
    "load_removals",
    "merge_stage",
    "normalize",
    "optimal_bands_rows",
    "signature_stage",
    "split_keys",
]
