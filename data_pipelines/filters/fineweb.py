"""FineWeb quality rules (Penedo et al. 2024; datatrove's ``FineWebQualityFilter``), reference defaults.

Ratios are over lines with content: the normaliser leaves one blank line between paragraphs, and counting
those as (short, unpunctuated) lines would make the rules depend on layout. ``new_line_ratio`` is line
breaks between content lines per word, which equals the reference's newline count for single-spaced text.
"""

from __future__ import annotations

from data_pipelines.document import Document
from data_pipelines.filters.base import DocumentFilter, invalid
from data_pipelines.filters.text import find_duplicates, non_empty_lines
from data_pipelines.native import compiled as _native  # None: the Python counts below
from data_pipelines.stats import StageStats

STOP_CHARS = [".", "'", '"', "!", "?"]


class FineWebFilter(DocumentFilter):
    """Drops ``fineweb_line_punct_ratio``, ``fineweb_short_line_ratio``, ``fineweb_char_dup_ratio``,
    ``fineweb_list_ratio``; ``null`` disables a rule; a text with no line of content is ``fineweb_empty``."""

    name = "fineweb"

    def __init__(
        self,
        *,
        line_punct_thr: float | None = 0.12,
        line_punct_exclude_zero: bool = False,
        stop_chars: list[str] | None = None,
        short_line_thr: float | None = 0.67,
        short_line_length: int = 30,
        char_duplicates_ratio: float | None = 0.01,
        new_line_ratio: float | None = 0.3,
    ):
        for key in ("line_punct_thr", "short_line_thr", "char_duplicates_ratio"):
            value = locals()[key]
            if value is not None and not 0.0 <= value <= 1.0:
                raise invalid(key, value, "a fraction between 0 and 1, or null to disable")
        if short_line_length < 0:
            raise invalid("short_line_length", short_line_length, "a non-negative number of characters")
        if new_line_ratio is not None and new_line_ratio < 0:
            raise invalid("new_line_ratio", new_line_ratio, "a non-negative ratio or null to disable")
        self.line_punct_thr = line_punct_thr
        self.line_punct_exclude_zero = line_punct_exclude_zero
        self.stop_chars = list(STOP_CHARS if stop_chars is None else stop_chars)
        self.short_line_thr = short_line_thr
        self.short_line_length = short_line_length
        self.char_duplicates_ratio = char_duplicates_ratio
        self.new_line_ratio = new_line_ratio
        self._stop_chars = tuple(self.stop_chars)

    def apply(self, doc: Document, stats: StageStats) -> str | None:
        text = doc.text
        if _native is not None and self.short_line_length < 2**62:  # the same counts in one compiled pass
            n_lines, punct, short, content_chars, dup_chars, n_words = _native.fineweb_counts(
                text, self._stop_chars, self.short_line_length)
        else:
            lines = [line.strip() for line in non_empty_lines(text)]
            n_lines = len(lines)
            punct = sum(1 for line in lines if line.endswith(self._stop_chars))
            short = sum(1 for line in lines if len(line) <= self.short_line_length)
            content_chars, dup_chars = sum(map(len, lines)), find_duplicates(lines)[1]
            n_words = len(text.split())
        if not n_lines:  # as datatrove: a text with no line of content is dropped
            return "fineweb_empty"
        if self.line_punct_thr is not None:
            ratio = punct / n_lines
            if ratio <= self.line_punct_thr and not (ratio == 0 and self.line_punct_exclude_zero):
                return "fineweb_line_punct_ratio"
        if self.short_line_thr is not None and short / n_lines >= self.short_line_thr:
            return "fineweb_short_line_ratio"
        if self.char_duplicates_ratio is not None and dup_chars / content_chars >= self.char_duplicates_ratio:
            return "fineweb_char_dup_ratio"
        if self.new_line_ratio is not None and (n_lines - 1) / n_words > self.new_line_ratio:
            return "fineweb_list_ratio"
        return None
