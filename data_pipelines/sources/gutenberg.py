"""Project Gutenberg plain text: header/footer stripping, front matter, hard-wrap rejoining.

The marker lists follow the ones collected by the ``gutenberg`` package (c-w/gutenberg,
``strip_headers``), restricted to the explicit licence markers so that a sentence in the body never ends
the book: the current ``*** START OF THE PROJECT GUTENBERG EBOOK <title> ***`` / ``*** END OF ...`` pair,
the 1990s ``*END*THE SMALL PRINT!`` header end, ``THIS`` instead of ``THE``, and the ``End of the Project
Gutenberg EBook of ...`` footer line. No maintained package does this without downloading the catalogue,
hence these few regular expressions.

Speed (the reader's floor is decompress + decode + splitting the book into lines, ``python -m data_pipelines.bench``):
the book is split into lines once and every other pass runs in C (``map`` over the lines, ``str`` methods, one
``re.split``). The licence markers are looked for only on the lines that hold the words every marker has
(``gutenberg``, ``mall pr``: found with ``str.find`` in the lower-cased text) instead of matching each of
thousands of lines, and a paragraph is a string of its lines, joined in one call. The output is the same as
the line-by-line version (``tests/pipeline/test_readers_fast.py`` checks it against that one).
"""

from __future__ import annotations

import bisect
import operator
import re
from dataclasses import dataclass, field

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
_PARA_BREAK = re.compile(r"\n\n+")


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


def _paragraphs(stripped: list[str]) -> list[str]:
    """The paragraphs (runs of non-blank lines) of right-stripped lines, each as its lines joined by newlines."""
    joined = "\n".join(stripped).strip("\n")  # a blank line is empty
    return _PARA_BREAK.split(joined) if joined else []


def _first_line(para: str) -> str:
    return para.partition("\n")[0]


def _norm(line: str) -> str:
    return re.sub(r"[\W_]+", " ", line).strip().lower()


def strip_front_matter(paras: list[str], search: int = 12) -> list[str]:
    """Drop ``Produced by ...`` credit paragraphs and a table of contents near the start of the body.

    The table of contents runs from a ``CONTENTS`` heading to the paragraph where its first entry appears
    again as the heading of the body (the usual Gutenberg layout); without such a repeat it ends at the
    first paragraph of prose (a line of 60+ characters); with neither, nothing is removed.
    """
    out = [p for p in paras[:search] if not PRODUCED_BY.match(_first_line(p))] + paras[search:]
    for i, para in enumerate(out[: search * 2]):
        if not CONTENTS.match(_first_line(para)):
            continue
        lines = para.split("\n")
        if len(lines) > 1:
            first, j = _norm(lines[1]), i + 1
        elif i + 1 < len(out):
            first, j = _norm(_first_line(out[i + 1])), i + 2
        else:
            return out[:i]
        for j in range(j, len(out)):
            head = _norm(_first_line(out[j]))
            repeat = bool(first and head) and (head.startswith(first) or first.startswith(head))
            if repeat or (len(out[j]) >= 60 and any(len(line.strip()) >= 60 for line in out[j].split("\n"))):
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


def _percentile_length(paras: list[str], lines: list[str] | None = None, q: float = 0.9) -> int:
    """The ``q`` quantile (the lower one, by index) of the lengths of all lines of ``paras``; 0 without lines.
    ``lines``: the lines ``paras`` were made of, blank ones empty (their lengths, less the zeros, are the same)."""
    if lines is None:
        lengths = sorted(map(len, "\n".join(paras).split("\n"))) if paras else []
    else:
        lengths = sorted(map(len, lines))
        del lengths[: bisect.bisect_right(lengths, 0)]  # the blank lines
    return lengths[int(q * (len(lengths) - 1))] if lengths else 0


def rejoin(paras: list[str], lines: list[str] | None = None) -> str:
    """Join hard-wrapped prose lines into one line per paragraph; keep verse, lists and tables as lined.

    A paragraph is wrapped prose when every line but the last reaches at least 55% of the book's typical
    line width (its 90th-percentile line length); verse and tables have short or ragged lines and keep
    their line breaks. ``lines``: see :func:`_percentile_length`.
    """
    width = _percentile_length(paras, lines)
    if not width:
        return "\n\n".join(paras)
    short = 0.55 * width
    out: list[str] = []
    append = out.append
    for p in paras:
        if "\n" in p:
            rows = p.split("\n")
            last = rows.pop()  # the last line may be short
            if min(map(len, rows)) >= short:
                rows.append(last)
                # no line but the last ends in "-": every join is a space
                append(" ".join(map(str.strip, rows)) if "-\n" not in p else _join_wrapped(rows))
                continue
        append(p)
    return "\n\n".join(out)


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
    paras = _paragraphs(stripped)
    kept = strip_front_matter(paras)
    if not rejoin_lines:
        book.text = "\n\n".join(kept)
    else:  # the line lengths from the lines at hand unless the front matter took some of them
        book.text = rejoin(kept, stripped if len(kept) == len(paras) else None)
    return book
