"""Every kind of broken input: skipped and counted under a reason, the good records around it kept."""

from __future__ import annotations

import bz2
import gzip
import json
import os
import tracemalloc

import pytest

from data_pipelines.sources import make_reader
from data_pipelines.stats import StageStats
from pretrain.core.errors import DataError

from .fixtures import (
    WebRecord,
    build_book,
    build_warc,
    build_wiki_dump,
    cut_file,
    insert_bytes,
    write_huge_line_file,
    write_warc,
)
from .test_sources import read_all

HUNDRED_MB = 100 * (1 << 20)


# ------------------------------------------------------------------------------------------------ web


def test_warc_truncated_gzip_keeps_records_before(pydoc_warc, tmp_path) -> None:
    full, _ = read_all("web", pydoc_warc)
    cut = cut_file(pydoc_warc, 0.8, out=str(tmp_path / "cut.warc.gz"))
    docs, stats = read_all("web", cut)
    assert 1 <= len(docs) < len(full)
    assert [d.text for d in docs] == [d.text for d in full[: len(docs)]]  # intact records, unchanged
    assert sum(stats.skipped.values()) == 1
    assert set(stats.skipped) <= {"warc_truncated_record", "warc_corrupt", "truncated_gzip"}


def test_warc_record_cut_in_half_between_good_records(tmp_path) -> None:
    """An uncompressed WARC where one record lost its second half and the next records follow it."""
    first = build_warc(str(tmp_path / "a.warc"), modules=("json", "textwrap"), gzip_records=False)
    victim = build_warc(str(tmp_path / "b.warc"), modules=("heapq",), gzip_records=False)
    after = write_warc(str(tmp_path / "c.warc"), [WebRecord("https://docs.example.org/x.html",
                                                            b"<html><body><p>After the cut.</p></body></html>")],
                       gzip=False, first_id=500)
    data = open(first, "rb").read()
    victim_bytes = open(victim, "rb").read()
    data += victim_bytes[: len(victim_bytes) // 2] + open(after, "rb").read()
    path = tmp_path / "spliced.warc"
    path.write_bytes(data)
    docs, stats = read_all("web", str(path))
    assert [d.metadata["url"].rsplit("/", 1)[1] for d in docs[:2]] == ["json.html", "textwrap.html"]
    assert "heapq.html" not in {d.metadata["url"].rsplit("/", 1)[1] for d in docs}
    assert sum(stats.skipped.values()) >= 1
    assert set(stats.skipped) <= {"warc_digest_mismatch", "warc_corrupt", "warc_truncated_record"}


def test_warc_non_html_and_empty_pages(tmp_path) -> None:
    path = build_warc(str(tmp_path / "mixed.warc.gz"), modules=("bisect",), extra=[
        WebRecord("https://x.example.org/logo.png", b"\x89PNG\r\n\x1a\n" + bytes(64), "image/png"),
        WebRecord("https://x.example.org/a.pdf", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n", "application/pdf"),
        WebRecord("https://x.example.org/blank.html", b"<html><head><title></title></head><body></body></html>"),
        WebRecord("https://x.example.org/sniffed", b"<!DOCTYPE html><html><body><p>Sniffed as HTML.</p></body></html>",
                  "application/octet-stream"),
    ])
    docs, stats = read_all("web", path)
    assert [d.metadata["url"].rsplit("/", 1)[1] for d in docs] == ["bisect.html", "sniffed"]
    assert stats.skipped == {"non_html": 2}
    assert stats.dropped == {"empty": 1}


def test_warc_record_too_large(tmp_path) -> None:
    path = build_warc(str(tmp_path / "big.warc.gz"), modules=("colorsys", "json"))  # json's page is > 40 kB
    docs, stats = read_all("web", path, max_record_bytes=40_000)
    assert [d.metadata["url"].rsplit("/", 1)[1] for d in docs] == ["colorsys.html"]
    assert stats.skipped == {"record_too_large": 1}


def test_wet_invalid_utf8(tmp_path) -> None:
    records = [WebRecord("https://x/1", "Café au lait".encode("latin-1"), rec_type="conversion"),
               WebRecord("https://x/2", "Plain text".encode(), rec_type="conversion")]
    path = write_warc(str(tmp_path / "bad.wet.gz"), records)
    docs, stats = read_all("web", path)
    assert [d.text for d in docs] == ["Caf\ufffd au lait", "Plain text"] and stats.modified == {"invalid_utf8": 1}
    docs, stats = read_all("web", path, invalid_utf8="skip")
    assert [d.text for d in docs] == ["Plain text"] and stats.skipped == {"invalid_utf8": 1}


# ----------------------------------------------------------------------------------------------- wiki


def test_wiki_truncated_bz2_keeps_pages_before(wiki_dump, tmp_path) -> None:
    full, _ = read_all("wiki", wiki_dump)
    cut = cut_file(wiki_dump, 0.75, out=str(tmp_path / "cut.xml.bz2"))
    docs, stats = read_all("wiki", cut)
    assert 1 <= len(docs) < len(full)
    assert [d.id for d in docs] == [d.id for d in full[: len(docs)]]
    assert stats.skipped == {"truncated_bz2": 1}


def test_wiki_malformed_xml_keeps_pages_before_and_after(tmp_path) -> None:
    """The reader resynchronises at the next <page> (issue 11): only the broken page is lost, and counted."""
    intact, _ = read_all("wiki", build_wiki_dump(str(tmp_path / "intact.xml"), copies=2))
    path = build_wiki_dump(str(tmp_path / "broken.xml"), copies=2)
    insert_bytes(path, b"  <page>", b"  <page><title>Broken & unescaped</tite>\n", occurrence=7)
    docs, stats = read_all("wiki", path)
    titles = [d.metadata["title"] for d in docs]
    assert titles[:2] == ["Heap queue (Python)", "Json (Python module)"]
    assert titles == [d.metadata["title"] for d in intact] and len(titles) == 4
    assert stats.skipped == {"malformed_xml": 1}


def test_wiki_empty_page_dropped(tmp_path) -> None:
    from .fixtures import WikiPage

    pages = [WikiPage("Only a template", "{{Infobox person|name=x}}", page_id=1),
             WikiPage("Real", "'''Real''' text of an article.", page_id=2)]
    path = build_wiki_dump(str(tmp_path / "e.xml"), pages=pages)
    docs, stats = read_all("wiki", path)
    assert [d.metadata["title"] for d in docs] == ["Real"] and stats.dropped == {"empty": 1}


# ----------------------------------------------------------------------------------- books, jsonl, code


def test_books_truncated_gzip(tmp_path) -> None:
    book = build_book(str(tmp_path / "b.txt"))
    gz = tmp_path / "b.txt.gz"
    gz.write_bytes(gzip.compress(open(book, "rb").read(), mtime=0))
    cut_file(str(gz), 0.5)
    docs, stats = read_all("books", str(gz))
    assert docs == [] and stats.skipped == {"truncated_gzip": 1}


def test_jsonl_bad_lines_counted_good_kept(tmp_path) -> None:
    path = tmp_path / "mixed.jsonl"
    lines = [
        json.dumps({"id": "a", "text": "Good one."}).encode(),
        b'{"id": "b", "text": "unterminated',
        json.dumps({"id": "c", "text": "Caf"}).encode()[:-2] + "\u00e9\"}".encode("latin-1"),  # invalid UTF-8
        json.dumps({"id": "d", "text": "   "}).encode(),  # empty document
        json.dumps({"id": "e", "body": "no text field"}).encode(),
        b"[1, 2, 3]",
        b"",
        json.dumps({"id": "f", "text": "Good two."}).encode(),
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    docs, stats = read_all("jsonl", str(path))
    assert [d.id for d in docs] == ["a", "c", "f"] and docs[1].text == "Caf\ufffd"
    assert stats.skipped == {"invalid_json": 1, "missing_text_field": 1, "not_an_object": 1}
    assert stats.dropped == {"empty": 1} and stats.modified == {"invalid_utf8": 1}
    docs, stats = read_all("jsonl", str(path), invalid_utf8="skip")
    assert [d.id for d in docs] == ["a", "f"] and stats.skipped["invalid_utf8"] == 1


def test_jsonl_truncated_gzip_and_bz2(tmp_path) -> None:
    rows = b"".join(json.dumps({"id": str(i), "text": f"Document number {i} " * 20}).encode() + b"\n"
                    for i in range(2000))
    for name, compress in (("d.jsonl.gz", lambda b: gzip.compress(b, mtime=0)), ("d.jsonl.bz2", bz2.compress)):
        path = tmp_path / name
        path.write_bytes(compress(rows))
        if name.endswith(".bz2"):  # bz2 decodes in 900 kB blocks: write two streams, cut the second
            path.write_bytes(bz2.compress(rows[: len(rows) // 2]) + bz2.compress(rows[len(rows) // 2:]))
        cut_file(str(path), 0.9)
        docs, stats = read_all("jsonl", str(path))
        assert 0 < len(docs) < 2000 and [d.id for d in docs] == [str(i) for i in range(len(docs))], name
        assert stats.skipped == {f"truncated_{'gzip' if name.endswith('gz') else 'bz2'}": 1}, name


def test_jsonl_100mb_single_line_bounded_memory(tmp_path) -> None:
    path = write_huge_line_file(
        str(tmp_path / "huge.jsonl"), HUNDRED_MB,
        before=[json.dumps({"id": "before", "text": "Kept before."}).encode()],
        after=[json.dumps({"id": "after", "text": "Kept after."}).encode()],
        prefix=b'{"id": "huge", "text": "', suffix=b'"}',
    )
    assert os.path.getsize(path) > HUNDRED_MB
    tracemalloc.start()
    try:
        docs, stats = read_all("jsonl", path, max_record_bytes=1 << 20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [d.id for d in docs] == ["before", "after"] and stats.skipped == {"record_too_large": 1}
    assert peak < 16 * (1 << 20), f"peak {peak / 2**20:.1f} MiB"


def test_books_and_code_100mb_file(tmp_path) -> None:
    big_book = write_huge_line_file(str(tmp_path / "huge_book.txt"), HUNDRED_MB, [b"Title"], [])
    docs, stats = read_all("books", big_book, max_record_bytes=1 << 20)
    assert docs == [] and stats.skipped == {"record_too_large": 1}
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "ok.py").write_text("print('kept')\n")
    write_huge_line_file(str(repo / "huge.py"), HUNDRED_MB, [b"x = 1"], [])
    docs, stats = read_all("code", str(repo))
    assert [d.metadata["path"] for d in docs] == ["ok.py"] and stats.skipped == {"record_too_large": 1}


def test_parquet_corrupt_file_and_missing_column(tmp_path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 this is not a parquet file")
    docs, stats = read_all("parquet", str(bad))
    assert docs == [] and stats.skipped == {"corrupt_parquet": 1}
    other = str(tmp_path / "other.parquet")
    pq.write_table(pa.table({"body": ["x"]}), other)
    reader = make_reader("p", {"kind": "parquet", "paths": [other]})
    with pytest.raises(DataError, match=r"other\.parquet has no column 'text'.*\['body'\]"):
        list(reader.read(other, StageStats()))


def test_wiki_page_too_large(wiki_dump) -> None:
    docs, stats = read_all("wiki", wiki_dump, max_record_bytes=2000)  # the heap article is larger
    assert {d.metadata["title"].split(" (")[0] for d in docs} == {"Json"}
    assert stats.skipped == {"record_too_large": 3}
