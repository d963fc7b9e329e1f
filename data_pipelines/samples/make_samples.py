"""Regenerate the bundled sample corpora from real text that every Python installation carries.

    python -m data_pipelines.samples.make_samples [--out DIR]

* ``web/``: a WARC (``.warc.gz``) of ``pydoc`` HTML pages of standard-library modules, a windows-1252 page,
  non-HTML payloads (JSON, robots.txt), a 404, request and warcinfo records; and a WET file of the same
  kind of text.
* ``wiki/``: a MediaWiki export (``.xml.bz2``) whose articles use the real constructs of Wikipedia
  (infobox and citation templates, ``<ref>``, tables, File: links, categories, interlanguage links), plus
  a redirect, a disambiguation page and talk/template pages.
* ``books/``: two Project Gutenberg style books (current and 2000s licence markers, the older one in
  ISO-8859-1) whose chapters are essays from the standard library's documentation.
* ``code/``: two repository checkouts copied from the standard library (``json`` under the PSF licence,
  ``tomllib`` under the MIT licence of tomli, where it came from); ``tomllib`` carries a vendored copy of
  ``json/scanner.py``.

Like a real crawl, the samples hold duplicates for the dedup stage to find: a pydoc page served at a second
URL (exact), the heapq essay reposted with another site's header, footer and a few edits (near), and the
vendored ``scanner.py`` (near, code parameters).

The builders are importable (tests build their fixtures with them). Output is deterministic for a given
Python version: fixed record ids and dates, gzip/bz2 without timestamps, sorted iteration.
"""

from __future__ import annotations

import argparse
import bz2
import heapq
import importlib
import io
import json
import os
import pydoc
import re
import shutil
import sys
import sysconfig
import textwrap
from dataclasses import dataclass
from typing import Iterable
from xml.sax.saxutils import escape

SAMPLES_DIR = os.path.dirname(os.path.abspath(__file__))
STDLIB = sysconfig.get_paths()["stdlib"]
WARC_DATE = "2024-03-01T12:00:00Z"

# --------------------------------------------------------------------------------------------- web


def pydoc_page(module_name: str) -> bytes:
    """The HTML documentation page ``pydoc`` renders for a module (UTF-8), machine paths and memory
    addresses neutralised so the page is the same in every process."""
    module = importlib.import_module(module_name)
    doc = pydoc.HTMLDoc()
    html = doc.page(pydoc.describe(module), doc.docmodule(module))
    html = html.replace(STDLIB, "/usr/lib/python3")
    html = re.sub(r" at 0x[0-9a-f]+&gt;", "&gt;", html)  # default values' reprs carry memory addresses
    return html.encode("utf-8")


def heapq_essay_html(charset_in_meta: str | None) -> str:
    """François Pinard's essay on heaps (``heapq.__about__``) as an HTML article (it has non-ASCII text)."""
    paras = [p.strip() for p in heapq.__about__.split("\n\n") if p.strip()]
    body = "\n".join(f"<p>{escape(' '.join(p.split()))}</p>" for p in paras[1:])
    meta = f'<meta charset="{charset_in_meta}">' if charset_in_meta else ""
    return (
        f"<!DOCTYPE html>\n<html><head>{meta}<title>Heap queues</title></head>\n<body>\n"
        f"<nav><a href='/'>Home</a> | <a href='/library'>Library</a></nav>\n"
        f"<article><h1>{escape(paras[0])}</h1>\n{body}\n</article>\n"
        f"<footer>Copyright notice and site links</footer>\n</body></html>\n"
    )


def reposted_heapq_essay_html() -> bytes:
    """The heapq essay as another site reposts it: its own header, footer and editor's note, and a few
    sentences edited -- a near duplicate of ``heapq-about.html`` that exact hashing cannot catch."""
    html = heapq_essay_html(charset_in_meta="utf-8")
    edits = (
        ("<nav><a href='/'>Home</a> | <a href='/library'>Library</a></nav>",
         "<header><a href='/'>Algorithms Weekly</a> | <a href='/archive'>Archive</a> | <a href='/about'>About</a></header>"),
        ("<footer>Copyright notice and site links</footer>",
         "<footer>Reposted with permission. Subscribe to Algorithms Weekly for more essays like this one.</footer>"),
        ("For the sake of comparison,", "For the sake of the comparisons below,"),
        ("we see in sports,", "we see in tennis or chess,"),
    )
    for old, new in edits:
        assert old in html, old
        html = html.replace(old, new, 1)
    note = "<p>Editor's note: this classic explanation first appeared in the Python sources; we reproduce it here.</p>"
    html = html.replace("</h1>\n", f"</h1>\n{note}\n", 1)
    return html.encode("utf-8")


@dataclass
class WebRecord:
    """One WARC record to write: ``response`` (with HTTP headers), ``request``, ``warcinfo`` or ``conversion``."""

    url: str
    payload: bytes
    content_type: str = "text/html; charset=utf-8"
    status: str = "200 OK"
    rec_type: str = "response"
    date: str = WARC_DATE


def record_id(n: int) -> str:
    return f"<urn:uuid:00000000-0000-4000-8000-{n:012d}>"


def write_warc(path: str, records: Iterable[WebRecord], gzip: bool = True, first_id: int = 1) -> str:
    """Write ``records`` with ``warcio`` (ids ``first_id``, ``first_id + 1``... and fixed dates)."""
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    with open(path, "wb") as f:
        writer = WARCWriter(f, gzip=gzip)
        for n, rec in enumerate(records, start=first_id):
            warc_headers = {"WARC-Date": rec.date, "WARC-Record-ID": record_id(n)}
            if rec.rec_type == "response":
                http = StatusAndHeaders(
                    rec.status, [("Content-Type", rec.content_type), ("Content-Length", str(len(rec.payload)))],
                    protocol="HTTP/1.1",
                )
                record = writer.create_warc_record(
                    rec.url, "response", payload=io.BytesIO(rec.payload), http_headers=http,
                    warc_headers_dict=warc_headers,
                )
            elif rec.rec_type == "request":
                http = StatusAndHeaders(f"GET {rec.url} HTTP/1.1", [("User-Agent", "sample-crawler")], is_http_request=True)
                record = writer.create_warc_record(
                    rec.url, "request", payload=io.BytesIO(b""), http_headers=http, warc_headers_dict=warc_headers,
                )
            elif rec.rec_type == "warcinfo":
                record = writer.create_warc_record(
                    "", "warcinfo", payload=io.BytesIO(rec.payload),
                    warc_content_type="application/warc-fields", warc_headers_dict=warc_headers,
                )
            elif rec.rec_type == "conversion":
                record = writer.create_warc_record(
                    rec.url, "conversion", payload=io.BytesIO(rec.payload),
                    warc_content_type="text/plain", warc_headers_dict=warc_headers,
                )
            else:
                raise ValueError(f"unsupported record type {rec.rec_type!r}")
            writer.write_record(record)
    return path


WEB_MODULES = ("json", "textwrap", "heapq", "bisect", "shlex", "sched", "fractions", "colorsys")


def sample_web_records() -> list[WebRecord]:
    """The records of the sample WARC: real pydoc pages plus the odd cases a crawl always has."""
    recs = [WebRecord("", b"software: make_samples.py\r\nformat: WARC File Format 1.1\r\n", rec_type="warcinfo")]
    for name in WEB_MODULES:
        url = f"https://docs.example.org/library/{name}.html"
        recs.append(WebRecord(url, b"", rec_type="request"))
        recs.append(WebRecord(url, pydoc_page(name)))
    essay = heapq_essay_html(charset_in_meta=None).encode("cp1252")
    recs.append(WebRecord("https://essays.example.org/heapq-about.html", essay, "text/html; charset=windows-1252"))
    # Duplicates a crawl always has (the demo report shows dedup removing them): the same page served at a
    # second URL (exact), and the essay reposted elsewhere with other boilerplate and a few edits (near).
    recs.append(WebRecord("https://mirror.example.net/python3/library/heapq.html", pydoc_page("heapq")))
    recs.append(WebRecord("https://weekly.example.com/2024/03/heap-queues.html", reposted_heapq_essay_html()))
    recs.append(WebRecord("https://docs.example.org/api/modules.json",
                          json.dumps({"modules": list(WEB_MODULES)}).encode(), "application/json"))
    recs.append(WebRecord("https://docs.example.org/robots.txt", b"User-agent: *\nDisallow: /private/\n", "text/plain"))
    recs.append(WebRecord("https://docs.example.org/missing.html", b"<html><body>Not found</body></html>",
                          status="404 Not Found"))
    return recs


def sample_wet_records() -> list[WebRecord]:
    """WET ``conversion`` records: the plain text of module docstrings, as Common Crawl's WET files hold."""
    out = []
    for name in ("difflib", "statistics", "csv"):
        doc = importlib.import_module(name).__doc__ or ""
        out.append(WebRecord(f"https://docs.example.org/library/{name}.html", doc.strip().encode("utf-8"),
                             rec_type="conversion"))
    return out


# -------------------------------------------------------------------------------------------- wiki


@dataclass
class WikiPage:
    title: str
    text: str
    ns: int = 0
    page_id: int = 0
    redirect: str | None = None
    timestamp: str = "2024-02-01T10:00:00Z"


def _wrap_para(text: str) -> str:
    return " ".join(text.split())


def _about_paragraphs() -> list[str]:
    """The prose paragraphs of the heap essay (not its ASCII-art tree)."""
    return [_wrap_para(p) for p in heapq.__about__.split("\n\n")[2:] if len(p.split()) >= 25]


def sample_wiki_pages() -> list[WikiPage]:
    """Articles in real Wikipedia wikitext; their prose comes from standard-library documentation."""
    about = _about_paragraphs()
    json_doc = [_wrap_para(p) for p in (json.__doc__ or "").split("\n\n")[:1]]
    heap_article = f"""{{{{Short description|Priority queue algorithm in Python}}}}
{{{{Infobox software
| name = heapq
| logo = [[File:Python-logo-notext.svg|64px]]
| developer = [[Python Software Foundation]]
| genre = [[Priority queue]]
}}}}
The '''heap queue''' module of [[Python (programming language)|Python]] implements the [[heap (data structure)|heap]] algorithm.<ref>{{{{cite web |url=https://docs.python.org/3/library/heapq.html |title=heapq — Heap queue algorithm |publisher=Python Software Foundation}}}}</ref> {about[0]}
[[File:Max-Heap.svg|thumb|right|An example of a binary heap]]

== Explanation ==
{about[1]}<ref name="pinard">François Pinard, explanation in the module source.</ref>

{about[2]}

=== Uses ===
* Tournaments and [[sorting algorithm|sorting]].<ref name="pinard"/>
* [[Scheduling (computing)|Schedulers]], where the next event is always the smallest time.
# ''Merging'' sorted runs on tape.

== Complexity ==
{{| class="wikitable"
|-
! Operation !! Cost
|-
| push || O(log n)
|-
| pop || O(log n)
|}}
{about[3] if len(about) > 3 else ""}

== See also ==
* [[Priority queue]]

== References ==
{{{{Reflist}}}}

{{{{Python navbox}}}}
[[Category:Python (programming language) modules]]
[[Category:Heaps (data structures)]]
[[de:Heapq]]
[[fr:Heapq]]
"""
    json_article = f"""{{{{Infobox file format
| name = JSON
| extension = .json
| mime = application/json
}}}}
'''json''' is the [[Python (programming language)|Python]] module for [[JSON]]. {json_doc[0]}<ref>{{{{cite book |title=Python Library Reference |year=2024}}}}</ref>

== Usage ==
The module encodes Python objects as JSON text with <code>dumps</code> and decodes them with <code>loads</code>.
<!-- editors: keep the examples in the documentation, not here -->
[[Image:JSON vector logo.svg|thumb|The JSON logo]]

[[Category:Python (programming language) modules]]
[[es:JSON (módulo)]]
"""
    return [
        WikiPage("Heap queue (Python)", heap_article, page_id=101),
        WikiPage("Json (Python module)", json_article, page_id=102),
        WikiPage("Heapq", "#REDIRECT [[Heap queue (Python)]]\n\n{{R from module name}}", page_id=103,
                 redirect="Heap queue (Python)"),
        WikiPage("Heap", "'''Heap''' may refer to:\n* [[Heap (data structure)]]\n* [[Heap queue (Python)]]\n"
                         "\n{{disambiguation}}", page_id=104),
        WikiPage("Talk:Heap queue (Python)", "== Merge proposal ==\nShould this be merged? ~~~~", ns=1, page_id=105),
        WikiPage("Template:Python navbox", "{{Navbox|name=Python navbox|list1=[[heapq]] · [[json]]}}", ns=10,
                 page_id=106),
    ]


def wiki_xml(pages: Iterable[WikiPage], dbname: str = "samplewiki") -> str:
    """A MediaWiki export (schema 0.10) of ``pages``."""
    out = [
        '<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" version="0.10" xml:lang="en">',
        "  <siteinfo>",
        f"    <sitename>Sample Wiki</sitename>\n    <dbname>{dbname}</dbname>",
        "    <base>https://wiki.example.org/wiki/Main_Page</base>",
        "    <generator>MediaWiki 1.41.0</generator>\n    <case>first-letter</case>",
        "    <namespaces>",
        '      <namespace key="0" case="first-letter" />',
        '      <namespace key="1" case="first-letter">Talk</namespace>',
        '      <namespace key="10" case="first-letter">Template</namespace>',
        "    </namespaces>",
        "  </siteinfo>",
    ]
    for p in pages:
        out += [
            "  <page>",
            f"    <title>{escape(p.title)}</title>",
            f"    <ns>{p.ns}</ns>",
            f"    <id>{p.page_id}</id>",
        ]
        if p.redirect:
            out.append(f'    <redirect title="{escape(p.redirect, {chr(34): "&quot;"})}" />')
        out += [
            "    <revision>",
            f"      <id>{p.page_id * 1000}</id>",
            f"      <timestamp>{p.timestamp}</timestamp>",
            "      <contributor><username>SampleBot</username><id>1</id></contributor>",
            "      <model>wikitext</model>\n      <format>text/x-wiki</format>",
            f'      <text bytes="{len(p.text.encode())}" xml:space="preserve">{escape(p.text)}</text>',
            "    </revision>",
            "  </page>",
        ]
    out.append("</mediawiki>\n")
    return "\n".join(out)


def write_wiki_dump(
    path: str, pages: Iterable[WikiPage], dbname: str = "samplewiki", pages_per_stream: int = 100,
) -> str:
    """Write a dump; ``.bz2`` in the name compresses it as Wikimedia's *multistream* dumps are: one bz2
    stream per ``pages_per_stream`` pages, concatenated (bz2 output carries no timestamp)."""
    xml = wiki_xml(pages, dbname)
    if not path.endswith(".bz2"):
        with open(path, "wb") as f:
            f.write(xml.encode("utf-8"))
        return path
    head, sep, rest = xml.partition("  <page>")
    chunks = [head]
    page_texts = [("  <page>" + p) for p in rest.split("  <page>")] if sep else []
    for i in range(0, len(page_texts), pages_per_stream):
        chunks.append("".join(page_texts[i:i + pages_per_stream]))
    with open(path, "wb") as f:
        for chunk in chunks:
            f.write(bz2.compress(chunk.encode("utf-8"), 9))
    return path


# ------------------------------------------------------------------------------------------- books


def _docstring_paragraphs(text: str, width: int = 70) -> list[str]:
    """Docstring -> book paragraphs: prose re-wrapped at ``width`` (hard-wrapped, as Gutenberg files are),
    indented examples kept as they are."""
    out = []
    for block in re.split(r"\n\s*\n", textwrap.dedent(text).strip()):
        lines = block.split("\n")
        if any(line.startswith((" ", "\t", ">>>")) for line in lines):
            out.append("\n".join("    " + line.rstrip() for line in lines))
        else:
            out.append(textwrap.fill(" ".join(block.split()), width))
    return out


def gutenberg_book(
    title: str, author: str, ebook_no: int, chapters: list[tuple[str, str]], style: str = "modern",
) -> str:
    """A book laid out as Project Gutenberg publishes it, with the real licence markers of ``style``
    (``modern``: ``*** START OF THE PROJECT GUTENBERG EBOOK ...``, 2023 header; ``old``: ``*** START OF
    THIS ...``, 2000s header with ``Character set encoding`` and ``End of the Project Gutenberg EBook``)."""
    upper = title.upper()
    body: list[str] = []
    body.append(title.upper())
    body.append(f"by {author}")
    body.append("CONTENTS\n\n" + "\n".join(f"{n}. {head}" for n, (head, _) in enumerate(chapters, start=1)))
    for n, (head, text) in enumerate(chapters, start=1):
        body.append(f"{n}. {head}")
        body.extend(_docstring_paragraphs(text))
    text = "\n\n".join(body)
    if style == "modern":
        return (
            f"The Project Gutenberg eBook of {title}\n\n"
            "This ebook is for the use of anyone anywhere in the United States and\n"
            "most other parts of the world at no cost and with almost no restrictions\n"
            "whatsoever. You may copy it, give it away or re-use it under the terms\n"
            "of the Project Gutenberg License included with this ebook or online\n"
            "at www.gutenberg.org. If you are not located in the United States,\n"
            "you will have to check the laws of the country where you are located\n"
            "before using this eBook.\n\n"
            f"Title: {title}\n\nAuthor: {author}\n\n"
            f"Release date: January 1, 2024 [eBook #{ebook_no}]\n\n"
            "Language: English\n\n"
            "Credits: Produced by the sample generator from the Python documentation\n\n\n"
            f"*** START OF THE PROJECT GUTENBERG EBOOK {upper} ***\n\n\n"
            f"{text}\n\n\n"
            f"*** END OF THE PROJECT GUTENBERG EBOOK {upper} ***\n\n\n\n"
            "Updated editions will replace the previous one--the old editions will\n"
            "be renamed.\n\n"
            "START: FULL LICENSE\n\n"
            "THE FULL PROJECT GUTENBERG LICENSE\n"
            "PLEASE READ THIS BEFORE YOU DISTRIBUTE OR USE THIS WORK\n"
        )
    if style == "old":
        return (
            f"The Project Gutenberg EBook of {title}, by {author}\n\n"
            "This eBook is for the use of anyone anywhere at no cost and with\n"
            "almost no restrictions whatsoever.  You may copy it, give it away or\n"
            "re-use it under the terms of the Project Gutenberg License included\n"
            "with this eBook or online at www.gutenberg.net\n\n\n"
            f"Title: {title}\n\nAuthor: {author}\n\n"
            f"Release Date: March 1, 2004 [EBook #{ebook_no}]\n\n"
            "Language: English\n\nCharacter set encoding: ISO-8859-1\n\n"
            f"*** START OF THIS PROJECT GUTENBERG EBOOK {upper} ***\n\n\n\n\n"
            "Produced by the sample generator from the docstrings of the\n"
            "Python standard library\n\n\n\n\n"
            f"{text}\n\n\n\n\n"
            f"End of the Project Gutenberg EBook of {title}, by {author}\n\n"
            f"*** END OF THIS PROJECT GUTENBERG EBOOK {upper} ***\n\n"
            "***** This file should be named 90002.txt or 90002.zip *****\n"
        )
    raise ValueError(f"style must be 'modern' or 'old', got {style!r}")


def sample_books() -> dict[str, bytes]:
    """File name -> bytes of the two sample books."""
    about = heapq.__about__.split("\n\n", 2)[2]
    modern = gutenberg_book(
        "Schedules, Statistics and Chance", "Various Python Developers", 90001,
        [("Event Scheduling", importlib.import_module("sched").__doc__ or ""),
         ("Statistics", importlib.import_module("statistics").__doc__ or ""),
         ("Random Numbers", importlib.import_module("random").__doc__ or "")],
        style="modern",
    )
    old = gutenberg_book(
        "Selected Module Essays", "The Python Documentation Team", 90002,
        [("On Heaps, by François Pinard", about), ("Comparing Sequences", importlib.import_module("difflib").__doc__ or ""),
         ("Comma Separated Values", importlib.import_module("csv").__doc__ or "")],
        style="old",
    )
    return {"pg90001.txt": modern.encode("utf-8"), "pg90002.txt": old.encode("iso-8859-1")}


# -------------------------------------------------------------------------------------------- code

MIT_TOMLI = """MIT License

Copyright (c) 2021 Taneli Hukkinen

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""


def psf_license_text() -> str:
    """CPython's LICENSE.txt as installed next to the standard library."""
    path = os.path.join(STDLIB, "LICENSE.txt")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            return f.read()
    # some distributions drop it; the PSF licence's own title line is what identifies it
    return "PYTHON SOFTWARE FOUNDATION LICENSE VERSION 2\n" + "(the full text is at https://docs.python.org/3/license.html)\n"


def copy_stdlib_package(package: str, dest: str, license_text: str | None) -> str:
    """Copy a standard-library package's ``.py`` files into ``dest`` (a checkout) with a LICENSE file."""
    src = os.path.join(STDLIB, package)
    os.makedirs(dest, exist_ok=True)
    for root, dirs, files in os.walk(src):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            if name.endswith(".py"):
                target = os.path.join(dest, package, os.path.relpath(os.path.join(root, name), src))
                os.makedirs(os.path.dirname(target), exist_ok=True)
                shutil.copyfile(os.path.join(root, name), target)
    if license_text is not None:
        with open(os.path.join(dest, "LICENSE"), "w", encoding="utf-8") as f:
            f.write(license_text)
    return dest


def vendor_file(src: str, dest: str, note: str) -> str:
    """Copy ``src`` into another repository under a name no vendored-directory rule catches, with a comment
    line on top: the near duplicate of a source file that a second repository carries."""
    with open(src, encoding="utf-8") as f:
        text = f.read()
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    with open(dest, "w", encoding="utf-8") as f:
        f.write(f"# {note}\n{text}")
    return dest


# -------------------------------------------------------------------------------------------- main


def make_samples(out: str = SAMPLES_DIR) -> None:
    for kind in ("web", "wiki", "books", "code"):
        shutil.rmtree(os.path.join(out, kind), ignore_errors=True)
        os.makedirs(os.path.join(out, kind))
    write_warc(os.path.join(out, "web", "sample.warc.gz"), sample_web_records())
    write_warc(os.path.join(out, "web", "sample.warc.wet.gz"), sample_wet_records(), first_id=1001)
    write_wiki_dump(os.path.join(out, "wiki", "samplewiki-pages-articles.xml.bz2"), sample_wiki_pages())
    for name, data in sample_books().items():
        with open(os.path.join(out, "books", name), "wb") as f:
            f.write(data)
    copy_stdlib_package("json", os.path.join(out, "code", "json"), psf_license_text())
    copy_stdlib_package("tomllib", os.path.join(out, "code", "tomllib"), MIT_TOMLI)
    vendor_file(os.path.join(STDLIB, "json", "scanner.py"), os.path.join(out, "code", "tomllib", "tomllib", "_json_scanner.py"),
                "Vendored from CPython (Lib/json/scanner.py) so the parser does not import json; keep in sync.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=SAMPLES_DIR, help="folder to (re)write web/ wiki/ books/ code/ in")
    args = parser.parse_args(argv)
    make_samples(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
