"""Unicode and whitespace normalisation: the first block of every text pipeline.

Later rules (duplicate lines, n-gram repetition, exact dedup hashes) compare strings, so the same text must
always be spelled the same way: one Unicode normal form, one kind of line break, no invisible control
characters, no trailing blanks and no runs of blank lines.
"""

from __future__ import annotations

import re
import unicodedata

from data_pipelines.document import Document
from data_pipelines.filters.base import DocumentFilter, invalid
from data_pipelines.native import compiled as _native  # None: the substring tests below
from data_pipelines.stats import StageStats

_FORMS = ("NFC", "NFD", "NFKC", "NFKD")

# Every line-break convention (CRLF, CR, vertical tab, form feed, NEL, Unicode line/paragraph separators)
# becomes "\n".
_LINE_BREAKS = re.compile(r"\r\n|[\r\x0b\x0c\x85\u2028\u2029]")
# C0/C1 controls except \t and \n, DEL, lone surrogates (left by lenient decoders; they cannot be written as
# UTF-8), and the invisible zero-width space, word joiner and byte-order mark.
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x84\x86-\x9f\ud800-\udfff\u200b\u2060\ufeff]")
# Any single non-tab space character other than " " (NBSP, thin space, ideographic space...), or any run of
# two or more horizontal whitespace characters.
_SPACE_RUNS = re.compile(r"[^\S\n\t ]|[^\S\n]{2,}")
_LEADING = re.compile(r"(?m)^[^\S\n]+")
_TRAILING = re.compile(r"[^\S\n]+(?=\n|\Z)")
# Every character a step above may remove or replace, except " ", "\t" and "\n" (those are judged by their
# neighbours in :meth:`Normalize._unchanged`): the controls, the line breaks, and every other whitespace
# character (``\s`` of ``re`` is ``str.isspace``; no whitespace character lies above U+3000).
_SUSPECT = re.compile("[" + re.escape("".join(sorted(
    {chr(c) for c in range(0x3001) if chr(c).isspace()} - {" ", "\t", "\n"}
    | set("\r\x0b\x0c\x85\u2028\u2029\u200b\u2060\ufeff")
    | {chr(c) for c in (*range(0x00, 0x09), *range(0x0E, 0x20), *range(0x7F, 0x85), *range(0x86, 0xA0))}
))) + "\ud800-\udfff]")


class Normalize(DocumentFilter):
    """Unicode normal form, line breaks, control characters and whitespace.

    Each kind of change is counted once per changed document: ``normalize_unicode``,
    ``normalize_control_chars``, ``normalize_whitespace``. A document left empty is dropped as
    ``normalize_empty``. For code, keep indentation with ``collapse_spaces: false, strip_leading: false``.
    """

    name = "normalize"

    def __init__(
        self,
        *,
        form: str | None = "NFC",
        remove_control: bool = True,
        collapse_spaces: bool = True,
        strip_leading: bool = True,
        strip_trailing: bool = True,
        max_newlines: int | None = 2,
    ):
        if form is not None and form not in _FORMS:
            raise invalid("form", form, f"one of {', '.join(_FORMS)} or null")
        if max_newlines is not None and max_newlines < 1:
            raise invalid("max_newlines", max_newlines, "an integer >= 1 or null")
        self.form = form
        self.remove_control = remove_control
        self.collapse_spaces = collapse_spaces
        self.strip_leading = strip_leading
        self.strip_trailing = strip_trailing
        self.max_newlines = max_newlines
        self._newline_runs = re.compile(r"\n{%d,}" % (max_newlines + 1)) if max_newlines else None
        self._runs = "\n" * (max_newlines + 1) if max_newlines else ""

    def _unchanged(self, text: str) -> bool:
        """Whether every step below would leave ``text`` as it is, whatever the options (a sufficient test:
        one scan for suspect characters and a few substring searches instead of six regex passes). With no
        suspect character, the only whitespace is " ", "\t" and "\n", so a step can only act on two blanks in
        a row, a blank after or before a line break, a run of line breaks, or whitespace at either end."""
        if _native is not None:  # the same test in one compiled pass
            return _native.normalize_unchanged(text, len(self._runs))
        if not text or text[0].isspace() or text[-1].isspace() or _SUSPECT.search(text):
            return False
        if "  " in text or "\n " in text or " \n" in text or (self._newline_runs is not None and self._runs in text):
            return False
        return "\t" not in text or not ("\t\t" in text or " \t" in text or "\t " in text or "\n\t" in text
                                        or "\t\n" in text)

    def normalize(self, text: str, stats: StageStats | None = None) -> str:
        """The normalised text; ``stats`` (if given) counts which kinds of change happened."""
        if self.form is not None and not unicodedata.is_normalized(self.form, text):
            text = unicodedata.normalize(self.form, text)
            if stats is not None:
                stats.modify("normalize_unicode")
        if self._unchanged(text):
            return text
        if self.remove_control:
            cleaned = _CONTROL.sub("", text)
            if cleaned != text and stats is not None:
                stats.modify("normalize_control_chars")
            text = cleaned
        spaced = _LINE_BREAKS.sub("\n", text)
        if self.collapse_spaces:
            spaced = _SPACE_RUNS.sub(" ", spaced)
        if self.strip_leading:
            spaced = _LEADING.sub("", spaced)
        if self.strip_trailing:
            spaced = _TRAILING.sub("", spaced)
        if self._newline_runs is not None:
            spaced = self._newline_runs.sub("\n" * self.max_newlines, spaced)
        spaced = spaced.strip("\n")
        if self.strip_leading and self.strip_trailing:
            spaced = spaced.strip()
        if spaced != text and stats is not None:
            stats.modify("normalize_whitespace")
        return spaced

    def apply(self, doc: Document, stats: StageStats) -> str | None:
        doc.text = self.normalize(doc.text, stats)
        if not doc.text:
            return "normalize_empty"
        return None
