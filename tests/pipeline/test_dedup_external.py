"""Bounded-memory clustering (dedup.memory_mb): byte-identical output to the in-memory path on 200k synthetic
signatures with planted exact and near duplicates, spilling to many radix files, and candidate verification
(verify=signature|exact) with the same decisions as in memory within the budget (tracemalloc peaks)."""

from __future__ import annotations

import logging
import os
import re
import tracemalloc
from dataclasses import asdict

import numpy as np
import pytest

from data_pipelines.dedup import DedupConfig, KindOverride, cluster_stage
from data_pipelines.dedup.external import radix_bits
from data_pipelines.dedup.io import ArrayFile, save_arrays
from data_pipelines.dedup.signatures import FORMAT
from data_pipelines.dedup.simulate import write_signatures
from data_pipelines.dedup.verify import verify_edges
from data_pipelines.dedup.verify_external import verify_edges_bounded
from pretrain.core.errors import ConfigError, DataError


def traced_peak(fn, *args):
    """``(result, peak bytes allocated during the call)``; numpy reports its buffers to tracemalloc."""
    tracemalloc.start()
    try:
        return fn(*args), tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_bounded_clustering_matches_in_memory(tmp_path, monkeypatch):
    import data_pipelines.dedup.external as external

    base = dict(num_perm=32, bands=8, rows=4)  # verify=signature, the default
    paths = write_signatures(str(tmp_path / "sig"), 200_000, 8, DedupConfig(**base), dup_fraction=0.1, seed=3)
    outputs, peaks = {}, {}
    appends = {}
    real_buffer = external._SpillBuffer

    class CountingBuffer(real_buffer):
        def flush(self):
            super().flush()
            appends[name] = self.appends

    monkeypatch.setattr(external, "_SpillBuffer", CountingBuffer)
    # 2 MiB: the bounded merge's union-find holds 8 bytes for each of the 200k documents
    for name, extra in {"memory": {}, "bounded": {"memory_mb": 2}, "held": {"memory_mb": 2}}.items():
        if name == "held":  # records held across signature files
            monkeypatch.setattr(external, "_SPILL_BUFFER_SHARE", 1 / 4)  # 8 MiB: two files' 3.8 MB of records
        cfg = DedupConfig(**base, **extra)
        stats, peaks[name] = traced_peak(cluster_stage, paths, str(tmp_path / name), cfg)
        files = sorted(os.listdir(tmp_path / name))
        outputs[name] = {f: (tmp_path / name / f).read_bytes() for f in files if not f.startswith("buckets-")}
        assert not [f for f in files if f.startswith("spill")]  # spill files (buckets and verification) are cleaned up
    assert outputs["bounded"] == outputs["memory"] and outputs["held"] == outputs["memory"]
    # each of the 8 files appended to its 16 exact and 8 x 16 band radix files; held, about half as often
    assert appends["bounded"] == 8 * (16 + 8 * 16) and appends["held"] <= appends["bounded"] * 0.6, appends
    assert stats.dropped["exact_duplicate"] > 5000 and stats.dropped["near_duplicate"] > 5000, stats.dropped
    assert stats.extra["rejected_edges"] > 10, stats.extra  # verification decided something
    # in memory: every band record (25 MB) and every candidate's signature; bounded: about one shard's arrays
    assert peaks["bounded"] < 8 << 20 and peaks["bounded"] * 4 < peaks["memory"], peaks
    # 1 MiB for 200k records of a band (3.2 MB, 6x that to group) really spills: 2**5 radix files per band
    assert radix_bits(200_000, 16, 1 << 20) == 5
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


def _verify_files(tmp_path, cfg: DedupConfig, pairs: int, shards: int = 8, docs: int = 3000,
                  seed: int = 0) -> tuple[list[str], np.ndarray]:
    """Signature files with shingle sets, and candidate pairs across them with Jaccards around the threshold.

    Documents of one *group* draw their signature entries and shingles from the group's small pools, so
    pairs inside a group range from J 0.4 to 1 (both estimated and exact); shard 3 is of kind ``code``
    (more permutations: its pairs with web documents differ in width and are rejected); every 50th
    document has no shingles (not in ``band_rows``), and some pairs name shard 99, which has no file.
    """
    rng = np.random.default_rng(seed)
    paths = []
    for shard in range(shards):
        kind = "code" if shard == 3 else None
        params = cfg.params_for(kind)
        rows = np.flatnonzero(np.arange(docs) % 50 != 7).astype(np.uint32)
        group = rows.astype(np.int64) % 97
        pick = rng.random((len(rows), params.num_perm)) < rng.uniform(0.7, 1.0, (len(rows), 1))
        noise = rng.integers(0, 1 << 31, (len(rows), params.num_perm))
        sig = np.where(pick, group[:, None] * 1000 + np.arange(params.num_perm), noise)
        pool = 10 + group * 37 % 200  # shingles of a group: g * 1000 + 0..pool-1, each document keeps 70-100% of them
        keep = rng.random((len(rows), 210)) < rng.uniform(0.7, 1.0, (len(rows), 1))
        sets = [(g * 1000 + np.flatnonzero(k[:n])).astype(np.uint32) for g, n, k in zip(group, pool, keep)]
        meta = {"format": FORMAT, "shard": shard, "num_docs": docs, "kind": kind, "exact": True, "minhash": True,
                "params": asdict(params), "fingerprint": params.fingerprint, "shingles": True}
        arrays = {"exact": rng.integers(0, 1 << 63, (docs, 2)).astype(np.uint64), "band_rows": rows,
                  "bands": np.zeros((params.bands, len(rows)), np.uint64), "sig": sig.astype(np.uint32),
                  "shingles": np.concatenate(sets),
                  "shingle_offsets": np.concatenate(([0], np.cumsum([len(x) for x in sets]))).astype(np.int64)}
        paths.append(str(tmp_path / f"sig-{shard}.npz"))
        save_arrays(paths[-1], arrays, meta)
    n = pairs
    a_shard, b_shard = rng.integers(0, shards, n), rng.integers(0, shards, n)
    a_row = rng.integers(0, docs, n)
    b_row = a_row % 97 + 97 * rng.integers(0, docs // 97, n)  # mostly the same group
    b_row[: n // 10] = rng.integers(0, docs, n // 10)
    b_shard[:50] = 99
    a = (a_shard.astype(np.uint64) << np.uint64(32)) | a_row.astype(np.uint64)  # global keys, as doc_key makes
    b = (b_shard.astype(np.uint64) << np.uint64(32)) | b_row.astype(np.uint64)
    edges = np.stack((np.minimum(a, b), np.maximum(a, b)), axis=1)
    edges = np.unique(edges[edges[:, 0] != edges[:, 1]], axis=0)  # sorted, distinct: what the bucket step gives
    return paths, edges


@pytest.mark.parametrize("verify", ["signature", "exact"])
def test_bounded_verification_decides_like_memory_within_budget(tmp_path, caplog, verify):
    params = dict(num_perm=32, bands=8, rows=4, kinds={"code": KindOverride(num_perm=64, bands=16)})
    cfg = DedupConfig(verify=verify, **params)
    paths, edges = _verify_files(tmp_path, cfg, pairs=8_000 if verify == "signature" else 4_000)  # exact: a loop
    (accepted, rejected), peak_memory = traced_peak(verify_edges, edges, paths, cfg)
    bounded = DedupConfig(verify=verify, memory_mb=1, **params)
    spill = str(tmp_path / "sp")
    caplog.set_level(logging.INFO, logger="data_pipelines.dedup.verify_external")
    (b_accepted, b_rejected), peak_bounded = traced_peak(verify_edges_bounded, edges, paths, bounded, spill)
    assert np.array_equal(b_accepted, accepted) and np.array_equal(b_rejected, rejected)
    assert b_accepted.dtype == accepted.dtype == np.uint64
    assert 0.2 * len(edges) < len(accepted) < 0.8 * len(edges), (len(accepted), len(edges))
    assert not os.path.exists(tmp_path / "sp")
    partitions = int(re.search(r"in (\d+) partitions", caplog.text).group(1))
    assert partitions >= 8, caplog.text  # both sides of the pairs really went through many spill partitions
    # the documented bound (verify_external's docstring): half the budget of buffers plus 48 bytes per
    # candidate pair; the in-memory path, holding every candidate's signature (and shingles), breaks it
    bound = (1 << 20) // 2 + 48 * len(edges)
    assert peak_bounded < bound < peak_memory, (peak_bounded, bound, peak_memory)


def test_bounded_path_checks_array_shapes_and_names_the_file(tmp_path):
    from pretrain.core.errors import DataError

    cfg = DedupConfig(num_perm=32, bands=8, rows=4)
    paths = write_signatures(str(tmp_path / "sig"), 2000, 2, cfg, dup_fraction=0.2, seed=1)
    with ArrayFile(paths[1], "x") as f:
        meta, good = f.meta, {k: f[k] for k in ("exact", "band_rows", "bands", "sig")}
    cases = [("exact", good["exact"][:-1], "exact hashes"), ("bands", good["bands"][:, :-1], "band arrays"),
             ("band_rows", good["band_rows"][::-1].copy(), "band arrays"), ("sig", good["sig"][:, :-1], "signatures")]
    for i, (name, bad, message) in enumerate(cases):
        save_arrays(paths[1], {**good, name: bad}, meta)
        for extra in ({"memory_mb": 1}, {}):
            with pytest.raises(DataError, match=rf"{re.escape(paths[1])}: {message}"):
                cluster_stage(paths, str(tmp_path / f"out-{i}"), DedupConfig(num_perm=32, bands=8, rows=4, **extra))


def test_bounded_exact_verification_end_to_end_same_bytes(tmp_path):
    """verify=exact through the real signature stage (shingle sets in the files), in memory and bounded."""
    from data_pipelines.dedup import signature_stage
    from data_pipelines.dedup.synthetic import stdlib_docstrings

    docs = stdlib_docstrings(min_words=60, limit=60)
    texts = list(docs)
    for i in range(0, 60, 3):  # near copies: one word changed (J ~ 0.95) or every 25th word (J ~ 0.67)
        words = docs[i].split()
        for j in range(0, len(words), 25 if i % 2 else len(words)):
            words[j] = f"edit{j}"
        texts.append(" ".join(words))
    outputs = {}
    for name, extra in {"memory": {}, "bounded": {"memory_mb": 1}}.items():
        cfg = DedupConfig(verify="exact", **extra)
        paths = []
        for shard in range(3):
            paths.append(str(tmp_path / f"sig-{name}-{shard}.npz"))
            signature_stage(shard, texts[shard::3], paths[-1], cfg, kind="web")
        stats = cluster_stage(paths, str(tmp_path / name), cfg)
        outputs[name] = {f: (tmp_path / name / f).read_bytes() for f in sorted(os.listdir(tmp_path / name))
                         if not f.startswith("buckets-")}
    assert outputs["bounded"] == outputs["memory"]
    assert stats.dropped["near_duplicate"] >= 5 and stats.extra["rejected_edges"] >= 1, stats


def _part_files(folder, parts: int, shards: dict[int, int], seed: int, near_pairs: int, chain: int = 0) -> None:
    """Bucket part files as the bucket stage writes them: exact groups (each in one part, star edges from the
    group's smallest key), near and rejected pairs sorted and distinct per part, some of them in two parts,
    and a chain of ``chain`` near edges (a path that one round of hooking cannot close)."""
    from data_pipelines.dedup.cluster import _unique_edges, part_path
    from data_pipelines.dedup.signatures import doc_key

    rng = np.random.default_rng(seed)
    keys = np.concatenate([doc_key(s, np.arange(n)) for s, n in sorted(shards.items())])
    order = rng.permutation(len(keys))
    exact, near, rejected = ([[] for _ in range(parts)] for _ in range(3))
    at = 0
    for _ in range(len(keys) // 20):  # exact groups of 2-5 documents
        size = int(rng.integers(2, 6))
        group = np.sort(keys[order[at:at + size]])
        at += size
        exact[int(rng.integers(parts))].append(np.stack((np.full(size - 1, group[0]), group[1:]), axis=1))
    pairs = np.sort(keys[rng.integers(0, len(keys), size=(near_pairs, 2))], axis=1)
    path = np.sort(keys[order[at:at + chain + 1]])[::-1]  # the chain runs from the largest key down
    pairs = np.concatenate((pairs, np.stack((np.minimum(path[:-1], path[1:]), np.maximum(path[:-1], path[1:])), 1)))
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    for i, pair in enumerate(np.array_split(pairs, 8)):
        dest = rejected if i == 7 else near
        for p in {int(rng.integers(parts)), int(rng.integers(parts))}:
            dest[p].append(pair)
    for part in range(parts):
        arrays = {name: _unique_edges(np.concatenate(blocks)) if blocks else np.zeros((0, 2), dtype=np.uint64)
                  for name, blocks in (("exact_edges", exact[part]), ("near_edges", near[part]),
                                       ("rejected_edges", rejected[part]))}
        meta = {"part": part, "num_parts": parts, "shards": {str(s): n for s, n in sorted(shards.items())}}
        save_arrays(part_path(str(folder), part, parts), arrays, meta)


@pytest.mark.parametrize("parts", [1, 3])
def test_bounded_merge_matches_in_memory_and_holds_no_edges(tmp_path, monkeypatch, parts):
    """The merge within dedup.memory_mb: the same bytes as in memory, in edge chunks and document blocks far
    smaller than the input (many hooking rounds, a long chain, pairs repeated across parts), and a peak that
    does not grow with the edges the way the in-memory merge's does."""
    import data_pipelines.dedup.merge_bounded as mb
    from data_pipelines.dedup.cluster import merge_stage

    shards = {0: 30_000, 3: 25_000, 7: 45_000}  # shard numbers need not be consecutive
    monkeypatch.setattr(mb, "_MIN_CHUNK", 1000)
    peaks = {}
    for edges in (20_000, 200_000):
        outputs = {}
        for name, mb_ in (("memory", 0), ("bounded", 1)):
            folder = tmp_path / f"{edges}-{name}"
            _part_files(folder, parts, shards, seed=parts, near_pairs=edges, chain=5_000)
            _, peaks[edges, name] = traced_peak(merge_stage, str(folder), DedupConfig(memory_mb=mb_), parts)
            outputs[name] = {f: (folder / f).read_bytes() for f in sorted(os.listdir(folder))}
        assert outputs["bounded"] == outputs["memory"]
    # bounded: 8 bytes per document (0.8 MB) plus chunks; in memory: ~150 bytes per edge
    assert peaks[200_000, "bounded"] < 2 * peaks[20_000, "bounded"] < peaks[200_000, "memory"] / 4, peaks


def test_bounded_merge_budget_is_checked_before_the_bucket_work(tmp_path):
    paths = write_signatures(str(tmp_path / "sig"), 200_000, 2, DedupConfig(num_perm=32, bands=8, rows=4), seed=1)
    with pytest.raises(ConfigError, match=r"dedup.memory_mb=1: the bounded merge holds 8 bytes per document, "
                                          r"1.5 MiB for 200,000 documents; set dedup.memory_mb to at least 2"):
        cluster_stage(paths, str(tmp_path / "out"), DedupConfig(num_perm=32, bands=8, rows=4, memory_mb=1))
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")


def test_bounded_merge_names_a_part_file_whose_edges_are_not_sorted(tmp_path):
    from data_pipelines.dedup.cluster import merge_stage, part_path

    _part_files(tmp_path, 1, {0: 1000}, seed=0, near_pairs=500)
    with ArrayFile(part_path(str(tmp_path), 0, 1), "x") as f:
        arrays = {n: f[n] for n in ("exact_edges", "near_edges", "rejected_edges")}
        meta = f.meta
    arrays["near_edges"] = arrays["near_edges"][::-1].copy()
    save_arrays(part_path(str(tmp_path), 0, 1), arrays, meta)
    with pytest.raises(DataError, match=r"buckets-0000-of-0001.npz: near edges are not sorted and distinct"):
        merge_stage(str(tmp_path), DedupConfig(memory_mb=1), 1)


def test_pair_spill_gives_every_distinct_pair_once_in_order(tmp_path):
    """Pairs on disk come back sorted and distinct, from files split again where they exceed the budget: one
    document with 60,000 partners (a star that shares its top bits), repeats across adds, shards numbered
    with gaps."""
    from data_pipelines.dedup.signatures import doc_key
    from data_pipelines.dedup.spill_pairs import DocIds, PairSpill

    shards = {2: 50_000, 5: 70_000, 9: 1}
    keys = np.concatenate([doc_key(s, np.arange(n)) for s, n in sorted(shards.items())])
    rng = np.random.default_rng(4)
    pairs = np.sort(keys[rng.integers(0, len(keys), size=(150_000, 2))], axis=1)
    star = np.stack((np.full(60_000, keys[7]), keys[8:60_008]), axis=1)
    blocks = [pairs, star, pairs[:40_000], np.stack((keys[-2:-1], keys[-1:]), axis=1)]
    spill = PairSpill(str(tmp_path / "spill"), DocIds(shards), 256 << 10)  # files over 64 KiB are split again
    for b in blocks:
        for part in np.array_split(b, 7):
            spill.add(part)
    got = np.concatenate(list(spill.sorted_pairs()))
    want = np.unique(np.concatenate(blocks), axis=0)
    assert np.array_equal(got, want) and not (tmp_path / "spill").exists()


def test_bounded_bucket_step_holds_a_huge_cluster_within_the_budget(tmp_path):
    """Half of 40k documents are near copies of one (boilerplate copied across a crawl): its buckets give
    ~16 candidate pairs per copy, half a million in all. In memory they are held, verified and merged at once;
    bounded, they go to disk as they are found, are verified a batch at a time and are merged from the part
    file: the same bytes, in a small fraction of the memory."""
    base = dict(num_perm=32, bands=8, rows=4)
    paths = write_signatures(str(tmp_path / "sig"), 40_000, 4, DedupConfig(**base), dup_fraction=0.0, seed=2,
                             hot_fraction=0.5)
    outputs, peaks = {}, {}
    for name, mb_ in (("memory", 0), ("bounded", 2)):
        stats, peaks[name] = traced_peak(cluster_stage, paths, str(tmp_path / name), DedupConfig(**base, memory_mb=mb_))
        outputs[name] = {f: (tmp_path / name / f).read_bytes() for f in sorted(os.listdir(tmp_path / name))}
    assert outputs["bounded"] == outputs["memory"]  # the bucket files too: written from disk, the same bytes
    assert stats.extra["candidate_edges"] > 400_000 and stats.dropped["near_duplicate"] > 19_000, stats
    assert peaks["bounded"] < 8 << 20 and peaks["bounded"] * 10 < peaks["memory"], peaks


def test_bounded_bucket_step_leaves_no_spill_files_when_a_signature_file_is_bad(tmp_path):
    """A corrupt signature file found mid-way (after other files' pairs went to disk) is named, and the
    radix, pair and edge files of the part are gone with the error."""
    cfg = DedupConfig(num_perm=32, bands=8, rows=4, memory_mb=2)
    paths = write_signatures(str(tmp_path / "sig"), 20_000, 4, cfg, seed=5)
    with ArrayFile(paths[2], "x") as f:
        arrays = {n: f[n] for n in ("exact", "band_rows", "bands", "sig")}
        meta = f.meta
    arrays["bands"] = arrays["bands"][:, :-5].copy()  # fewer band rows than documents
    save_arrays(paths[2], arrays, meta)
    with pytest.raises(DataError, match="sig-00002.npz"):
        cluster_stage(paths, str(tmp_path / "out"), cfg)
    assert not [f for f in os.listdir(tmp_path / "out") if f.startswith("spill")]
