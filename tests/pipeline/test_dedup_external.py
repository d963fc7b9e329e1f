"""Bounded-memory clustering (dedup.memory_mb): byte-identical output to the in-memory path on 200k synthetic
signatures with planted exact and near duplicates, spilling to many radix files."""

from __future__ import annotations

import os

import numpy as np

from data_pipelines.dedup import DedupConfig, cluster_stage
from data_pipelines.dedup.external import radix_bits
from data_pipelines.dedup.simulate import write_signatures


def test_bounded_clustering_matches_in_memory(tmp_path):
    base = dict(num_perm=32, bands=8, rows=4)
    paths = write_signatures(str(tmp_path / "sig"), 200_000, 8, DedupConfig(**base), dup_fraction=0.1, seed=3)
    outputs = {}
    for name, extra in {"memory": {}, "bounded": {"memory_mb": 1}}.items():
        cfg = DedupConfig(**base, **extra)
        stats = cluster_stage(paths, str(tmp_path / name), cfg)
        files = sorted(os.listdir(tmp_path / name))
        outputs[name] = {f: (tmp_path / name / f).read_bytes() for f in files if not f.startswith("buckets-")}
        assert not [f for f in files if f.startswith("spill")]  # spill files are cleaned up
    assert outputs["bounded"] == outputs["memory"]
    assert stats.dropped["exact_duplicate"] > 5000 and stats.dropped["near_duplicate"] > 5000, stats.dropped
    # 1 MiB for 200k records of a band (3.2 MB, 4x that to sort) really spills: 2**4 radix files per band
    assert radix_bits(200_000, 16, 1 << 20) == 4
    assert np.load(tmp_path / "bounded" / "clusters.npy").shape[0] > 10000


def test_new_dedup_keys_are_checked_and_stale_files_named(tmp_path):
    import re

    import pytest

    from data_pipelines.dedup import signature_stage
    from data_pipelines.dedup.config import as_dedup_config
    from pretrain.core.errors import ConfigError, DataError

    for key, value, expected in [("verify", "maybe", "none, signature, exact"), ("threshold", 1.5, "(0, 1]"),
                                 ("memory_mb", -1, "non-negative"), ("verify_window", 0, "positive")]:
        pattern = rf"^dedup\.{key}={re.escape(repr(value))}: expected .*{re.escape(expected)}"
        with pytest.raises(ConfigError, match=pattern):
            as_dedup_config({key: value})
    path = str(tmp_path / "sig.npz")
    signature_stage(0, ["some words of a document here and there"] * 3, path, DedupConfig())
    with pytest.raises(DataError, match="holds no shingle sets.*verify=exact"):
        cluster_stage([path], str(tmp_path / "out"), DedupConfig(verify="exact"))
