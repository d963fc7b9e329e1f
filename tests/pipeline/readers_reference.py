"""The wiki and books readers as they were before they were made fast (2026-12-01), kept verbatim as the
reference that ``test_readers_fast.py`` compares the fast ones with: the same documents, texts, ids, metadata
and counts. Only the class names are new; nothing here is used outside the tests."""

from __future__ import annotations

import codecs
import logging
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import mwparserfromhell
from lxml import etree
from mwparserfromhell.nodes import Comment, Heading, Template

from data_pipelines.document import Document
from data_pipelines.sources.base import (
    STREAM_ERRORS,
    compression_of,
    decode_utf8,
    file_label,
    read_text_file,
    stream_error_reason,
)
from data_pipelines.sources.books import BooksReader, book_stem
from data_pipelines.sources.wiki import WikiReader, _child_text, _local
from data_pipelines.sources.wikitext import (
    _BEHAVIOUR_SWITCH_RE,
    _CODE_SLOT,
    _INTERLANG_RE,
    CATEGORY_PREFIXES,
    CODE_TAGS,
    DROP_TAGS,
    MATH_TAGS,
    MEDIA_PREFIXES,
    _link_prefix,
    split_sections,
    strip_quotes,
)
from data_pipelines.sources.wikitext import parse as parse_wikitext
from data_pipelines.stats import StageStats

log = logging.getLogger(__name__)
parse = parse_wikitext


# ------------------------------------------------------------------------------------ wikitext (before)


def is_disambiguation(code: mwparserfromhell.wikicode.Wikicode, templates: Iterable[str]) -> bool:
    """True for a page carrying a disambiguation template (or ``__DISAMBIG__``)."""
    names = {t.strip().lower() for t in templates}
    if "__DISAMBIG__" in str(code):
        return True
    for tpl in code.filter_templates(recursive=False):
        name = str(tpl.name).strip().lower().replace("_", " ")
        if name in names or name.endswith(" disambiguation"):
            return True
    return False


def _remove(code: mwparserfromhell.wikicode.Wikicode, node: object) -> None:
    try:
        code.remove(node)
    except ValueError:  # already gone with a removed parent
        pass


def wikitext_to_text(
    code: str | mwparserfromhell.wikicode.Wikicode,
    media_prefixes: Iterable[str] = MEDIA_PREFIXES,
    category_prefixes: Iterable[str] = CATEGORY_PREFIXES,
    *,
    drop_sections: Iterable[str] = (),
    keep_math: bool = False,
    keep_code: bool = False,
    failed_sections: list[str] | None = None,
) -> str:
    """Plain text of a page's wikitext (see the module docstring for what is kept).

    ``drop_sections``: heading titles (case-insensitive) whose section, subsections included, is left out.
    ``failed_sections``: gets the title of every section the parser rejected (left out of the text), so that the
    caller can count what was lost.
    """
    text = str(code)
    media = {p.lower() for p in media_prefixes}
    cats = {p.lower() for p in category_prefixes}
    drop = {t.strip().lower() for t in drop_sections}
    kept_tags = (MATH_TAGS if keep_math else frozenset()) | (CODE_TAGS if keep_code else frozenset())
    parts: list[str] = []
    code_blocks: list[str] = []  # kept code, put back after the whitespace clean-up (it keeps its indentation)
    dropping_below: int | None = None  # level of a dropped section's heading: deeper headings go with it
    for level, title, body in split_sections(text):
        if dropping_below is not None and level > dropping_below:
            continue
        dropping_below = None
        plain_title = _plain_title(title) if level else ""
        if level and plain_title.lower() in drop:
            dropping_below = level
            continue
        if plain_title:
            parts.append("\n" + plain_title + "\n")
        try:
            parts.append(_section_text(body, media, cats, kept_tags, code_blocks))
        except Exception as exc:  # noqa: BLE001 - the parser failing on one section must not cost the page
            log.debug("wikitext section %r left out: %s", title, exc)
            if failed_sections is not None:
                failed_sections.append(plain_title or "(lead)")
    text = _clean("\n".join(parts))
    if code_blocks:
        text = _CODE_SLOT.sub(lambda m: code_blocks[int(m.group(1))], text)
    return text


def _plain_title(title: str) -> str:
    try:
        code = parse(title)
    except Exception:  # noqa: BLE001 - a heading the parser rejects stays as written
        return strip_quotes(title).strip()
    for node in code.filter(recursive=True, forcetype=(Template, Comment)):
        _remove(code, node)
    return strip_quotes(code.strip_code()).strip()


def _section_text(
    body: str, media: set[str], cats: set[str], kept_tags: frozenset[str], code_blocks: list[str]
) -> str:
    code = parse(body)
    for node in code.filter(recursive=True, forcetype=(Template, Comment)):
        _remove(code, node)
    for tag in code.filter_tags(recursive=True):
        name = str(tag.tag).strip().lower()
        if name in kept_tags:  # math is invisible to strip_code, code is kept as written: its source text
            content = str(tag.contents).strip("\n")
            if name in CODE_TAGS:
                code_blocks.append(content)
                content = f"\ue000{len(code_blocks) - 1}\ue001"
            try:
                code.replace(tag, "\n" + content + "\n")
            except ValueError:  # inside a node already replaced
                pass
        elif name in DROP_TAGS:
            _remove(code, tag)
    for link in code.filter_wikilinks(recursive=True):
        title = str(link.title)
        prefix = _link_prefix(title)
        if prefix in media or prefix in cats:
            _remove(code, link)
        elif prefix and not title.strip().startswith(":") and _INTERLANG_RE.match(prefix):
            _remove(code, link)  # [[de:Python]]: an interlanguage link, not text
    for heading in code.filter(recursive=False, forcetype=Heading):  # a heading the line pattern missed
        code.replace(heading, "\n" + heading.title.strip_code().strip() + "\n")
    text = code.strip_code(normalize=True, collapse=True)
    return "\n".join(strip_quotes(line) for line in text.split("\n"))


def _clean(text: str) -> str:
    text = _BEHAVIOUR_SWITCH_RE.sub("", text)
    out: list[str] = []
    for line in text.split("\n"):
        line = re.sub(r"[ \t]+", " ", line).strip()
        if line in {"", "*", "#", ":", ";"}:  # empty, or a list marker whose item was all template
            if out and out[-1] != "":
                out.append("")
            continue
        out.append(line)
    return "\n".join(out).strip()


# ------------------------------------------------------------------------------------ books (before)

HEADER_END = re.compile(
    r"^\s*(\*{3}\s*START OF (THE|THIS) PROJECT GUTENBERG"
    r"|\*{3}\s*START OF THE COPYRIGHTED PROJECT GUTENBERG"
    r"|\*END\*?\s*THE SMALL PRINT"
    r"|\*{3}START\*{0,3}OF THE PROJECT GUTENBERG)",
    re.IGNORECASE,
)
FOOTER_START = re.compile(
    r"^\s*(\*{3}\s*END OF (THE|THIS) PROJECT GUTENBERG"
    r"|\*{3}\s*END OF THE COPYRIGHTED PROJECT GUTENBERG"
    r"|End of (the |this )?Project Gutenberg"
    r"|End of Project Gutenberg's)",
    re.IGNORECASE,
)
BOOK_ID = re.compile(r"\b(?:e-?book|etext)\s*#\s*(\d+)", re.IGNORECASE)
HEADER_FIELD = re.compile(
    r"^(Title|Author|Language|Release Date|Character set encoding)\s*:\s*(.+?)\s*$", re.IGNORECASE)
PRODUCED_BY = re.compile(
    r"^\s*(Produced by|E-?text prepared by|This e-?(text|book) was (prepared|produced) by|Transcribed (from|by)"
    r"|Updated editions will replace|Distributed Proofread)",
    re.IGNORECASE,
)
CONTENTS = re.compile(r"^\s*(table of )?contents\.?\s*:?\s*$", re.IGNORECASE)


@dataclass
class Book:
    text: str
    gutenberg: bool
    header: dict[str, str] = field(default_factory=dict)
    book_id: str = ""


def parse_header(lines: list[str]) -> tuple[dict[str, str], str]:
    """``Title``/``Author``/``Language``/... fields and the ``EBook #NNN`` id from the licence header."""
    fields: dict[str, str] = {}
    book_id = ""
    for line in lines:
        m = HEADER_FIELD.match(line)
        if m and m.group(1).lower() not in fields:
            fields[m.group(1).lower()] = m.group(2)
        if not book_id:
            idm = BOOK_ID.search(line)
            if idm:
                book_id = idm.group(1)
    return fields, book_id


def split_gutenberg(text: str, header_search_lines: int = 800) -> Book:
    """Cut the licence header and footer. A text without a START marker is returned as it is."""
    lines = text.split("\n")
    start = None
    for i, line in enumerate(lines[:header_search_lines]):
        if HEADER_END.match(line):
            start = i  # the last marker within the header wins (old texts repeat them)
    if start is None:
        return Book(text=text, gutenberg=False)
    fields, book_id = parse_header(lines[:start + 1])
    end = len(lines)
    for i in range(start + 1, len(lines)):
        if FOOTER_START.match(lines[i]):
            end = i
            break
    if not book_id:  # the newer footer repeats it
        _, book_id = parse_header(lines[end:end + 40])
    body = lines[start + 1:end]
    return Book(text="\n".join(body), gutenberg=True, header=fields, book_id=book_id)


def _paragraphs(lines: list[str]) -> list[list[str]]:
    paras: list[list[str]] = []
    cur: list[str] = []
    for line in lines:
        if line.strip():
            cur.append(line.rstrip())
        elif cur:
            paras.append(cur)
            cur = []
    if cur:
        paras.append(cur)
    return paras


def _norm(line: str) -> str:
    return re.sub(r"[\W_]+", " ", line).strip().lower()


def strip_front_matter(paras: list[list[str]], search: int = 12) -> list[list[str]]:
    """Drop ``Produced by ...`` credit paragraphs and a table of contents near the start of the body.

    The table of contents runs from a ``CONTENTS`` heading to the paragraph where its first entry appears
    again as the heading of the body (the usual Gutenberg layout); without such a repeat it ends at the
    first paragraph of prose (a line of 60+ characters); with neither, nothing is removed.
    """
    out = [p for i, p in enumerate(paras) if not (i < search and PRODUCED_BY.match(p[0]))]
    for i, para in enumerate(out[: search * 2]):
        if not CONTENTS.match(para[0]):
            continue
        if len(para) > 1:
            first, j = _norm(para[1]), i + 1
        elif i + 1 < len(out):
            first, j = _norm(out[i + 1][0]), i + 2
        else:
            return out[:i]
        for j in range(j, len(out)):
            head = _norm(out[j][0])
            repeat = bool(first and head) and (head.startswith(first) or first.startswith(head))
            if repeat or any(len(line.strip()) >= 60 for line in out[j]):
                return out[:i] + out[j:]
        return out  # no recognisable end: better a table of contents left in than a book cut away
    return out


def _join_wrapped(lines: list[str]) -> str:
    """Join wrapped lines with spaces; a line broken after a hyphen (``non-`` / ``existing``) joins
    without one, keeping the hyphen (Gutenberg transcriptions do not hyphenate words at line ends)."""
    out = lines[0].strip()
    for line in lines[1:]:
        line = line.strip()
        if out.endswith("-") and not out.endswith("--") and len(out) > 1 and out[-2].isalpha():
            out += line
        else:
            out += " " + line
    return out


def rejoin(paras: list[list[str]]) -> str:
    """Join hard-wrapped prose lines into one line per paragraph; keep verse, lists and tables as lined.

    A paragraph is wrapped prose when every line but the last reaches at least 55% of the book's typical
    line width (its 90th-percentile line length); verse and tables have short or ragged lines and keep
    their line breaks.
    """
    lengths = sorted(len(line) for p in paras for line in p)
    width = lengths[int(0.9 * (len(lengths) - 1))] if lengths else 0
    out: list[str] = []
    for p in paras:
        if len(p) > 1 and width and all(len(line) >= 0.55 * width for line in p[:-1]):
            out.append(_join_wrapped(p))
        else:
            out.append("\n".join(p))
    return "\n\n".join(out)


def clean_book(text: str, rejoin_lines: bool = True) -> Book:
    """The full book treatment: licence cut, front matter, rejoined paragraphs (Gutenberg books only)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").lstrip("\ufeff")
    book = split_gutenberg(text)
    if not book.gutenberg:
        book.text = text.strip()
        return book
    paras = strip_front_matter(_paragraphs(book.text.split("\n")))
    book.text = rejoin(paras) if rejoin_lines else "\n\n".join("\n".join(p) for p in paras)
    return book


def _declared_codec(data: bytes) -> str | None:
    head = data[:8192].decode("ascii", errors="ignore")
    for line in head.splitlines():
        m = HEADER_FIELD.match(line)
        if m and m.group(1).lower() == "character set encoding":
            try:
                return codecs.lookup(m.group(2).strip()).name
            except LookupError:
                return None
    return None


class ReferenceWikiReader(WikiReader):
    """``WikiReader`` with the previous page handling (the whole page parsed for the disambiguation check)."""

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
            code = parse_wikitext(text)
            if is_disambiguation(code, self.options["disambiguation_templates"]):
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


class ReferenceBooksReader(BooksReader):
    """``BooksReader`` with the previous ``read`` and ``clean_book``."""

    def read(self, path: str, stats: StageStats) -> Iterator[Document]:
        try:
            data, size, _ = read_text_file(path, self.max_record_bytes)
        except STREAM_ERRORS as exc:
            reason = stream_error_reason(exc, compression_of(path), "book")
            log.warning("source %s: %s: %s", self.source, path, exc)
            self.skip(stats, reason, where=path)
            return
        if data is None:
            self.skip(stats, "record_too_large", size, path)
            return
        if b"\x00" in data[:8192]:
            self.skip(stats, "binary", size, path)
            return
        text = self._decode(data, stats)
        if text is None:
            self.skip(stats, "invalid_utf8", size, path)
            return
        book = clean_book(text, rejoin_lines=bool(self.options["rejoin_lines"]))
        book_id = book.book_id or book_stem(path)
        meta: dict[str, Any] = {"file": file_label(path), "book_id": book_id, "gutenberg": book.gutenberg}
        for key in ("title", "author", "language"):
            if key in book.header:
                meta[key] = book.header[key]
        doc = self.emit(stats, f"{self.source}:{book_id}", book.text, size, meta)
        if doc is not None:
            yield doc

    def _decode(self, data: bytes, stats: StageStats) -> str | None:
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            pass
        codec = _declared_codec(data)
        if codec and codec != "utf-8":
            return data.decode(codec, errors="replace")
        return decode_utf8(data, stats, self.invalid_utf8)
