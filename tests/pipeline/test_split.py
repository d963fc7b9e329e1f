"""Huge files become many parts: a wiki multistream dump cut at its index's stream offsets, JSON Lines cut at
line ends (plain) or members/frames (gzip, bz2, zstd), and the output independent of the cut."""

from __future__ import annotations

import bz2
import gzip
import json
import logging
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import zstandard

from data_pipelines.executor.parts import plan_parts
from data_pipelines.run import Pipeline, run_pipeline
from data_pipelines.sources import make_reader
from data_pipelines.sources.split import split_file
from data_pipelines.stats import StageStats

from .fixtures import build_wiki_dump, write_wiki_index
from .test_run import _compose, _documents


def _read(kind: str, path: str, spans=None) -> tuple[list[tuple], dict]:
    """(id, text, metadata) of every document, and the reader's counts, reading ``spans`` one after another."""
    reader = make_reader("src", {"kind": kind, "paths": [path]})
    stats = StageStats()
    docs = []
    for span in spans or [None]:
        extra = {} if span is None else {"span": span}
        docs += [(d.id, d.text, json.dumps(d.metadata, sort_keys=True)) for d in reader.read(path, stats, **extra)]
    return docs, stats.to_dict()


@pytest.fixture(scope="module")
def dump(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("split-wiki") / "testwiki-pages-articles-multistream.xml.bz2")
    build_wiki_dump(path, copies=3, pages_per_stream=2)
    write_wiki_index(path)
    return path


def test_a_multistream_dump_in_many_parts_reads_as_one(dump, caplog):
    whole, whole_stats = _read("wiki", dump)
    assert len(whole) >= 6 and all(m for _, _, m in whole)
    spans = split_file("wiki", dump, 1)  # a cut at every stream
    assert spans is not None and len(spans) >= 3
    assert spans[0].start == 0 and spans[-1].end == Path(dump).stat().st_size
    assert all(a.end == b.start for a, b in zip(spans, spans[1:]))
    pieces, piece_stats = _read("wiki", dump, spans)
    assert pieces == whole and piece_stats == whole_stats  # same documents, order, ids (wiki name) and counts
    three = split_file("wiki", dump, Path(dump).stat().st_size // 3)
    assert three is not None and 2 <= len(three) <= 4 and _read("wiki", dump, three)[0] == whole
    # without its index the dump stays one part, and says so
    Path(dump[: -len(".xml.bz2")] + "-index.txt.bz2").rename(dump + ".hidden")
    try:
        with caplog.at_level(logging.INFO):
            assert split_file("wiki", dump, 1) is None
        assert "no multistream index" in caplog.text
    finally:
        Path(dump + ".hidden").rename(dump[: -len(".xml.bz2")] + "-index.txt.bz2")


def _jsonl_lines() -> list[bytes]:
    """Records with and without ids (those take their line number), a broken line and a blank one."""
    docs = _documents()
    lines = []
    for i, text in enumerate(docs[:24]):
        rec = {"text": text} if i % 3 else {"id": f"d-{i}", "text": text}
        lines.append(json.dumps(rec).encode() + b"\n")
    lines[5] = b"{not json\n"
    lines[9] = b"\n"
    return lines


def _write(path: Path, lines: list[bytes], how: str, per_member: int = 4) -> str:
    groups = [b"".join(lines[i:i + per_member]) for i in range(0, len(lines), per_member)]
    if how == "plain":
        data = b"".join(groups)
    elif how == "gzip":
        data = b"".join(gzip.compress(g, mtime=0) for g in groups)
    elif how == "bz2":
        data = b"".join(bz2.compress(g) for g in groups)
    else:
        data = b"".join(zstandard.ZstdCompressor().compress(g) for g in groups)
    path.write_bytes(data)
    return str(path)


@pytest.mark.parametrize("how", ["plain", "gzip", "bz2", "zstd"])
def test_jsonl_ranges_read_as_the_whole_file(tmp_path, how):
    path = _write(tmp_path / f"c.jsonl.{how}", _jsonl_lines(), how)
    whole, whole_stats = _read("jsonl", path)
    assert whole_stats["skipped"] == {"invalid_json": 1} and len(whole) == 22
    assert any(d[0].endswith(":24") for d in whole)  # line numbers name records without an id
    spans = split_file("jsonl", path, 1)
    assert spans is not None and len(spans) >= 3 and [s.line for s in spans] == sorted(s.line for s in spans)
    assert _read("jsonl", path, spans) == (whole, whole_stats)
    some = split_file("jsonl", path, Path(path).stat().st_size // 3)
    assert some is not None and len(some) >= 2 and _read("jsonl", path, some) == (whole, whole_stats)


def test_a_single_stream_file_stays_one_part_and_says_so(tmp_path, caplog):
    path = _write(tmp_path / "one.jsonl.gz", _jsonl_lines(), "gzip", per_member=1000)
    with caplog.at_level(logging.INFO):
        assert split_file("jsonl", path, 1) is None
    assert "a single gzip stream" in caplog.text
    parts = plan_parts([("s", "jsonl", [path])], 1, lambda k, p, n: split_file(k, p, n), split_min_bytes=0)
    assert len(parts) == 1 and parts[0].span is None


def _pipeline_outputs(root: Path, pipe: Pipeline) -> dict[str, object]:
    """Every document row and token of every source in part order, and the tokenizer file."""
    docs, tokens = {}, {}
    for p in pipe.parts:
        docs.setdefault(p.source, []).extend(pq.read_table(pipe.layout.documents(p)).to_pylist())
        tokens.setdefault(p.source, b"")
        tokens[p.source] += Path(str(pipe.layout.tokens_prefix(p)) + ".bin").read_bytes()
    return {"docs": docs, "tokens": tokens, "tokenizer": pipe.layout.tokenizer_file.read_bytes()}


def test_the_output_does_not_depend_on_how_files_were_split(dump, tmp_path):
    path = _write(tmp_path / "c.jsonl.zst", _jsonl_lines(), "zstd")
    outs, plans = [], []
    for size in ("0.0025", "1000"):  # 2.5 KiB: three or four parts of each file; 1000 MB: one each
        over = [f"output_dir={tmp_path / size}", "sources=none", f"+sources.wiki={{kind: wiki, paths: [{dump}]}}",
                f"+sources.lines={{kind: jsonl, paths: [{path}]}}", "tokenizer.vocab_size=300",
                f"executor.part_size_mb={size}", "executor.split_min_mb=0", "executor.progress=false",
                "executor.stages=[read,signatures,cluster,documents,tokenizer,tokenize]"]  # all but the report's plots
        cfg = _compose(over)
        pipe = Pipeline(cfg)
        run_pipeline(cfg, pipe)
        outs.append(_pipeline_outputs(tmp_path / size, pipe))
        plans.append(pipe.parts)
    assert all(sum(p.source == s for p in plans[0]) >= 3 for s in ("wiki", "lines")), plans[0]
    assert all(p.span is not None for p in plans[0]) and len(plans[1]) == 2 and plans[1][0].span is None
    assert outs[0] == outs[1]
    assert sum(len(d) for d in outs[0]["docs"].values()) >= 15 and all(outs[0]["tokens"].values())


def test_the_report_counts_a_split_file_once():
    from data_pipelines.executor.parts import Part, Span
    from data_pipelines.report import build_report

    from .test_report import _part_markers, _stats

    parts = [Part("wiki", "wiki", i, i, ("/d/w.xml.bz2",), (100,), Span(100 * i, 100 * i + 100)) for i in range(3)]
    cluster = {"stats": {**_stats(12, 12), "extra": {"cluster_sizes": {}, "clusters": 0}}}
    tokenizer = {"kind": "bpe", "vocab_size": 1000, "eod_id": 0, "eod_token": "<|endoftext|>", "given": None,
                 "train_docs": 12, "train_bytes": 1200, "fingerprint": "x"}
    report = build_report(parts, {i: _part_markers(4, 0, 0, 0, 90) for i in range(3)}, cluster, tokenizer,
                          dedup_on=True)
    wiki = report["sources"]["wiki"]
    assert (wiki["parts"], wiki["input_files"], wiki["input_bytes"]) == (3, 1, 300)


def test_a_corrupt_zst_file_stays_one_part_and_its_good_records_are_kept(tmp_path):
    """A zstd file whose second frame is cut short: the split scan leaves it whole (zstandard's errors are stream
    errors), and the reader keeps the records of the intact frame and counts the damage instead of stopping."""
    good = zstandard.ZstdCompressor().compress(b"".join(_jsonl_lines()[:20]))
    second = zstandard.ZstdCompressor().compress(b"".join(_jsonl_lines()[20:40]))
    path, alone = tmp_path / "corrupt.jsonl.zst", tmp_path / "intact.jsonl.zst"
    path.write_bytes(good + second[: len(second) // 2])
    alone.write_bytes(good)
    assert split_file("jsonl", str(path), 64) is None
    docs, counts = _read("jsonl", str(path))
    ref, ref_counts = _read("jsonl", str(alone))
    assert [d[1] for d in docs[:len(ref)]] == [d[1] for d in ref] and len(ref) >= 15  # ids name the file
    assert sum(counts["skipped"].values()) > sum(ref_counts["skipped"].values()), (counts, ref_counts)
