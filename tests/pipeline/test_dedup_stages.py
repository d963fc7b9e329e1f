"""The file-based dedup stages: sharding invariance, determinism, exact dedup across sources, the keep rule,
the final filter and the errors a user sees."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from data_pipelines.dedup import (
    DedupConfig,
    DedupFilter,
    cluster_stage,
    load_clusters,
    load_removal_reasons,
    load_removals,
    signature_stage,
)
from data_pipelines.dedup.synthetic import stdlib_docstrings
from data_pipelines.document import Document
from data_pipelines.stats import StageStats
from pretrain.core.errors import DataError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    """Real docstrings with exact copies (case/whitespace changed) and near copies (a few words edited)."""
    docs = stdlib_docstrings(min_words=60, limit=80)
    out = list(docs)
    for i in range(0, 80, 8):
        out.insert(out.index(docs[i]), "  ".join(docs[i].upper().split()))  # exact copy (after normalisation), first
    for i in range(4, 80, 8):
        words = docs[i].split()
        words[len(words) // 2] = "CHANGED"
        out.append(" ".join(words))  # near duplicate (J ~ 0.9)
    return out


def run_dedup(tmp: Path, texts: list[str], num_shards: int, cfg: DedupConfig, reverse: bool = False, parts: int | None = None):
    bounds = [len(texts) * i // num_shards for i in range(num_shards + 1)]
    paths = []
    for shard in range(num_shards):
        path = str(tmp / f"sig-{shard}.npz")
        signature_stage(shard, texts[bounds[shard] : bounds[shard + 1]], path, cfg, kind="web")
        paths.append(path)
    out = tmp / "out"
    stats = cluster_stage(list(reversed(paths)) if reverse else paths, str(out), cfg, num_parts=parts)
    removed = {}
    for shard in range(num_shards):
        for row, reason in load_removal_reasons(str(out), shard).items():
            removed[bounds[shard] + row] = reason
    return out, stats, removed


def test_same_result_with_1_or_4_shards(tmp_path, corpus):
    cfg = DedupConfig()
    _, stats1, removed1 = run_dedup(tmp_path / "one", corpus, 1, cfg)
    _, stats4, removed4 = run_dedup(tmp_path / "four", corpus, 4, cfg)
    assert removed1 == removed4
    assert stats1.to_dict() == stats4.to_dict()
    assert stats1.dropped["exact_duplicate"] == 10
    assert stats1.dropped["near_duplicate"] >= 10  # the planted ones, plus any the stdlib itself repeats
    # the uppercase copies come first in corpus order, so they are kept and the originals removed
    upper_copies = {i for i, t in enumerate(corpus) if t == t.upper() and "  " in t}
    exact_removed = {i for i, reason in removed1.items() if reason == "exact_duplicate"}
    assert len(upper_copies) == 10 and not upper_copies & exact_removed


def _files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if not p.name.startswith("buckets-")}


def test_outputs_byte_identical_across_runs_orders_and_parts(tmp_path, corpus):
    cfg = DedupConfig()
    out_a, _, _ = run_dedup(tmp_path / "a", corpus, 4, cfg)
    out_b, _, _ = run_dedup(tmp_path / "b", corpus, 4, cfg, reverse=True)
    out_c, _, _ = run_dedup(tmp_path / "c", corpus, 4, cfg, parts=3)  # band-split bucket step
    files = _files(out_a)
    assert {"remove-00000.npy", "reason-00003.npy", "clusters.npy", "dedup.json"} <= set(files)
    assert files == _files(out_b) == _files(out_c)
    assert (tmp_path / "a" / "sig-0.npz").read_bytes() == (tmp_path / "b" / "sig-0.npz").read_bytes()


def test_exact_dedup_across_sources_and_kinds(tmp_path):
    web = ["Python is a programming language that lets you work quickly.", "An unrelated web page about cooking pasta at home."]
    code = ["def f():\n    return 1\n", "PYTHON  is a programming language\nthat lets you work QUICKLY."]
    for cfg in (DedupConfig(), DedupConfig(minhash=False)):
        sig_web, sig_code = str(tmp_path / "web.npz"), str(tmp_path / "code.npz")
        signature_stage(0, web, sig_web, cfg, kind="web")
        signature_stage(1, code, sig_code, cfg, kind="code")  # code MinHash params differ; exact is shared
        stats = cluster_stage([sig_web, sig_code], str(tmp_path / "out"), cfg)
        assert stats.dropped == {"exact_duplicate": 1}
        assert load_removals(str(tmp_path / "out"), 0).tolist() == []
        assert load_removal_reasons(str(tmp_path / "out"), 1) == {1: "exact_duplicate"}
        assert stats.extra["exact_cluster_sizes"] == {"2": 1}


def test_cluster_keeps_exactly_the_smallest_key(tmp_path):
    base = stdlib_docstrings(min_words=80, limit=12)
    words = base[0].split()
    copies = []
    for k in range(5):
        w = list(words)
        w[(k * 7) % len(w)] = f"edit{k}"
        copies.append(" ".join(w))
    # shard 0: unrelated docs, shard 1: copy 3 at row 2, shard 2: copies 0,1 (rows 1, 3), shard 3: 2, 4
    shards = [base[1:5], [base[5], base[6], copies[3]], [base[7], copies[0], base[8], copies[1]], [copies[2], base[9], copies[4]]]
    cfg = DedupConfig()
    paths = []
    for i in (3, 1, 0, 2):  # written out of order
        paths.append(str(tmp_path / f"s{i}.npz"))
        signature_stage(i, shards[i], paths[-1], cfg)
    stats = cluster_stage(paths, str(tmp_path / "out"), cfg)
    assert stats.extra["cluster_sizes"] == {"5": 1}
    assert stats.dropped == {"near_duplicate": 4}
    removed = {s: load_removals(str(tmp_path / "out"), s).tolist() for s in range(4)}
    assert removed == {0: [], 1: [], 2: [1, 3], 3: [0, 2]}  # shard 1 row 2 (smallest key) is kept
    clusters = load_clusters(str(tmp_path / "out"))
    assert len(clusters) == 5 and set(clusters[:, 1].tolist()) == {(1 << 32) | 2}
    assert stats.docs_in == 14 and stats.docs_out == 10


def test_dedup_filter_counts_reasons_and_checks_the_shard(tmp_path, corpus):
    out, stats, removed = run_dedup(tmp_path, corpus, 2, DedupConfig())
    half = len(corpus) // 2
    docs = [Document(id=str(i), text=t, source="web") for i, t in enumerate(corpus[:half])]
    fstats = StageStats()
    kept = list(DedupFilter(str(out), 0)(docs, fstats))
    expected = {i: r for i, r in removed.items() if i < half}
    assert [d.id for d in kept] == [str(i) for i in range(half) if i not in expected]
    assert dict(fstats.dropped) == {r: list(expected.values()).count(r) for r in set(expected.values())}
    assert fstats.docs_in == half and fstats.docs_out == len(kept)
    with pytest.raises(DataError, match="shard 0: 3 documents now"):
        list(DedupFilter(str(out), 0)(docs[:3], StageStats()))


def test_stale_corrupt_and_missing_files_are_named(tmp_path):
    texts = ["some words here for a document"] * 3
    sig = str(tmp_path / "sig.npz")
    signature_stage(0, texts, sig, DedupConfig())
    with pytest.raises(DataError, match=r"sig.npz was written with MinHash parameters .* rerun the signature stage"):
        cluster_stage([sig], str(tmp_path / "out"), DedupConfig(ngram=3))
    other = str(tmp_path / "other.npz")
    signature_stage(0, texts, other, DedupConfig())
    with pytest.raises(DataError, match="two signature files for shard 0"):
        cluster_stage([sig, other], str(tmp_path / "out"), DedupConfig())
    Path(other).write_bytes(Path(other).read_bytes()[:100])
    with pytest.raises(DataError, match="other.npz is unreadable"):
        cluster_stage([other], str(tmp_path / "out"), DedupConfig())
    with pytest.raises(DataError, match="cluster stage has not completed"):
        load_removals(str(tmp_path / "nothing"), 0)
    cluster_stage([sig], str(tmp_path / "out"), DedupConfig())
    assert load_removals(str(tmp_path / "out"), 0).tolist() == [1, 2]
    with pytest.raises(DataError, match="shard 7 was not part of the cluster stage"):
        load_removals(str(tmp_path / "out"), 7)


def test_config_files_match_the_schema():
    schema = OmegaConf.structured(DedupConfig)
    default = OmegaConf.merge(schema, OmegaConf.load(REPO / "conf/dedup/default.yaml"))
    assert OmegaConf.to_object(default) == DedupConfig()
    none = OmegaConf.to_object(OmegaConf.merge(schema, OmegaConf.load(REPO / "conf/dedup/none.yaml")))
    assert not none.enabled
    json.dumps(OmegaConf.to_container(default))  # the resolved config is JSON-able for the report


def test_dedup_none_removes_nothing(tmp_path, corpus):
    cfg = DedupConfig(exact=False, minhash=False)
    _, stats, removed = run_dedup(tmp_path, corpus, 2, cfg)
    assert removed == {} and stats.docs_out == stats.docs_in == len(corpus)
    assert os.path.isfile(tmp_path / "out" / "remove-00001.npy")
