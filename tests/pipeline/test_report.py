"""The report (counts per source and stage, removals by reason, plots) and the manifest it writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_pipelines.executor import Part
from data_pipelines.report import build_report, render_markdown, write_manifest_for, write_report
from data_pipelines.stages.layout import Layout
from data_pipelines.stats import StageStats
from pretrain.core.errors import DataError
from pretrain.core.indexed import IndexedDatasetWriter
from pretrain.core.manifest import read_manifest


def _stats(docs_in: int, docs_out: int, dropped=None, skipped=None, modified=None) -> dict:
    st = StageStats(docs_in, docs_out, docs_in * 100, docs_out * 100)
    for counter, values in ((st.dropped, dropped), (st.skipped, skipped), (st.modified, modified)):
        counter.update({k: v for k, v in (values or {}).items() if v})
    return st.to_dict()


def _part_markers(read_in: int, skipped: int, filt_drop: int, dup: int, tokens: int) -> dict:
    read_out = read_in - skipped
    kept = read_out - filt_drop
    final = kept - dup
    return {
        "read": {
            "read": _stats(read_in, read_out, skipped={"truncated_gzip": skipped}),
            "filters": [{"name": "gopher_quality", "stats": _stats(read_out, kept, dropped={"gopher_short_doc": filt_drop})},
                        {"name": "pii", "stats": _stats(kept, kept, modified={"pii_email": 1})}],
            "docs": kept,
        },
        "documents": {"dedup": _stats(kept, final, dropped={"exact_duplicate": dup}), "docs": final, "bytes": final * 100},
        "tokenize": {"docs": final, "tokens": tokens, "bytes": final * 100},
    }


@pytest.fixture
def inputs():
    parts = [Part("web", "web", 0, 0, ("/d/a.warc.gz",), (1000,)), Part("web", "web", 1, 1, ("/d/b.warc.gz",), (500,)),
             Part("wiki", "wiki", 0, 2, ("/d/w.xml.bz2",), (300,))]
    per_part = {0: _part_markers(10, 1, 2, 1, 400), 1: _part_markers(5, 0, 1, 0, 200), 2: _part_markers(4, 0, 0, 1, 90)}
    cluster = {"stats": {**_stats(21, 19, dropped={"exact_duplicate": 2}), "extra": {"cluster_sizes": {"2": 2}, "clusters": 2}}}
    tokenizer = {"kind": "bpe", "vocab_size": 1000, "eod_id": 0, "eod_token": "<|endoftext|>", "given": None,
                 "train_docs": 18, "train_bytes": 1800, "fingerprint": "x"}
    return parts, per_part, cluster, tokenizer


def test_counts_add_up_per_stage_and_per_source(inputs):
    report = build_report(*inputs, dedup_on=True)
    web = report["sources"]["web"]
    assert [s["stage"] for s in web["stages"]] == ["read", "filter:gopher_quality", "filter:pii", "dedup", "tokenize"]
    assert web["stages"][0]["docs_in"] == 15 and web["stages"][0]["skipped"] == {"truncated_gzip": 1}
    for src in report["sources"].values():
        for st in src["stages"]:
            assert st["docs_in"] == st["docs_out"] + sum(st["dropped"].values()) + sum(st["skipped"].values())
        for a, b in zip(src["stages"], src["stages"][1:]):
            assert b["docs_in"] == a["docs_out"]
    assert web["removed"] == {"exact_duplicate": 1, "gopher_short_doc": 3, "truncated_gzip": 1}
    assert web["documents"] == 10 and web["tokens"] == 600 and web["input_files"] == 2 and web["input_bytes"] == 1500
    assert report["totals"]["tokens"] == 690 and report["totals"]["records_in"] == 19
    assert report["dedup"]["extra"]["cluster_sizes"] == {"2": 2}
    assert "fingerprint" not in report["tokenizer"]


def test_report_files_are_written_and_byte_identical(inputs, tmp_path):
    report = build_report(*inputs, dedup_on=True)
    for d in ("a", "b"):
        write_report(tmp_path / d, report)
    for name in ("report.json", "report.md", "report/funnel.png", "report/removals.png", "report/clusters.png",
                 "report/tokens.png"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert json.loads((tmp_path / "a" / "report.json").read_text()) == json.loads(json.dumps(report))
    md = render_markdown(report)
    assert "## web (web)" in md and "truncated_gzip (skipped): 1" in md and "| 2 | 2 |" in md
    assert "![removals by reason](report/removals.png)" in md


def test_report_without_dedup_says_so(inputs):
    parts, per_part, _, tokenizer = inputs
    report = build_report(parts, per_part, None, tokenizer, dedup_on=False)
    assert "dedup" not in [s["stage"] for s in report["sources"]["web"]["stages"]]
    assert "Deduplication was off" in render_markdown(report)


def _shard(prefix: Path, docs: list[list[int]]) -> None:
    with IndexedDatasetWriter(prefix) as w:
        for d in docs:
            w.add_document(d)


def test_manifest_lists_non_empty_shards_and_skips_empty_sources(inputs, tmp_path):
    parts, per_part, _, tokenizer = inputs
    layout = Layout(tmp_path)
    _shard(layout.tokens_prefix(parts[0]), [[5, 6, 0]])
    _shard(layout.tokens_prefix(parts[1]), [])
    per_part[1]["tokenize"] = {"docs": 0, "tokens": 0, "bytes": 0}
    per_part[2]["tokenize"] = {"docs": 0, "tokens": 0, "bytes": 0}  # wiki: nothing left
    layout.tokenizer_file.parent.mkdir(parents=True)
    layout.tokenizer_file.write_text("{}")
    write_manifest_for(layout, parts, per_part, tokenizer)
    m = read_manifest(tmp_path)
    assert list(m.corpora) == ["web"] and m.corpora["web"].prefixes == [str(layout.tokens_prefix(parts[0]))]
    assert m.eod_id == 0 and m.dtype == "uint16" and m.tokenizer == layout.tokenizer_file
    per_part[0]["tokenize"] = {"docs": 0, "tokens": 0, "bytes": 0}
    with pytest.raises(DataError, match="no source has any document left"):
        write_manifest_for(layout, parts, per_part, tokenizer)
