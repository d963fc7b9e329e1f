"""MediaWiki XML dumps (``pages-articles.xml``, ``.xml.bz2``/``.gz``), streamed with ``lxml.iterparse``.

Each ``<page>`` is handled when its end tag arrives and then cleared together with the siblings before it,
so memory stays at one page whatever the dump size. Only the main namespace (``ns`` 0, configurable) is
kept; redirects and disambiguation pages are dropped and counted. A truncated bz2 stream ends the file with
one counted skip; every page before the break has already been yielded.

Malformed XML (a broken page, junk between pages) stops ``iterparse`` for good, so the reader then
resynchronises: it reads the file again from the start, passes over the pages already handled, and parses
every following ``<page>...</page>`` on its own (:func:`_page_segments`). A page that still does not parse is
skipped as ``malformed_xml``, one per page lost; junk outside any page counts one ``malformed_xml``. Pages in
dumps cannot contain a literal ``<page`` outside markup (XML escapes ``<`` in text), which makes the page start
tag a safe place to resynchronise.

A multistream dump larger than a part is read in pieces (``span``: whole bz2 streams, cut at the offsets of
its ``-index.txt.bz2``, :mod:`data_pipelines.sources.split`). A piece after the first is given the root
element the first stream opens (``<mediawiki>``) and one before the last the end tag the last stream holds,
so each piece parses as the dump does; the wiki's name is read from the first stream's ``<siteinfo>``.
"""

from __future__ import annotations

import bz2
import io
import logging
import os
import re
from typing import Any, BinaryIO, ClassVar, Iterator

from lxml import etree

from data_pipelines.document import Document
from data_pipelines.sources.base import (
    MiB,
    SourceReader,
    TolerantStream,
    file_label,
    open_binary,
    stream_error_reason,
)
from data_pipelines.sources.wikitext import (
    CATEGORY_PREFIXES,
    DEFAULT_DISAMBIGUATION_TEMPLATES,
    DEFAULT_DROP_SECTIONS,
    MEDIA_PREFIXES,
    is_disambiguation,
    may_be_disambiguation,
    wikitext_to_text,
)
from data_pipelines.sources.wikitext import parse as parse_wikitext
from data_pipelines.stats import StageStats

log = logging.getLogger(__name__)

_PAGE_START = re.compile(rb"<page[\s>]")
_PAGE_END = b"</page>"
_DBNAME = re.compile(rb"<dbname>([^<]*)</dbname>")


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _child_text(elem: etree._Element, name: str) -> str | None:
    for child in elem:
        if _local(child.tag) == name:
            return child.text
    return None


class WikiReader(SourceReader):
    """``kind: wiki``. Options: ``namespaces`` (kept ``ns`` values, default ``[0]``),
    ``disambiguation_templates``, ``media_prefixes`` and ``category_prefixes`` (add the localised names
    for non-English wikis, e.g. ``Datei``/``Kategorie``), ``redirect_words`` (localised ``#REDIRECT``),
    ``drop_sections`` (headings of non-prose sections left out; ``[]`` keeps all), ``keep_math``, ``keep_code``."""

    kind: ClassVar[str] = "wiki"
    extensions: ClassVar[tuple[str, ...]] = (".xml", ".xml.bz2", ".xml.gz", ".xml.xz")
    OPTIONS: ClassVar[dict[str, Any]] = {
        "namespaces": [0],
        "disambiguation_templates": list(DEFAULT_DISAMBIGUATION_TEMPLATES),
        "media_prefixes": sorted(MEDIA_PREFIXES),
        "category_prefixes": sorted(CATEGORY_PREFIXES),
        "redirect_words": ["redirect"],
        "drop_sections": list(DEFAULT_DROP_SECTIONS),  # non-prose sections left out ([] keeps every section)
        "keep_math": False,  # <math>/<chem> source text kept
        "keep_code": False,  # <syntaxhighlight>/<source> blocks kept
    }

    def __init__(self, source: str, **options: Any):
        super().__init__(source, **options)
        self.namespaces = {str(n) for n in self.options["namespaces"]}
        words = "|".join(re.escape(w) for w in self.options["redirect_words"])
        self._redirect_re = re.compile(rf"^\s*#({words})\s*:?\s*\[\[", re.IGNORECASE)

    def read(self, path: str, stats: StageStats, span: Any = None) -> Iterator[Document]:
        fname = file_label(path)
        inner, compression = _open_piece(path, span)
        seen = 0  # <page> elements handled by the streaming parse, whatever became of them
        with TolerantStream(inner) as stream:
            # huge_tree: lxml otherwise refuses text nodes > 10 MB and would end the file there; the
            # per-page cap below is the limit that counts.
            pages = etree.iterparse(stream, events=("end",), tag="{*}page", huge_tree=True, remove_comments=True)
            dbname = _first_stream_dbname(path) if span is not None and span.start > 0 else ""
            error: BaseException | None = None
            while True:
                try:
                    _, page = next(pages)
                except StopIteration:
                    error = stream.error
                    break
                except etree.XMLSyntaxError as exc:
                    error = stream.error or exc  # a cut compressed stream also ends in a syntax error
                    break
                seen += 1
                if not dbname:
                    dbname = self._dbname(page)
                doc = self._page(page, fname, dbname, stats)
                page.clear()  # free the page and the siblings parsed before it: memory stays at one page
                parent = page.getparent()
                if parent is not None:
                    while page.getprevious() is not None:
                        del parent[0]
                if doc is not None:
                    yield doc
        if isinstance(error, etree.XMLSyntaxError):
            log.warning("source %s: malformed_xml in %s after %d pages: %s; resynchronising at the next <page>",
                        self.source, path, seen, error)
            yield from self._resync(path, fname, dbname, seen, stats, span)
        elif error is not None:
            reason = stream_error_reason(error, compression, "xml")
            log.warning("source %s: %s in %s: %s; pages before it kept", self.source, reason, path, error)
            self.skip(stats, reason, where=path)

    def _resync(
        self, path: str, fname: str, dbname: str, seen: int, stats: StageStats, span: Any = None,
    ) -> Iterator[Document]:
        """The pages after the first ``seen`` ones, each parsed on its own; see the module docstring."""
        parser = etree.XMLParser(huge_tree=True, remove_comments=True)
        inner, compression = _open_piece(path, span)
        lost = 0
        with TolerantStream(inner) as stream:
            for index, (head, segment) in enumerate(_page_segments(stream, self.max_record_bytes)):
                if index == 0:  # the bytes before the first page: siteinfo
                    if not dbname and (m := _DBNAME.search(head)):
                        dbname = m.group(1).decode("utf-8", "replace")
                    continue
                if index <= seen:
                    continue  # handled by the streaming parse
                if segment is None:
                    self.skip(stats, "record_too_large", where=f"{path}: page {index}")
                    continue
                end = segment.find(_PAGE_END)
                page = None
                if end >= 0:
                    try:
                        page = etree.fromstring(segment[: end + len(_PAGE_END)], parser)
                    except etree.XMLSyntaxError:
                        page = None
                if page is None:
                    if stream.error is not None and end < 0:
                        break  # the page the stream was cut in: counted below as the truncation
                    lost += 1
                    self.skip(stats, "malformed_xml", len(segment), f"{path}: page {index}")
                    continue
                doc = self._page(page, fname, dbname, stats)
                if doc is not None:
                    yield doc
        if stream.error is not None:
            reason = stream_error_reason(stream.error, compression, "xml")
            log.warning("source %s: %s in %s: %s", self.source, reason, path, stream.error)
            self.skip(stats, reason, where=path)
        elif lost == 0:  # the damage was outside any page (siteinfo, between pages): count it once
            self.skip(stats, "malformed_xml", where=path)
        if lost:
            log.warning("source %s: %d malformed page(s) lost in %s; the pages after them kept", self.source, lost,
                        path)

    @staticmethod
    def _dbname(page: etree._Element) -> str:
        root = page.getparent()
        if root is None:
            return ""
        for child in root:
            if _local(child.tag) == "siteinfo":
                return _child_text(child, "dbname") or ""
        return ""

    def _page(self, page: etree._Element, fname: str, dbname: str, stats: StageStats) -> Document | None:
        title = _child_text(page, "title") or ""
        ns = (_child_text(page, "ns") or "0").strip()
        page_id = (_child_text(page, "id") or "").strip()
        text, timestamp, redirect = "", "", False
        for child in page:
            name = _local(child.tag)
            if name == "redirect":
                redirect = True
            elif name == "revision":
                text = _child_text(child, "text") or ""
                timestamp = _child_text(child, "timestamp") or ""
        nbytes = len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
        if ns not in self.namespaces:
            self.drop(stats, "wiki_namespace", nbytes)
            return None
        if redirect or self._redirect_re.match(text):
            self.drop(stats, "wiki_redirect", nbytes)
            return None
        if nbytes > self.max_record_bytes:
            self.skip(stats, "record_too_large", nbytes, title)
            return None
        try:
            templates = self.options["disambiguation_templates"]
            # the whole page is parsed only when a disambiguation template may be on it (the sections are parsed
            # one by one below): most pages are decided by a look at the text
            if may_be_disambiguation(text, templates) and is_disambiguation(parse_wikitext(text), templates):
                self.drop(stats, "wiki_disambiguation", nbytes)
                return None
            failed: list[str] = []
            plain = wikitext_to_text(text, self.options["media_prefixes"], self.options["category_prefixes"],
                                     drop_sections=self.options["drop_sections"],
                                     keep_math=self.options["keep_math"], keep_code=self.options["keep_code"],
                                     failed_sections=failed)
            if failed:  # the rest of the page is kept; what is lost is counted and named
                stats.modify("wikitext_section_unparsed", len(failed))
                log.warning("source %s: %r: %d section(s) the wikitext parser rejected left out: %s", self.source,
                            title, len(failed), ", ".join(failed[:5]))
        except Exception as exc:  # noqa: BLE001 - one unparsable page must not end the dump
            log.warning("source %s: wikitext of %r failed to parse: %s", self.source, title, exc)
            self.skip(stats, "wikitext_parse_error", nbytes, title)
            return None
        if title and not plain.startswith(title):
            plain = f"{title}\n\n{plain}" if plain else ""
        key = page_id or title
        prefix = f"{dbname}/" if dbname else ""
        meta = {"file": fname, "title": title, "page_id": page_id, "timestamp": timestamp, "wiki": dbname}
        return self.emit(stats, f"{self.source}:{prefix}{key}", plain, nbytes, meta)


class _Concat(io.RawIOBase):
    """``head``, then the stream ``inner``, then ``tail``: a piece of a dump with the root element around it."""

    def __init__(self, head: bytes, inner: BinaryIO, tail: bytes):
        super().__init__()
        self._parts: list[Any] = [io.BytesIO(head), inner, io.BytesIO(tail)]
        self._inner = inner

    def readable(self) -> bool:
        return True

    def read1(self, n: int = -1) -> bytes:
        while self._parts:
            data = self._parts[0].read1(n if n > 0 else MiB)
            if data:
                return data
            self._parts.pop(0)
        return b""

    def readinto(self, buffer: Any) -> int:
        data = self.read1(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._inner.close()
        super().close()


def _open_piece(path: str, span: Any) -> tuple[BinaryIO, str]:
    """The whole dump, or one piece of it (whole bz2 streams) wrapped in the dump's root element."""
    inner, compression = open_binary(path, span)
    if span is None:
        return inner, compression
    head = b"<mediawiki>\n" if span.start > 0 else b""  # the first stream opens the root element
    tail = b"</mediawiki>\n" if span.end < os.path.getsize(path) else b""  # the last one closes it
    return _Concat(head, inner, tail), compression  # type: ignore[return-value]


def _first_stream_dbname(path: str) -> str:
    """The ``<dbname>`` of a multistream dump, from its first bz2 stream (siteinfo, before any page)."""
    d = bz2.BZ2Decompressor()
    out = b""
    with open(path, "rb") as f:
        while not d.eof and len(out) < MiB:
            chunk = f.read(64 * 1024)
            if not chunk:
                break
            try:
                out += d.decompress(chunk)
            except (OSError, EOFError, ValueError):
                break
            if (m := _DBNAME.search(out)) is not None:
                return m.group(1).decode("utf-8", "replace")
    return ""


def _page_segments(stream: TolerantStream, max_bytes: int) -> Iterator[tuple[bytes, bytes | None]]:
    """Split a dump's bytes at each ``<page`` start tag: first ``(head, None)``, the bytes before the first page
    (at most 1 MiB of them: the siteinfo), then ``(b"", segment)`` for each page, from its start tag to the next
    one or the end of the file. A page over ``max_bytes`` (plus 1 MiB for its markup) comes as ``(b"", None)``
    and is read past in bounded chunks; memory stays at one page."""
    buf = bytearray()
    head = bytearray()
    phase = "head"  # head: before the first page; page: buf[start:] is the current page; skip: an oversized page
    start = 0
    limit = max_bytes + MiB
    while True:
        chunk = stream.read(MiB)
        buf += chunk
        search = start + 1 if phase == "page" else 0
        while (m := _PAGE_START.search(buf, search)) is not None:
            if phase == "head":
                head += buf[: m.start()]
                yield bytes(head[:MiB]), None
            elif phase == "page":
                yield b"", bytes(buf[start : m.start()])
            phase, start, search = "page", m.start(), m.start() + 1
        if not chunk:  # end of the file (or of the readable part of a cut stream)
            if phase == "head":
                yield bytes((head + buf)[:MiB]), None
            elif phase == "page":
                yield b"", bytes(buf[start:])
            return
        if phase == "page":
            del buf[:start]
            start = 0
            if len(buf) > limit:
                yield b"", None
                phase = "skip"
        if phase != "page" and len(buf) > 16:  # keep a tail in which a start tag cut by the chunk edge is found
            if phase == "head" and len(head) < MiB:
                head += buf[:-16]
            del buf[:-16]
