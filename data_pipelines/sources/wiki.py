"""MediaWiki XML dumps (``pages-articles.xml``, ``.xml.bz2``/``.gz``), streamed with ``lxml.iterparse``.

Each ``<page>`` is handled when its end tag arrives and then cleared together with the siblings before it,
so memory stays at one page whatever the dump size. Only the main namespace (``ns`` 0, configurable) is
kept; redirects and disambiguation pages are dropped and counted. Malformed XML or a truncated bz2 stream
ends the file with one counted skip; every page before the break has already been yielded.
"""

from __future__ import annotations

import logging
import re
from typing import Any, ClassVar, Iterator

import mwparserfromhell
from lxml import etree

from data_pipelines.document import Document
from data_pipelines.sources.base import SourceReader, TolerantStream, file_label, open_binary, stream_error_reason
from data_pipelines.sources.wikitext import (
    CATEGORY_PREFIXES,
    DEFAULT_DISAMBIGUATION_TEMPLATES,
    MEDIA_PREFIXES,
    is_disambiguation,
    wikitext_to_text,
)
from data_pipelines.stats import StageStats

log = logging.getLogger(__name__)

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
    for non-English wikis, e.g. ``Datei``/``Kategorie``), ``redirect_words`` (localised ``#REDIRECT``)."""

    kind: ClassVar[str] = "wiki"
    extensions: ClassVar[tuple[str, ...]] = (".xml", ".xml.bz2", ".xml.gz", ".xml.xz")
    OPTIONS: ClassVar[dict[str, Any]] = {
        "namespaces": [0],
        "disambiguation_templates": list(DEFAULT_DISAMBIGUATION_TEMPLATES),
        "media_prefixes": sorted(MEDIA_PREFIXES),
        "category_prefixes": sorted(CATEGORY_PREFIXES),
        "redirect_words": ["redirect"],
    }

    def __init__(self, source: str, **options: Any):
        super().__init__(source, **options)
        self.namespaces = {str(n) for n in self.options["namespaces"]}
        words = "|".join(re.escape(w) for w in self.options["redirect_words"])
        self._redirect_re = re.compile(rf"^\s*#({words})\s*:?\s*\[\[", re.IGNORECASE)

    def read(self, path: str, stats: StageStats) -> Iterator[Document]:
        fname = file_label(path)
        inner, compression = open_binary(path)
        with TolerantStream(inner) as stream:
            # huge_tree: lxml otherwise refuses text nodes > 10 MB and would end the file there; the
            # per-page cap below is the limit that counts.
            pages = etree.iterparse(stream, events=("end",), tag="{*}page", huge_tree=True, remove_comments=True)
            dbname = ""
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
        if error is not None:
            if isinstance(error, etree.XMLSyntaxError):
                reason = "malformed_xml"
            else:
                reason = stream_error_reason(error, compression, "xml")
            log.warning("source %s: %s in %s: %s; pages before it kept", self.source, reason, path, error)
            self.skip(stats, reason, where=path)

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
        nbytes = len(text.encode("utf-8", "surrogatepass"))
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
            code = mwparserfromhell.parse(text)
            if is_disambiguation(code, self.options["disambiguation_templates"]):
                self.drop(stats, "wiki_disambiguation", nbytes)
                return None
            plain = wikitext_to_text(code, self.options["media_prefixes"], self.options["category_prefixes"])
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
