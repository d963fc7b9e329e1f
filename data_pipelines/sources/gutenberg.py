"""Project Gutenberg plain text: header/footer stripping, front matter, hard-wrap rejoining.

The marker lists follow the ones collected by the ``gutenberg`` package (c-w/gutenberg,
``strip_headers``), restricted to the explicit licence markers so that a sentence in the body never ends
the book: the current ``*** START OF THE PROJECT GUTENBERG EBOOK <title> ***`` / ``*** END OF ...`` pair,
the 1990s ``*END*THE SMALL PRINT!`` header end, ``THIS`` instead of ``THE``, and the ``End of the Project
Gutenberg EBook of ...`` footer line. No maintained package does this without downloading the catalogue,
hence these few regular expressions.

Speed (the reader's floor is decompress + decode + splitting the book into lines, ``python -m data_pipelines.bench``):
the licence markers are looked for only on the lines that hold what every marker has (a ``*`` at the start of a
header line; ``gutenberg`` in any ASCII case on a footer line) instead of matching each of thousands of lines. With
the compiled passes (``data_pipelines/_native.c``, built by the install) the body is never split: one pass finds
its lines and their right-stripped lengths, numpy marks the paragraphs and the wrapped ones, and one more pass
writes the kept paragraphs as the book's text (:func:`_assemble_compiled`). Without them the body is split once and
every other pass runs in C all the same (``map`` over the lines, ``str`` methods, numpy over the line lengths, one
``join``: :func:`assemble`). Both give what the line-by-line version gave (``tests/pipeline/test_readers_fast.py``
checks each against that one).
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass, field

import numpy as np

from data_pipelines.native import compiled as _native

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
HEADER_FIELD = re.compile(r"^(Title|Author|Language|Release Date|Character set encoding)\s*:\s*(.+?)\s*$", re.IGNORECASE)
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


# Every FOOTER_START alternative contains "gutenberg", which holds no letter that re.IGNORECASE also matches outside
# ASCII (only s, i and k have such twins), so a line the pattern matches has it in its ASCII-lower-cased bytes.
_FOOTER_WORD = b"gutenberg"


def parse_header(lines: list[str]) -> tuple[dict[str, str], str]:
    """``Title``/``Author``/``Language``/... fields and the ``EBook #NNN`` id from the licence header."""
    fields: dict[str, str] = {}
    for m in filter(None, map(HEADER_FIELD.match, filter(_has_colon, lines))):  # a field line has a colon
        if m.group(1).lower() not in fields:
            fields[m.group(1).lower()] = m.group(2)
    idm = next(filter(None, map(BOOK_ID.search, filter(_has_hash, lines))), None)  # and an id line a "#"
    return fields, idm.group(1) if idm else ""


_has_colon = operator.methodcaller("__contains__", ":")
_has_hash = operator.methodcaller("__contains__", "#")


def _line_end(text: str, at: int) -> int:
    """The offset of the newline ending the line at offset ``at`` (or the text's end)."""
    nl = text.find("\n", at)
    return len(text) if nl < 0 else nl


def _header_marker(text: str, limit: int) -> int | None:
    """The offset of the marker of the last of the first ``limit`` lines that matches ``HEADER_END``: every
    alternative of it starts with ``*`` after the line's leading white space, so only such lines are tried."""
    best = None
    at = line = 0
    while (k := text.find("*", at)) >= 0:
        line += text.count("\n", at, k)
        if line >= limit:
            break
        start = text.rfind("\n", 0, k) + 1
        nl = _line_end(text, k)
        if (start == k or text[start:k].isspace()) and HEADER_END.match(text[start:nl]):
            best = k  # the last marker within the header wins (old texts repeat them)
        at = nl + 1
        line += 1
    return best


def _footer_line(text: str, at: int) -> int | None:
    """The offset of the first line from offset ``at`` (a line's start) on that matches ``FOOTER_START``. The
    candidates are the lines with ``gutenberg`` in any ASCII case: found compiled where it is built, else in the
    ASCII-lower-cased Latin-1 or UTF-8 bytes (a newline byte is a newline character there)."""
    if _native is not None:
        while (k := _native.find_folded(text, _FOOTER_WORD, at)) >= 0:
            start = text.rfind("\n", 0, k) + 1
            nl = _line_end(text, k)
            if FOOTER_START.match(text[start:nl]):
                return start
            at = nl + 1
        return None
    try:
        data = text.encode("latin-1")  # one byte per character: offsets stay
        latin = True
    except UnicodeEncodeError:
        data, at, latin = text.encode("utf-8", "surrogatepass"), len(text[:at].encode("utf-8", "surrogatepass")), False
    low = data.lower()
    while (k := low.find(_FOOTER_WORD, at)) >= 0:
        start = low.rfind(b"\n", 0, k) + 1
        nl = low.find(b"\n", k)
        nl = len(low) if nl < 0 else nl
        line = text[start:nl] if latin else data[start:nl].decode("utf-8", "surrogatepass")
        if FOOTER_START.match(line):
            return start if latin else len(data[:start].decode("utf-8", "surrogatepass"))
        at = nl + 1
    return None


def _split(text: str, header_search_lines: int = 800) -> tuple[Book, int, int]:
    """:func:`split_gutenberg` with the body as its place ``[a, b)`` in ``text`` (its lines:
    ``text[a:b].split("\\n")``) and no body text."""
    k = _header_marker(text, header_search_lines)
    if k is None:
        return Book(text=text, gutenberg=False), 0, len(text)
    nl = _line_end(text, k)
    fields, book_id = parse_header(text[:nl].split("\n"))
    end = _footer_line(text, nl + 1) if nl < len(text) else None
    if end is None:
        return Book(text="", gutenberg=True, header=fields, book_id=book_id), min(nl + 1, len(text)), len(text)
    if not book_id:  # the newer footer repeats it
        _, book_id = parse_header(text[end:].split("\n", 40)[:40])
    return Book(text="", gutenberg=True, header=fields, book_id=book_id), nl + 1, max(nl + 1, end - 1)


def split_gutenberg(text: str, header_search_lines: int = 800) -> Book:
    """Cut the licence header and footer. A text without a START marker is returned as it is."""
    book, a, b = _split(text, header_search_lines)
    if book.gutenberg:
        book.text = text[a:b]
    return book


def _layout(lines: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The lengths of right-stripped ``lines`` and the ``[start, end)`` line ranges of their paragraphs."""
    lengths = np.fromiter(map(len, lines), dtype=np.int64, count=len(lines))
    return (lengths, *_paragraphs(lengths))


def _paragraphs(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ``[start, end)`` line ranges of the paragraphs (runs of non-blank lines) of right-stripped lines of
    these ``lengths`` (a blank line is empty)."""
    filled = np.zeros(len(lengths) + 2, dtype=np.int8)
    filled[1:-1] = lengths > 0
    edges = filled[1:] - filled[:-1]
    return np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)


class _Lines:
    """The right-stripped lines of ``text`` that :func:`_native.book_lines` found, made on demand: the front
    matter rules look at a few of them only (``lines[i]``, ``lines[i:j]``)."""

    def __init__(self, text: str, offsets: np.ndarray, lengths: np.ndarray):
        self.text, self.offsets, self.lengths = text, offsets, lengths

    def __getitem__(self, i: int | slice) -> str | list[str]:
        if isinstance(i, slice):
            return [self.text[a:a + n] for a, n in zip(self.offsets[i].tolist(), self.lengths[i].tolist())]
        a = int(self.offsets[i])
        return self.text[a:a + int(self.lengths[i])]


def _norm(line: str) -> str:
    return re.sub(r"[\W_]+", " ", line).strip().lower()


def strip_front_matter(lines: list[str], starts: np.ndarray, ends: np.ndarray, search: int = 12) -> list[int]:
    """The paragraphs (indices into ``starts``/``ends``, line ranges of ``lines``) left after dropping
    ``Produced by ...`` credit paragraphs and a table of contents near the start of the body.

    The table of contents runs from a ``CONTENTS`` heading to the paragraph where its first entry appears
    again as the heading of the body (the usual Gutenberg layout); without such a repeat it ends at the
    first paragraph of prose (a line of 60+ characters); with neither, nothing is removed.
    """
    starts, ends = starts.tolist(), ends.tolist()
    n = len(starts)
    out = [i for i in range(min(search, n)) if not PRODUCED_BY.match(lines[starts[i]])] + list(range(search, n))
    for at, i in enumerate(out[: search * 2]):
        if not CONTENTS.match(lines[starts[i]]):
            continue
        if ends[i] - starts[i] > 1:
            first, j = _norm(lines[starts[i] + 1]), at + 1
        elif at + 1 < len(out):
            first, j = _norm(lines[starts[out[at + 1]]]), at + 2
        else:
            return out[:at]
        for j in range(j, len(out)):
            rows = lines[starts[out[j]]:ends[out[j]]]
            head = _norm(rows[0])
            repeat = bool(first and head) and (head.startswith(first) or first.startswith(head))
            if repeat or (sum(map(len, rows)) + len(rows) - 1 >= 60 and any(len(r.strip()) >= 60 for r in rows)):
                return out[:at] + out[j:]
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


_LINE_END_DASH = re.compile(r"-\n")


def _wrapped(lengths: np.ndarray, first_line: np.ndarray, n_lines: np.ndarray) -> np.ndarray:
    """Which of the paragraphs (lines ``first_line[p]`` on, ``n_lines[p]`` of them, of right-stripped lines of
    these ``lengths``) are wrapped prose: every line but the last reaches 55% of the book's typical line width
    (the 90th-percentile length, the lower one by index, of the paragraphs' lines)."""
    first = np.cumsum(n_lines) - n_lines  # where each paragraph starts among the kept lines
    total = int(n_lines.sum())
    inner = lengths[np.repeat(first_line - first, n_lines) + np.arange(total)]
    width = int(np.partition(inner, (k := int(0.9 * (total - 1))))[k])
    inner[first + n_lines - 1] = np.iinfo(np.int64).max  # the last line may be short
    return (n_lines > 1) & (np.minimum.reduceat(inner, first) >= 0.55 * width)


def assemble(lines: list[str], lengths: np.ndarray, starts: np.ndarray, ends: np.ndarray, kept: list[int],
             rejoin_lines: bool = True) -> str:
    """The text of the ``kept`` paragraphs of right-stripped ``lines`` (see :func:`_layout`), a blank line
    between paragraphs; with ``rejoin_lines``, hard-wrapped prose (:func:`_wrapped`) is joined into one line per
    paragraph while verse, lists and tables keep their line breaks. A wrapped paragraph's lines are stripped and
    joined by spaces (:func:`_join_wrapped` where a line but the last ends in ``-``).

    The whole book is laid out at once: the kept lines as one array, the separator after each of them (``" "``
    in wrapped prose, ``"\\n"`` in other paragraphs, ``"\\n\\n"`` after a paragraph's last line) as another, and
    one ``join`` of both; Python runs per paragraph only where a line ends in ``-``. (:func:`_assemble_compiled`
    does the same with compiled passes over the text.)"""
    if not kept:
        return ""
    kept_at = np.array(kept, dtype=np.int64)
    first_line, n_lines = starts[kept_at], ends[kept_at] - starts[kept_at]
    first = np.cumsum(n_lines) - n_lines
    last = first + n_lines - 1
    total = int(n_lines.sum())
    rows = np.repeat(first_line - first, n_lines) + np.arange(total)  # the kept lines' indices in ``lines``
    pieces = np.array(lines, dtype=object)[rows]
    seps = np.full(total, "\n", dtype=object)
    wrapped = _wrapped(lengths, first_line, n_lines) if rejoin_lines else None
    if wrapped is not None and wrapped.any():
        at = np.flatnonzero(np.repeat(wrapped, n_lines))
        seps[at] = " "
        pieces[at] = list(map(str.lstrip, pieces[at].tolist()))
    else:
        wrapped = None
    seps[last] = "\n\n"
    seps[-1] = ""
    if wrapped is not None:
        _rejoin_hyphens(lines, lengths, rows, pieces, seps, first, last, wrapped)
    out = np.empty(2 * total, dtype=object)
    out[0::2], out[1::2] = pieces, seps
    return "".join(out.tolist())


def _assemble_compiled(text: str, a: int, b: int, rejoin_lines: bool) -> str:
    """:func:`_layout`, :func:`strip_front_matter` and :func:`assemble` of the lines of ``text[a:b]``, with the
    lines found and the book's text written by compiled passes over ``text`` (:mod:`data_pipelines._native`)."""
    offsets, lengths = (np.frombuffer(x, dtype=np.int64) for x in _native.book_lines(text, a, b))
    starts, ends = _paragraphs(lengths)
    kept = strip_front_matter(_Lines(text, offsets, lengths), starts, ends)
    if not kept:
        return ""
    kept_at = np.array(kept, dtype=np.int64)
    first_line, n_lines = starts[kept_at], ends[kept_at] - starts[kept_at]
    wrapped = _wrapped(lengths, first_line, n_lines) if rejoin_lines else np.zeros(len(kept), dtype=bool)
    return _native.book_join(text, offsets, lengths, first_line, n_lines, wrapped.view(np.uint8))


def _rejoin_hyphens(lines: list[str], lengths: np.ndarray, rows: np.ndarray, pieces: np.ndarray, seps: np.ndarray,
                    first: np.ndarray, last: np.ndarray, wrapped: np.ndarray) -> None:
    """Wrapped paragraphs with a line but the last ending in ``-`` become one :func:`_join_wrapped` piece."""
    text = "\n".join(lines)
    dashes = [m.start() for m in _LINE_END_DASH.finditer(text)]
    if not dashes:
        return
    ends = np.searchsorted(np.cumsum(lengths + 1) - 1, np.asarray(dashes) + 1)  # the lines that end in "-"
    at = np.searchsorted(rows, ends)
    at = at[(at < len(rows)) & (rows[np.minimum(at, len(rows) - 1)] == ends)]  # those of the kept lines
    para = np.searchsorted(first, at, side="right") - 1
    for p in np.unique(para[(at != last[para]) & wrapped[para]]).tolist():
        a, b = int(first[p]), int(last[p])
        pieces[a] = _join_wrapped([lines[r] for r in rows[a:b + 1].tolist()])
        pieces[a + 1:b + 1] = ""
        seps[a:b] = ""


def clean_book(text: str, rejoin_lines: bool = True) -> Book:
    """The full book treatment: licence cut, front matter, rejoined paragraphs (Gutenberg books only)."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = text.lstrip("\ufeff")
    book, a, b = _split(text)
    if not book.gutenberg:
        book.text = text.strip()
        return book
    if _native is not None:
        book.text = _assemble_compiled(text, a, b, rejoin_lines)
        return book
    stripped = list(map(str.rstrip, text[a:b].split("\n")))
    lengths, starts, ends = _layout(stripped)
    kept = strip_front_matter(stripped, starts, ends)
    book.text = assemble(stripped, lengths, starts, ends, kept, rejoin_lines)
    return book
