"""The source-kind example of docs/extending.md (``csv_source.py``), registered for the test only: a CSV file
written here goes through the real pipeline (reader, documents, tokenizer, token shards, report), every row
counted as a document or under a reason, and a bad option or a missing column is refused naming the source."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from hydra import compose, initialize_config_dir

from pretrain.core.errors import ConfigError, DataError
from pretrain.core.manifest import read_manifest
from tests.extending.csv_source import CsvReader

CONF = Path(__file__).resolve().parents[2] / "conf"


@pytest.fixture
def registered(monkeypatch):
    """The kind registered as its entry in READER_CLASSES would register it (the product's registry unchanged):
    the reader by kind, and the kinds the ``filters`` lookup accepts (derived from the registry at import)."""
    import data_pipelines.filters.config
    from data_pipelines.sources.registry import READERS, SOURCE_KINDS

    monkeypatch.setitem(READERS, CsvReader.kind, CsvReader)
    monkeypatch.setattr(data_pipelines.filters.config, "SOURCE_KINDS", (*SOURCE_KINDS, CsvReader.kind))


def _csv(folder: Path) -> Path:
    """Real prose in rows (docstrings of the standard library), a quoted multi-line cell, and the odd rows."""
    import bisect
    import heapq
    import textwrap

    folder.mkdir()
    (folder / "notes.txt").write_text("not a CSV file: the kind's extensions leave it out\n")
    lines = ["id,title,body"]
    for mod in (heapq, bisect, textwrap):
        body = " ".join(mod.__doc__.split()).replace('"', '""')
        lines.append(f'{mod.__name__},"The {mod.__name__} module","{body}"')
    lines.append('quote,A quote,"Beautiful is better than ugly,\nexplicit is better than implicit."')
    lines.append("blank,Nothing,   ")  # dropped: empty
    lines.append("short")  # skipped: the row has no body cell
    path = folder / "docs.csv"
    path.write_bytes(("\n".join(lines) + "\n").encode() + b"latin,Caf\xe9,Un caf\xe9 noir\n")  # invalid UTF-8
    return path


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("pipeline", overrides=list(overrides))


def test_a_csv_source_runs_through_the_whole_pipeline(registered, tmp_path):
    from data_pipelines.run import run_pipeline

    _csv(tmp_path / "csv")
    out = tmp_path / "out"
    cfg = _compose(f"output_dir={out}", "sources=none", "filters=none", "dedup=none", "tokenizer.vocab_size=300",
                   "executor.progress=false",
                   f"+sources.stdlib={{kind: csv, paths: [{tmp_path / 'csv'}], options: {{text_column: body, "
                   f"metadata_columns: [title]}}}}")
    assert run_pipeline(cfg).complete
    read = json.loads((out / "work" / "markers" / "read" / "stdlib" / "part-00000.done.json").read_text())["read"]
    assert read["docs_out"] == 5 and read["dropped"] == {"empty": 1} and read["skipped"] == {"missing_text_field": 1}
    assert read["modified"] == {"invalid_utf8": 1}
    assert read["docs_in"] == read["docs_out"] + sum(read["dropped"].values()) + sum(read["skipped"].values())
    docs = pq.read_table(out / "documents" / "stdlib" / "part-00000.parquet").to_pylist()
    assert [d["id"] for d in docs] == ["heapq", "bisect", "textwrap", "quote", "latin"]
    assert docs[3]["text"] == "Beautiful is better than ugly,\nexplicit is better than implicit."
    assert docs[4]["text"] == "Un caf\ufffd noir" and docs[4]["title"] == "Caf\ufffd"  # title: a provenance column
    assert docs[0]["file"].endswith("docs.csv") and docs[0]["title"] == "The heapq module"
    manifest = read_manifest(out)  # what the trainer reads: token shards of the new kind's documents
    assert list(manifest.corpora) == ["stdlib"] and manifest.corpora["stdlib"].tokens > 0
    report = json.loads((out / "report.json").read_text())
    assert report["sources"]["stdlib"]["kind"] == "csv" and report["sources"]["stdlib"]["documents"] == 5


def test_a_bad_option_or_a_missing_column_is_refused_naming_the_source(registered, tmp_path):
    from data_pipelines.run import Pipeline, run_pipeline

    path = _csv(tmp_path / "csv")
    base = [f"output_dir={tmp_path / 'out'}", "sources=none", "filters=none", "dedup=none", "executor.progress=false",
            "executor.stages=[read]"]
    with pytest.raises(ConfigError, match=r"source 'stdlib' \(kind 'csv'\): unknown option\(s\) \['text_col'\]"):
        Pipeline(_compose(*base, f"+sources.stdlib={{kind: csv, paths: [{path}], options: {{text_col: body}}}}"))
    with pytest.raises(DataError, match=r"source 'stdlib': .*docs.csv has no column 'text' \(options.text_column\); "
                                        r"its columns are \['id', 'title', 'body'\]"):
        run_pipeline(_compose(*base, f"+sources.stdlib={{kind: csv, paths: [{path}]}}"))


def test_unregistered_it_is_an_unknown_kind(tmp_path):
    from data_pipelines.run import Pipeline

    path = _csv(tmp_path / "csv")
    with pytest.raises(ConfigError, match="source 'stdlib': unknown kind 'csv'; expected one of"):
        Pipeline(_compose(f"output_dir={tmp_path / 'out'}", "sources=none",
                          f"+sources.stdlib={{kind: csv, paths: [{path}]}}"))
