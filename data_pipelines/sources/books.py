"""Plain-text books, one document per file; Project Gutenberg files get the licence/front-matter treatment.

A book file is read whole (it is one document) but never beyond ``max_record_bytes``: a larger file is
skipped as ``record_too_large`` after being drained in bounded chunks. Encoding: UTF-8; a Gutenberg file
that declares ``Character set encoding: ISO-8859-1`` (older releases) is decoded with that codec.
"""

from __future__ import annotations

import codecs
import logging
import os
import re
from typing import Any, ClassVar, Iterator

from data_pipelines.document import Document
from data_pipelines.sources.base import (
    STREAM_ERRORS,
    SourceReader,
    compression_of,
    decode_utf8,
    file_label,
    read_text_file,
    stream_error_reason,
)
from data_pipelines.sources.gutenberg import HEADER_FIELD, clean_book
from data_pipelines.stats import StageStats

log = logging.getLogger(__name__)

_COMPRESSED_EXT = re.compile(r"(\.(txt|text|utf-?8))?(\.(gz|bz2|xz))?$", re.IGNORECASE)


def book_stem(path: str) -> str:
    """``pg1342.txt.gz`` -> ``pg1342``."""
    return _COMPRESSED_EXT.sub("", os.path.basename(path)) or os.path.basename(path)


_NON_ASCII = bytes(range(128, 256))
_LINE_BREAKS = ("\n", "\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e")  # str.splitlines' breaks in ASCII text
_CHARSET_FIELD = b"character set encoding"


def _declared_codec(data: bytes) -> str | None:
    """The codec a Gutenberg header declares in its first 8 KiB (``Character set encoding: ...``), else ``None``.

    As matching ``HEADER_FIELD`` on every line of the head decoded as ASCII (non-ASCII bytes dropped), but only
    the lines that hold the field's name are matched: the first such line that is that field decides."""
    head = data[:8192]
    if not head.isascii():
        head = head.translate(None, _NON_ASCII)  # = decode("ascii", errors="ignore")
    low = head.lower()
    at = 0
    text, breaks = "", ()
    while (k := low.find(_CHARSET_FIELD, at)) >= 0:
        if not text:
            text = head.decode("ascii")
            breaks = tuple(c for c in _LINE_BREAKS if c in text)
        start = max((text.rfind(c, 0, k) for c in breaks), default=-1) + 1
        end = min((e for c in breaks if (e := text.find(c, k)) >= 0), default=len(text))
        m = HEADER_FIELD.match(text[start:end])
        if m and m.group(1).lower() == "character set encoding":
            try:
                return codecs.lookup(m.group(2).strip()).name
            except LookupError:
                return None
        at = end
    return None


class BooksReader(SourceReader):
    """``kind: books``. Options: ``rejoin_lines`` (join hard-wrapped prose of Gutenberg books)."""

    kind: ClassVar[str] = "books"
    extensions: ClassVar[tuple[str, ...]] = (".txt", ".txt.gz", ".txt.bz2", ".txt.xz")
    OPTIONS: ClassVar[dict[str, Any]] = {"rejoin_lines": True}

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
