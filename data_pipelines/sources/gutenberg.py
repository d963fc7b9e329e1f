"""Project Gutenberg plain text: header/footer stripping, front matter, hard-wrap rejoining.

The marker lists follow the ones collected by the ``gutenberg`` package (c-w/gutenberg,
``strip_headers``), restricted to the explicit licence markers so that a sentence in the body never ends
the book: the current ``*** START OF THE PROJECT GUTENBERG EBOOK <title> ***`` / ``*** END OF ...`` pair,
the 1990s ``*END*THE SMALL PRINT!`` header end, ``THIS`` instead of ``THE``, and the ``End of the Project
Gutenberg EBook of ...`` footer line. No maintained package does this without downloading the catalogue,
hence these few regular expressions.
"""

from __future__ import annotations

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
