"""One test per source kind, on corpora built from real text (see fixtures.py)."""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_pipelines.document import Document
from data_pipelines.sources import make_reader
from data_pipelines.sources.gutenberg import clean_book
from data_pipelines.sources.html import detect_charset
from data_pipelines.sources.licenses import detect_spdx
from data_pipelines.stats import StageStats

from .fixtures import (
    MIT_TOMLI,
    PYDOC_MODULES,
    WebRecord,
    build_book,
    build_code_repo,
    build_stack_jsonl,
    build_warc,
    build_wet,
    heapq_essay_html,
)


def read_all(kind: str, path: str, **options) -> tuple[list[Document], StageStats]:
    reader = make_reader(kind, {"kind": kind, "paths": [path], "options": options})
    stats = StageStats()
    docs = list(reader.read(path, stats))
    assert_balanced(stats)
    return docs, stats


def assert_balanced(stats: StageStats) -> None:
    """Every input unit ends as a document, a drop or a skip (the report's arithmetic)."""
    assert stats.docs_in == stats.docs_out + sum(stats.dropped.values()) + sum(stats.skipped.values())


# ------------------------------------------------------------------------------------------------ web


def test_web_warc_pydoc_pages(tmp_path) -> None:
    essay = heapq_essay_html(None).encode("cp1252")
    extra = [
        WebRecord("https://essays.example.org/heapq.html", essay, "text/html; charset=windows-1252"),
        WebRecord("https://docs.example.org/modules.json", b'{"modules": ["json"]}', "application/json"),
        WebRecord("https://docs.example.org/gone.html", b"<html><body>gone</body></html>", status="404 Not Found"),
    ]
    path = build_warc(str(tmp_path / "crawl.warc.gz"), extra=extra)
    docs, stats = read_all("web", path)
    assert len(docs) == len(PYDOC_MODULES) + 1
    by_url = {d.metadata["url"]: d for d in docs}
    json_page = by_url["https://docs.example.org/library/json.html"]
    assert "JSON (JavaScript Object Notation)" in json_page.text
    assert "<" + "a href" not in json_page.text
    assert json_page.metadata["date"] == "2024-03-01T12:00:00Z"
    assert json_page.metadata["file"] == os.path.abspath(path)
    assert json_page.id.startswith("web:00000000-0000-4000-8000-")
    assert "François Pinard" in by_url["https://essays.example.org/heapq.html"].text  # windows-1252 decoded
    assert by_url["https://essays.example.org/heapq.html"].metadata["charset"] == "cp1252"
    assert stats.skipped == {"non_html": 1, "http_status": 1}
    assert len({d.id for d in docs}) == len(docs)
    again, _ = read_all("web", path)
    assert [(d.id, d.text) for d in again] == [(d.id, d.text) for d in docs]  # deterministic


def test_web_trafilatura_extractor(tmp_path) -> None:
    path = build_warc(str(tmp_path / "two.warc.gz"), modules=("json", "bisect"))
    docs, _ = read_all("web", path, extractor="trafilatura")
    assert len(docs) == 2
    assert any("JSON (JavaScript Object Notation)" in d.text for d in docs)


def test_web_charset_detection_paths() -> None:
    essay = heapq_essay_html(None)
    assert detect_charset(essay.encode("cp1252"), "text/html; charset=windows-1252") == "cp1252"
    in_meta = heapq_essay_html("iso-8859-1").encode("latin-1")
    assert detect_charset(in_meta, "text/html") == "iso8859-1"
    assert detect_charset(essay.encode("utf-8"), None) == "utf-8"
    undeclared = essay.encode("cp1252")  # no header, no meta, not UTF-8: charset-normalizer guesses
    assert "François" in undeclared.decode(detect_charset(undeclared, None))
    assert detect_charset(b"<html>x</html>", "text/html; charset=no-such-codec") == "utf-8"


def test_wet_conversion_records(tmp_path) -> None:
    docs, stats = read_all("web", build_wet(str(tmp_path / "crawl.warc.wet.gz")))
    assert [d.metadata["url"].rsplit("/", 1)[1] for d in docs] == ["difflib.html", "statistics.html", "csv.html"]
    assert docs[0].text.startswith("Module difflib")
    assert stats.skipped == {}


# ----------------------------------------------------------------------------------------------- wiki


def test_wiki_dump_plain_text(wiki_dump) -> None:
    docs, stats = read_all("wiki", wiki_dump)
    assert [d.metadata["title"] for d in docs[:2]] == ["Heap queue (Python)", "Json (Python module)"]
    assert len(docs) == 6  # two articles x three copies
    assert stats.dropped == {"wiki_namespace": 6, "wiki_redirect": 3, "wiki_disambiguation": 3}
    heap = docs[0].text
    for kept in ("Heap queue (Python)\n", "\nExplanation\n", "The heap queue module of Python implements the heap",
                 "Tournaments and sorting.", "Merging sorted runs on tape.", "In the tree above"):
        assert kept in heap, kept
    for removed in ("{{", "}}", "<ref", "cite web", "Infobox", "Category:", "Heaps (data structures)",
                    "de:Heapq", "Heapq\n", "thumb", "Max-Heap", "O(log n)", "wikitable", "Pinard, explanation",
                    "[[", "]]", "'''"):
        assert removed not in heap, removed
    assert "JSON vector logo" not in docs[1].text and "editors: keep" not in docs[1].text
    assert docs[0].id == "wiki:samplewiki/101" and docs[0].metadata["page_id"] == "101"


# ---------------------------------------------------------------------------------------------- books


@pytest.mark.parametrize("style,book_id,title", [("modern", "90001", "Schedules, Statistics and Chance"),
                                                  ("old", "90002", "Selected Module Essays")])
def test_books_gutenberg(tmp_path, style, book_id, title) -> None:
    path = build_book(str(tmp_path / f"book-{style}.txt"), style)
    (doc,), stats = read_all("books", path)
    assert doc.id == f"books:{book_id}" and doc.metadata["book_id"] == book_id and doc.metadata["title"] == title
    text = doc.text
    for licence in ("Project Gutenberg", "START OF", "END OF", "Produced by", "CONTENTS", "www.gutenberg"):
        assert licence not in text, licence
    assert text.startswith(title.upper())
    first_chapter = "1. Event Scheduling" if style == "modern" else "1. On Heaps, by François Pinard"
    assert f"\n\n{first_chapter}\n\n" in text  # chapter heading kept once (the TOC entry is gone)
    assert text.count(first_chapter) == 1
    if style == "old":  # ISO-8859-1 declared in the header; hard-wrapped prose rejoined into one line
        assert "For the sake of comparison, non-existing elements are considered to be infinite." in text
        lines = text.split("\n")
        assert any(line.strip().startswith("15 16   17 18") for line in lines)  # the ASCII tree keeps its lines
    else:
        assert "A generally useful event scheduler class." in text


def test_gutenberg_front_matter_rules() -> None:
    prose = ("It was the best of times, it was the worst of times, it was the age\n"
             "of wisdom, it was the age of foolishness, it was the epoch of belief,\n"
             "it was the epoch of incredulity, it was the season of Light.")
    verse = ("The Owl and the Pussy-cat went to sea\n   In a beautiful pea-green boat,\n"
             "They took some honey, and plenty of money,\n   Wrapped up in a five-pound note.")
    book = f"*** START OF THE PROJECT GUTENBERG EBOOK X ***\n\n{prose}\n\n{verse}\n\n{prose}\n\n*** END OF THE PROJECT GUTENBERG EBOOK X ***\n"
    text = clean_book(book).text
    assert "   In a beautiful pea-green boat," in text.split("\n")  # verse keeps its line breaks
    assert " ".join(prose.split("\n")) in text.split("\n")  # prose is rejoined
    # a contents list whose end cannot be found (no repeat, no prose) is left in rather than cutting the book
    no_end = ("*** START OF THE PROJECT GUTENBERG EBOOK X ***\n\nCONTENTS\n\nOne\nTwo\n\nA short line\n\n"
              "*** END OF THE PROJECT GUTENBERG EBOOK X ***\n")
    assert clean_book(no_end).text == "CONTENTS\n\nOne\nTwo\n\nA short line"
    wrapped = ("*** START OF THIS PROJECT GUTENBERG EBOOK X ***\n\n" + "\n".join(["word " * 13 + "non-"] + ["existing " * 8] * 3)
               + "\n\nEnd of the Project Gutenberg EBook of X\n")
    assert clean_book(wrapped).text.count("\n") == 0 and "non-existing" in clean_book(wrapped).text


def test_books_plain_text_kept_as_is(tmp_path) -> None:
    text = "A Plain Book\n\nIts lines are\nwrapped by hand\nand stay so.\n"
    path = tmp_path / "plain_book.txt"
    path.write_text(text)
    (doc,), _ = read_all("books", str(path))
    assert doc.text == text.strip() and doc.id == "books:plain_book" and doc.metadata["gutenberg"] is False


# ----------------------------------------------------------------------------------------------- code


def test_code_stdlib_checkout(tmp_path) -> None:
    repo = build_code_repo(str(tmp_path))
    docs, stats = read_all("code", repo)
    paths = [d.metadata["path"] for d in docs]
    assert {"json/__init__.py", "json/decoder.py", "json/encoder.py", "json/scanner.py", "json/tool.py",
            "README.md", "latin1_comment.py"} == set(paths)
    init = next(d for d in docs if d.metadata["path"] == "json/__init__.py")
    assert init.metadata["language"] == "Python" and init.metadata["license"] == "PSF-2.0"
    assert init.metadata["repo"] == "json" and init.id == "code:json/json/__init__.py"
    assert "def dumps(" in init.text
    assert next(d for d in docs if d.metadata["path"] == "README.md").metadata["language"] == "Markdown"
    assert stats.skipped == {"excluded_dir": 3, "binary": 2, "minified": 2}  # .git node_modules __pycache__
    assert stats.dropped == {"empty": 1}
    assert stats.modified == {"invalid_utf8": 1}
    again, _ = read_all("code", repo)
    assert [d.id for d in again] == [d.id for d in docs]


def test_code_license_detection(tmp_path) -> None:
    repo = build_code_repo(str(tmp_path), package="tomllib", license_text=MIT_TOMLI)
    docs, _ = read_all("code", repo, languages=["Python"])
    assert {d.metadata["license"] for d in docs} == {"MIT"}
    assert all(d.metadata["language"] == "Python" for d in docs)
    assert detect_spdx("                                 Apache License\n  Version 2.0, January 2004\n") == "Apache-2.0"
    assert detect_spdx("GNU GENERAL PUBLIC LICENSE\nVersion 2, June 1991\n... GNU Library General Public "
                       "License instead ...") == "GPL-2.0"
    assert detect_spdx("All rights reserved.") == "NOASSERTION"


def test_code_single_file_in_stdlib() -> None:
    import sysconfig

    stdlib = sysconfig.get_paths()["stdlib"]
    (doc,), _ = read_all("code", os.path.join(stdlib, "bisect.py"))
    assert doc.metadata["path"] == "bisect.py" and doc.metadata["language"] == "Python"
    expected = "PSF-2.0" if os.path.exists(os.path.join(stdlib, "LICENSE.txt")) else "NONE"
    assert doc.metadata["license"] == expected and doc.metadata["repo"] == os.path.basename(stdlib)


def test_code_stack_jsonl(tmp_path) -> None:
    path = build_stack_jsonl(str(tmp_path / "stack.jsonl.gz"))
    docs, _ = read_all("code", path)
    assert [d.metadata["path"] for d in docs] == ["Lib/textwrap.py", "Lib/bisect.py"]
    assert docs[0].id == "0" * 40 and docs[0].metadata["license"] == "PSF-2.0"
    assert docs[0].metadata["language"] == "Python" and docs[0].metadata["repo"] == "python/cpython"
    assert "class TextWrapper" in docs[0].text


# ------------------------------------------------------------------------------------- jsonl, parquet


def test_jsonl_keeps_record_ids(tmp_path) -> None:
    path = tmp_path / "docs.jsonl"
    rows = [{"id": "doc-a", "text": "First document.", "lang": "en"}, {"id": 7, "text": "Second."}, {"text": "No id."}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    docs, _ = read_all("jsonl", str(path), metadata_fields=["lang"])
    assert [d.id for d in docs] == ["doc-a", "7", "jsonl:docs.jsonl:3"]
    assert docs[0].metadata == {"file": str(path), "lang": "en"}


def test_jsonl_custom_text_field(tmp_path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"id": "x", "content": "Body."}) + "\n")
    (doc,), _ = read_all("jsonl", str(path), text_field="content")
    assert doc.text == "Body."


def test_parquet_batches(tmp_path) -> None:
    path = str(tmp_path / "docs.parquet")
    table = pa.table({"id": [f"p{i}" for i in range(50)], "text": [f"Row number {i}." for i in range(50)],
                      "url": [f"https://x/{i}" for i in range(50)]})
    pq.write_table(table, path, row_group_size=16)
    docs, stats = read_all("parquet", path, batch_size=8, metadata_fields=["url"])
    assert [d.id for d in docs] == [f"p{i}" for i in range(50)]
    assert docs[3].metadata["url"] == "https://x/3" and stats.docs_out == 50
