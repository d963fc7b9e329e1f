"""C4 line rules (Raffel et al. 2020, section 2.2; ``c4_utils.clean_page`` in tensorflow_datasets).

Lines are judged one by one and removed (counted per reason in ``stats.extra["c4_lines_removed"]`` and once
per changed document as ``stats.modify("c4_line_<reason>")``); a few patterns condemn the whole document.
The order of checks is the reference's: a "lorem ipsum" or "{" only condemns the page when it sits on a line
that survived the earlier line checks. Sentences are counted with a punctuation regex instead of nltk's
punkt (a download): abbreviations such as "Dr." count as sentence ends, which only matters near the minimum.
Unlike the reference, which joins kept lines with single newlines, a blank line between kept lines (a
paragraph break left by the normaliser) is kept: paragraph structure is useful to the model and to later rules.
"""

from __future__ import annotations

import re

from data_pipelines.document import Document
from data_pipelines.filters.base import DocumentFilter, add_extra, invalid
from data_pipelines.native import compiled as _native  # None: the Python line loop below
from data_pipelines.stats import StageStats

CITATION = re.compile(r"\[\d*\]|\[edit\]|\[citation needed\]", re.IGNORECASE)
END_PUNCTUATION = (".", "?", "!", '"', "'", "”", "’")
POLICY_SUBSTRINGS = [
    "terms of use",
    "privacy policy",
    "cookie policy",
    "uses cookies",
    "use of cookies",
    "use cookies",
]
# A sentence ends at a run of terminal marks (optionally closed by quotes/brackets) before a space or the end.
_SENTENCE_END = re.compile(r"[.!?]+[\"'”’)\]]*(?=\s|$)")


class C4Filter(DocumentFilter):
    """C4 rules; every switch and threshold configurable (``null`` disables a numeric rule).

    Document drops: ``c4_lorem_ipsum``, ``c4_curly_bracket``, ``c4_too_few_sentences``.
    Line removals: ``long_word``, ``no_terminal_punct``, ``too_few_words``, ``javascript``, ``policy``.
    """

    name = "c4"

    def __init__(
        self,
        *,
        remove_citations: bool = True,
        filter_no_terminal_punct: bool = True,
        min_num_sentences: int | None = 5,
        min_words_per_line: int | None = 3,
        max_word_length: int | None = 1000,
        filter_lorem_ipsum: bool = True,
        filter_javascript: bool = True,
        filter_curly_bracket: bool = True,
        filter_policy: bool = True,
        policy_substrings: list[str] | None = None,
    ):
        for key in ("min_num_sentences", "min_words_per_line", "max_word_length"):
            if locals()[key] is not None and locals()[key] < 0:
                raise invalid(key, locals()[key], "a non-negative integer or null to disable")
        self.remove_citations = remove_citations
        self.filter_no_terminal_punct = filter_no_terminal_punct
        self.min_num_sentences = min_num_sentences
        self.min_words_per_line = min_words_per_line
        self.max_word_length = max_word_length
        self.filter_lorem_ipsum = filter_lorem_ipsum
        self.filter_javascript = filter_javascript
        self.filter_curly_bracket = filter_curly_bracket
        self.filter_policy = filter_policy
        self.policy_substrings = [p.lower() for p in (POLICY_SUBSTRINGS if policy_substrings is None
                                                      else policy_substrings)]
        # the compiled line rules compare ASCII-lowered lines with up to 62 ASCII policy substrings, and take
        # thresholds as C integers; other settings use the Python loop
        fits = (len(self.policy_substrings) <= 62 and all(p.isascii() for p in self.policy_substrings)
                and all(v is None or v < 2**62 for v in (min_num_sentences, min_words_per_line, max_word_length)))
        self._policies = tuple(p.encode() for p in self.policy_substrings) if fits else None

    def _line_verdict(self, line: str) -> tuple[str, str]:
        """``(kind, reason)``: kind is "keep" (reason is the cleaned line), "line" (remove) or "doc" (drop)."""
        words = line.split()
        if (self.max_word_length is not None and len(line) > self.max_word_length
                and max(map(len, words), default=0) > self.max_word_length):  # a shorter line has no such word
            return "line", "long_word"
        if self.remove_citations and "[" in line:  # every citation pattern starts with "["
            line = CITATION.sub("", line).strip()
            if not line:
                return "line", "citation_only"
        if self.filter_no_terminal_punct and (not line.endswith(END_PUNCTUATION) or line.endswith("...")):
            return "line", "no_terminal_punct"
        if self.min_words_per_line is not None and len(words) < self.min_words_per_line:
            return "line", "too_few_words"
        lower = line.lower()
        if self.filter_lorem_ipsum and "lorem ipsum" in lower:
            return "doc", "c4_lorem_ipsum"
        if self.filter_javascript and "javascript" in lower:
            return "line", "javascript"
        if self.filter_curly_bracket and "{" in line:
            return "doc", "c4_curly_bracket"
        if self.filter_policy:
            for policy in self.policy_substrings:
                if policy in lower:
                    return "line", "policy"
        return "keep", line

    def apply(self, doc: Document, stats: StageStats) -> str | None:
        if _native is not None and self._policies is not None:
            judged = _native.c4_lines(
                doc.text, self.remove_citations, self.filter_no_terminal_punct,
                -1 if self.min_words_per_line is None else self.min_words_per_line,
                -1 if self.max_word_length is None else self.max_word_length, self.filter_lorem_ipsum,
                self.filter_javascript, self.filter_curly_bracket, self.filter_policy, self._policies,
                -1 if self.min_num_sentences is None else self.min_num_sentences)
            if judged is not None:  # else Unicode lower-casing or citations beyond Latin-1: below
                decision, text, removed, citations = judged
                if decision is not None:
                    return decision
                add_extra(stats, "c4_lines_removed", removed)
                for reason in sorted(removed):
                    stats.modify(f"c4_line_{reason}")
                if citations:
                    stats.modify("c4_citations_removed")
                if text is not None:
                    doc.text = text
                return None
        kept: list[str] = []
        removed: dict[str, int] = {}
        n_sentences = 0
        citations = False
        blank_before = False
        enough = self.min_num_sentences
        for raw in doc.text.split("\n"):
            line = raw.strip()
            if not line:
                blank_before = bool(kept)  # keep paragraph breaks between kept lines
                continue
            kind, result = self._line_verdict(line)
            if kind == "doc":
                return result
            if kind == "line":
                removed[result] = removed.get(result, 0) + 1
                continue
            citations |= result != line
            if enough is None or n_sentences < enough:  # past the minimum, the count decides nothing
                n_sentences += max(1, len(_SENTENCE_END.findall(result)))
            if blank_before:
                kept.append("")
                blank_before = False
            kept.append(result)
        if self.min_num_sentences is not None and n_sentences < self.min_num_sentences:
            return "c4_too_few_sentences"
        if not kept:
            return "c4_no_lines_left"
        add_extra(stats, "c4_lines_removed", removed)
        for reason in sorted(removed):
            stats.modify(f"c4_line_{reason}")
        if citations:
            stats.modify("c4_citations_removed")
        doc.text = "\n".join(kept)
        return None
