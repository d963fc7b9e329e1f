"""Corpus fixtures built from real text on this machine, for every pipeline test (import them with
``from .fixtures import ...``).

* web: ``pydoc`` HTML pages of standard-library modules, written to a WARC with ``warcio``;
* wiki: a MediaWiki export with the constructs of real Wikipedia wikitext (multistream bz2 like enwiki);
* books: Project Gutenberg layouts with their real licence markers around standard-library essays;
* code: checkouts copied from the Python standard library, with the clutter real repositories carry
  (``.git``, ``node_modules``, ``__pycache__``, binaries, minified files, an invalid UTF-8 file).

Plus helpers that damage files the way real dumps get damaged (truncation, a record cut in half, malformed
XML, a 100 MB line written as a sparse file so it costs no disk and little time).
"""

from __future__ import annotations

import gzip
import json
import os
import shutil

from data_pipelines.samples.make_samples import (
    MIT_TOMLI,
    WebRecord,
    WikiPage,
    copy_stdlib_package,
    gutenberg_book,
    heapq_essay_html,
    psf_license_text,
    pydoc_page,
    sample_books,
    sample_web_records,
    sample_wet_records,
    sample_wiki_pages,
    write_warc,
    write_wiki_dump,
)

PYDOC_MODULES = ("json", "textwrap", "heapq", "bisect", "shlex", "sched")

__all__ = [
    "MIT_TOMLI", "PYDOC_MODULES", "WebRecord", "WikiPage", "build_book", "build_code_repo", "build_stack_jsonl",
    "build_warc", "build_wet", "build_wiki_dump", "cut_file", "write_wiki_index", "gutenberg_book", "heapq_essay_html",
    "insert_bytes", "pydoc_page", "sample_books", "sample_web_records", "sample_wiki_pages",
    "write_huge_line_file", "write_warc", "write_wiki_dump",
]


def build_warc(path: str, modules: tuple[str, ...] = PYDOC_MODULES, gzip_records: bool = True,
               extra: list[WebRecord] | None = None) -> str:
    """A WARC of pydoc pages (one ``response`` per module, after a ``request``), plus ``extra`` records."""
    records = [WebRecord("", b"software: tests\r\n", rec_type="warcinfo")]
    for name in modules:
        url = f"https://docs.example.org/library/{name}.html"
        records.append(WebRecord(url, b"", rec_type="request"))
        records.append(WebRecord(url, pydoc_page(name)))
    records.extend(extra or [])
    return write_warc(path, records, gzip=gzip_records)


def build_wet(path: str) -> str:
    """A WET file: ``conversion`` records holding module docstrings as plain text."""
    return write_warc(path, sample_wet_records(), first_id=1001)


def build_wiki_dump(path: str, pages: list[WikiPage] | None = None, copies: int = 1, pages_per_stream: int = 100) -> str:
    """The sample wiki pages (articles, redirect, disambiguation, talk and template pages), ``copies``
    times with distinct ids and titles."""
    base = pages or sample_wiki_pages()
    out: list[WikiPage] = []
    for c in range(copies):
        for p in base:
            title = p.title if c == 0 else f"{p.title} ({c})"
            out.append(WikiPage(title, p.text, p.ns, p.page_id + 1000 * c, p.redirect, p.timestamp))
    return write_wiki_dump(path, out, pages_per_stream=pages_per_stream)


def write_wiki_index(dump: str) -> str:
    """The ``-index.txt.bz2`` of a multistream dump, as Wikimedia writes it: ``offset:page_id:title`` for every
    page, ``offset`` being the byte where the bz2 stream holding the page starts."""
    import bz2
    import re

    lines: list[str] = []
    with open(dump, "rb") as f:
        data = f.read()
    pos = 0
    while pos < len(data):
        d = bz2.BZ2Decompressor()
        xml = d.decompress(data[pos:]).decode("utf-8")
        for m in re.finditer(r"<page>\s*<title>([^<]*)</title>.*?<id>(\d+)</id>", xml, re.S):
            lines.append(f"{pos}:{m.group(2)}:{m.group(1)}")
        pos = len(data) - len(d.unused_data)
    index = dump[: -len(".xml.bz2")] + "-index.txt.bz2"
    with open(index, "wb") as f:
        f.write(bz2.compress(("\n".join(lines) + "\n").encode("utf-8")))
    return index


def build_book(path: str, style: str = "modern") -> str:
    """One of the sample books (``modern``: pg90001, UTF-8; ``old``: pg90002, ISO-8859-1)."""
    books = sample_books()
    data = books["pg90001.txt" if style == "modern" else "pg90002.txt"]
    with open(path, "wb") as f:
        f.write(data)
    return path


def build_code_repo(root: str, package: str = "json", license_text: str | None = None) -> str:
    """A checkout of a standard-library package with what real repositories also contain."""
    repo = os.path.join(root, package)
    copy_stdlib_package(package, repo, psf_license_text() if license_text is None else license_text)
    os.makedirs(os.path.join(repo, ".git", "objects"))
    with open(os.path.join(repo, ".git", "HEAD"), "w") as f:
        f.write("ref: refs/heads/main\n")
    os.makedirs(os.path.join(repo, "node_modules", "left-pad"))
    with open(os.path.join(repo, "node_modules", "left-pad", "index.js"), "w") as f:
        f.write("module.exports = function leftPad(s, n) { return s.padStart(n); };\n")
    os.makedirs(os.path.join(repo, package, "__pycache__"))
    with open(os.path.join(repo, package, "__pycache__", "decoder.cpython-311.pyc"), "wb") as f:
        f.write(b"\xa7\r\r\n" + bytes(64))
    with open(os.path.join(repo, "logo.png"), "wb") as f:  # known binary extension
        f.write(b"\x89PNG\r\n\x1a\n" + bytes(32))
    with open(os.path.join(repo, "data.py"), "wb") as f:  # binary content behind a source extension
        f.write(b"\x00\x01\x02BINARY" * 16)
    with open(os.path.join(repo, "app.min.js"), "w") as f:
        f.write("var a=1;" * 200 + "\n")
    with open(os.path.join(repo, "bundle.js"), "w") as f:  # minified without the name
        f.write("function f(a){return a+1};" * 100 + "\n")
    with open(os.path.join(repo, "latin1_comment.py"), "wb") as f:  # invalid UTF-8
        f.write("# Auteur : François Pinard\nVALUE = 1\n".encode("latin-1"))
    with open(os.path.join(repo, "empty.py"), "w") as f:
        f.write("\n\n")
    with open(os.path.join(repo, "README.md"), "w") as f:
        f.write(f"# {package}\n\nA copy of the standard-library package, used as a test repository.\n")
    return repo


def build_stack_jsonl(path: str, packages: tuple[str, ...] = ("textwrap.py", "bisect.py")) -> str:
    """The-Stack-style JSON Lines of standard-library modules (``content``, ``max_stars_repo_path``, ...)."""
    import sysconfig

    stdlib = sysconfig.get_paths()["stdlib"]
    with gzip.open(path, "wt", encoding="utf-8") if path.endswith(".gz") else open(path, "w") as f:
        for i, name in enumerate(packages):
            with open(os.path.join(stdlib, name), encoding="utf-8") as src:
                content = src.read()
            f.write(json.dumps({
                "hexsha": f"{i:040x}", "content": content, "max_stars_repo_path": f"Lib/{name}",
                "max_stars_repo_name": "python/cpython", "max_stars_repo_licenses": ["PSF-2.0"], "lang": "Python",
            }) + "\n")
    return path


def cut_file(path: str, keep: int | float, out: str | None = None) -> str:
    """Truncate (a copy of) ``path`` to ``keep`` bytes, or to that fraction of its size."""
    size = os.path.getsize(path)
    n = int(size * keep) if isinstance(keep, float) else keep
    target = out or path
    if target != path:
        shutil.copyfile(path, target)
    with open(target, "r+b") as f:
        f.truncate(n)
    return target


def insert_bytes(path: str, marker: bytes, data: bytes, occurrence: int = 1) -> str:
    """Insert ``data`` right before the ``occurrence``-th ``marker`` of an (uncompressed) file."""
    with open(path, "rb") as f:
        content = f.read()
    pos = -1
    for _ in range(occurrence):
        pos = content.index(marker, pos + 1)
    with open(path, "wb") as f:
        f.write(content[:pos] + data + content[pos:])
    return path


def write_huge_line_file(path: str, line_bytes: int, before: list[bytes], after: list[bytes],
                         prefix: bytes = b"", suffix: bytes = b"") -> str:
    """Lines ``before``, then ONE line of ``line_bytes`` bytes (a sparse hole between ``prefix`` and
    ``suffix``: no disk, no time), then lines ``after``."""
    with open(path, "wb") as f:
        for line in before:
            f.write(line + b"\n")
        f.write(prefix)
        f.seek(line_bytes - len(prefix) - len(suffix), os.SEEK_CUR)
        f.write(suffix + b"\n")
        for line in after:
            f.write(line + b"\n")
    return path
