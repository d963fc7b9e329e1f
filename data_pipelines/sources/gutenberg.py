"""Project Gutenberg plain text: header/footer stripping, front matter, hard-wrap rejoining.

The marker lists follow the ones collected by the ``gutenberg`` package (c-w/gutenberg,
``strip_headers``), restricted to the explicit licence markers so that a sentence in the body never ends
the book: the current ``*** START OF THE PROJECT GUTENBERG EBOOK <title> ***`` / ``*** END OF ...`` pair,
the 1990s ``*END*THE SMALL PRINT!`` header end, ``THIS`` instead of ``THE``, and the ``End of the Project
Gutenberg EBook of ...`` footer line. No maintained package does this without downloading the catalogue,
hence these few regular expressions.

Speed (the reader's floor is decompress + decode + splitting the book into lines, ``python -m data_pipelines.bench``):
the book is split into lines once and every other pass runs in C (``map`` over the lines, ``str`` methods, numpy
over the line lengths). The licence markers are looked for only on the lines that hold the words every marker has
(``gutenberg``, ``mall pr``: found with ``str.find`` in the lower-cased text) instead of matching each of
thousands of lines; paragraphs are line ranges, and the book's text is one ``join`` of its kept lines and the
separators between them (:func:`assemble`). The output is the same as the line-by-line version
(``tests/pipeline/test_readers_fast.py`` checks it against that one).
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass, field

import numpy as np

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


def _header_lines(text: str, lines: list[str], limit: int) -> tuple[int, int] | None:
    """``(index, offset)`` of the last of the first ``limit`` lines that matches ``HEADER_END``: every alternative
    of it starts with ``*`` after the line's leading white space, so only such lines are tried."""
    best = None
    at = line = 0
    while (k := text.find("*", at)) >= 0:
        line += text.count("\n", at, k)
        if line >= limit:
            break
        start = text.rfind("\n", 0, k) + 1
        nl = text.find("\n", k)
        if (start == k or text[start:k].isspace()) and HEADER_END.match(lines[line]):
            best = (line, k)  # the last marker within the header wins (old texts repeat them)
        if nl < 0:
            break
        at = nl + 1
        line += 1
    return best


def _footer_line(text: str, lines: list[str], at: int) -> int | None:
    """The index of the first line from character offset ``at`` on that matches ``FOOTER_START``. The candidates
    are the lines with ``gutenberg`` in the ASCII-lower-cased Latin-1 or UTF-8 bytes (fast for any text; a newline
    byte is a newline character there), counted back from the end of the text."""
    try:
        low, pos = text.encode("latin-1").lower(), at  # one byte per character: offsets stay
    except UnicodeEncodeError:
        low, pos = text.encode("utf-8", "surrogatepass").lower(), len(text[:at].encode("utf-8", "surrogatepass"))
    last = len(lines) - 1
    while (k := low.find(_FOOTER_WORD, pos)) >= 0:
        index = last - low.count(b"\n", k)
        if FOOTER_START.match(lines[index]):
            return index
        pos = low.find(b"\n", k) + 1
        if pos == 0:
            return None
    return None


def _split(text: str, header_search_lines: int = 800) -> tuple[Book, list[str]]:
    """:func:`split_gutenberg` with the body as its lines (and no body text)."""
    lines = text.split("\n")
    header = _header_lines(text, lines, header_search_lines)
    if header is None:
        return Book(text=text, gutenberg=False), lines
    start, k = header
    fields, book_id = parse_header(lines[:start + 1])
    nl = text.find("\n", k)
    end = _footer_line(text, lines, nl + 1) if nl >= 0 else None
    if end is None:
        end = len(lines)
    if not book_id:  # the newer footer repeats it
        _, book_id = parse_header(lines[end:end + 40])
    return Book(text="", gutenberg=True, header=fields, book_id=book_id), lines[start + 1:end]


def split_gutenberg(text: str, header_search_lines: int = 800) -> Book:
    """Cut the licence header and footer. A text without a START marker is returned as it is."""
    book, body = _split(text, header_search_lines)
    if book.gutenberg:
        book.text = "\n".join(body)
    return book


def _layout(lines: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The lengths of right-stripped ``lines`` and the ``[start, end)`` line ranges of their paragraphs (runs of
    non-blank lines; a blank line is empty)."""
    lengths = np.fromiter(map(len, lines), dtype=np.int64, count=len(lines))
    filled = np.zeros(len(lines) + 2, dtype=np.int8)
    filled[1:-1] = lengths > 0
    edges = filled[1:] - filled[:-1]
    return lengths, np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)


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


def assemble(lines: list[str], lengths: np.ndarray, starts: np.ndarray, ends: np.ndarray, kept: list[int],
             rejoin_lines: bool = True) -> str:
    """The text of the ``kept`` paragraphs of right-stripped ``lines`` (see :func:`_layout`), a blank line
    between paragraphs; with ``rejoin_lines``, hard-wrapped prose is joined into one line per paragraph while
    verse, lists and tables keep their line breaks.

    A paragraph is wrapped prose when every line but the last reaches at least 55% of the book's typical
    line width (the 90th-percentile length, the lower one by index, of the kept lines); verse and tables have
    short or ragged lines. Its lines are stripped and joined by spaces (:func:`_join_wrapped` where a line but
    the last ends in ``-``).

    The whole book is laid out at once: the kept lines as one array, the separator after each of them (``" "``
    in wrapped prose, ``"\\n"`` in other paragraphs, ``"\\n\\n"`` after a paragraph's last line) as another, and
    one ``join`` of both; Python runs per paragraph only where a line ends in ``-``."""
    if not kept:
        return ""
    kept_at = np.array(kept, dtype=np.int64)
    first_line, n_lines = starts[kept_at], ends[kept_at] - starts[kept_at]
    first = np.cumsum(n_lines) - n_lines  # where each paragraph starts among the kept lines
    last = first + n_lines - 1
    total = int(n_lines.sum())
    rows = np.repeat(first_line - first, n_lines) + np.arange(total)  # the kept lines' indices in ``lines``
    pieces = np.array(lines, dtype=object)[rows]
    seps = np.full(total, "\n", dtype=object)
    wrapped = None
    if rejoin_lines:
        inner = lengths[rows]
        width = int(np.partition(inner, (k := int(0.9 * (total - 1))))[k])
        inner[last] = np.iinfo(np.int64).max  # the last line may be short
        wrapped = (n_lines > 1) & (np.minimum.reduceat(inner, first) >= 0.55 * width)
        if wrapped.any():
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
    book, body = _split(text)
    if not book.gutenberg:
        book.text = text.strip()
        return book
    stripped = list(map(str.rstrip, body))
    lengths, starts, ends = _layout(stripped)
    kept = strip_front_matter(stripped, starts, ends)
    book.text = assemble(stripped, lengths, starts, ends, kept, rejoin_lines)
    return book
