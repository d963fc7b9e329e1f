"""Gopher quality and repetition rules (Rae et al. 2021, "Scaling Language Models", appendix A.1.1).

Defaults are the paper's, as implemented by datatrove's ``GopherQualityFilter``/``GopherRepetitionFilter``.
Deliberate differences, each because the reference behaviour depends on layout rather than content:
* words are whitespace tokens with edge punctuation stripped (no nltk, see ``text.py``); stop words match
  case-insensitively ("The" counts);
* line statistics skip blank lines (datatrove counts each blank line between paragraphs as a duplicate
  line, which drops any text with more than a few paragraphs);
* bullets include the common Unicode bullets and the "-"/"*" list markers that HTML extractors emit;
* datatrove's misnamed ``max_non_alpha_words_ratio`` (a minimum share of words with a letter) is called
  ``min_alpha_words_ratio`` here.
Repetition n-grams are over whitespace tokens, counted exactly as the reference's strings: as tuples of
words and only where they can repeat (:class:`_NGrams`), or for long documents hashed and sorted with numpy
(:class:`_HashedNGrams`). Any threshold set to ``null`` disables that rule.
"""

from __future__ import annotations

import bisect
import re
from collections import Counter
from itertools import compress
from operator import itemgetter
from typing import Sequence

import numpy as np

from data_pipelines.document import Document
from data_pipelines.filters.base import DocumentFilter, invalid
from data_pipelines.filters.ngram_batch import BatchNGrams
from data_pipelines.filters.text import (
    PARAGRAPH_SPLIT,
    PUNCTUATION,
    count_words_with_letter,
    find_duplicates,
    non_empty_lines,
    words_of,
)
from data_pipelines.native import compiled as _native  # None: the numpy paths
from data_pipelines.stats import StageStats

STOP_WORDS = ["the", "be", "to", "of", "and", "that", "have", "with"]
BULLETS = ["•", "●", "○", "◦", "▪", "▫", "■", "□", "‣", "⁃", "-", "*"]
_TOKEN = re.compile(r"\S+")


def _ratio_ok(name: str, value: float | None) -> None:
    if value is not None and not 0.0 <= value <= 1.0:
        raise invalid(name, value, "a fraction between 0 and 1, or null to disable")


class GopherQuality(DocumentFilter):
    """Document-level quality heuristics: length, word shape, symbols, bullets, ellipses, stop words."""

    name = "gopher_quality"

    def __init__(
        self,
        *,
        min_doc_words: int | None = 50,
        max_doc_words: int | None = 100000,
        min_avg_word_length: float | None = 3,
        max_avg_word_length: float | None = 10,
        max_symbol_word_ratio: float | None = 0.1,
        max_bullet_lines_ratio: float | None = 0.9,
        max_ellipsis_lines_ratio: float | None = 0.3,
        min_alpha_words_ratio: float | None = 0.8,
        min_stop_words: int | None = 2,
        stop_words: list[str] | None = None,
        bullets: list[str] | None = None,
    ):
        for key in ("max_bullet_lines_ratio", "max_ellipsis_lines_ratio", "min_alpha_words_ratio"):
            _ratio_ok(key, locals()[key])
        if min_stop_words is not None and min_stop_words < 0:
            raise invalid("min_stop_words", min_stop_words, "a non-negative integer or null to disable")
        if min_doc_words is not None and max_doc_words is not None and min_doc_words > max_doc_words:
            raise invalid("min_doc_words", min_doc_words, f"at most max_doc_words ({max_doc_words})")
        self.min_doc_words = min_doc_words
        self.max_doc_words = max_doc_words
        self.min_avg_word_length = min_avg_word_length
        self.max_avg_word_length = max_avg_word_length
        self.max_symbol_word_ratio = max_symbol_word_ratio
        self.max_bullet_lines_ratio = max_bullet_lines_ratio
        self.max_ellipsis_lines_ratio = max_ellipsis_lines_ratio
        self.min_alpha_words_ratio = min_alpha_words_ratio
        self.min_stop_words = min_stop_words
        self.stop_words = [w.lower() for w in (STOP_WORDS if stop_words is None else stop_words)]
        self.bullets = list(BULLETS if bullets is None else bullets)
        self._stop_set = frozenset(self.stop_words)
        self._bullets = tuple(self.bullets)
        # the compiled counts compare ASCII words with the ASCII stop words (up to 64 characters) byte for byte
        self._ascii_stops = tuple(w.encode() for w in self._stop_set if w.isascii())
        self._native_fits = (all(len(w) <= 64 for w in self._ascii_stops)
                             and sum(not c.isascii() for c in PUNCTUATION) <= 64)

    def _too_long(self, text: str) -> bool:
        """Stream-count the words of a huge text, so a 100 MB document never becomes a list of 20 M words."""
        limit = self.max_doc_words
        if limit is None or len(text) <= 20 * limit:
            return False
        n = 0
        for m in _TOKEN.finditer(text):
            if m.group().strip(PUNCTUATION):
                n += 1
                if n > limit:
                    return True
        return False

    def apply(self, doc: Document, stats: StageStats) -> str | None:
        text = doc.text
        if self._too_long(text):
            return "gopher_long_doc"
        if _native is not None and self._native_fits:
            return self._native_decision(text)
        words = words_of(text)
        n_words = len(words)
        if n_words == 0 or (self.min_doc_words is not None and n_words < self.min_doc_words):
            return "gopher_short_doc"
        if self.max_doc_words is not None and n_words > self.max_doc_words:
            return "gopher_long_doc"

        mean_len = sum(map(len, words)) / n_words
        if self.min_avg_word_length is not None and mean_len < self.min_avg_word_length:
            return "gopher_short_words"
        if self.max_avg_word_length is not None and mean_len > self.max_avg_word_length:
            return "gopher_long_words"

        if self.max_symbol_word_ratio is not None:
            if text.count("#") / n_words > self.max_symbol_word_ratio:
                return "gopher_hash_ratio"
            if (text.count("...") + text.count("…")) / n_words > self.max_symbol_word_ratio:
                return "gopher_ellipsis_ratio"

        lines = non_empty_lines(text)
        if self.max_bullet_lines_ratio is not None and self._bullets:
            bullets = sum(1 for line in lines if line.lstrip().startswith(self._bullets))
            if bullets / len(lines) > self.max_bullet_lines_ratio:
                return "gopher_bullet_lines"
        if self.max_ellipsis_lines_ratio is not None:
            ellipsis = sum(1 for line in lines if line.rstrip().endswith(("...", "…")))
            if ellipsis / len(lines) > self.max_ellipsis_lines_ratio:
                return "gopher_ellipsis_lines"

        if self.min_alpha_words_ratio is not None:
            if count_words_with_letter(words) / n_words < self.min_alpha_words_ratio:
                return "gopher_non_alpha_words"

        if self.min_stop_words:
            found = 0
            for w in words:
                if w.lower() in self._stop_set:
                    found += 1
                    if found >= self.min_stop_words:
                        break
            else:
                return "gopher_few_stop_words"
        return None

    def _native_decision(self, text: str) -> str | None:
        """:meth:`apply`'s rules, in its order, on the counts of one compiled pass (``_native.gopher_quality``:
        the same counts, ``tests/pipeline/test_filters_fast.py``)."""
        (n_words, n_chars, lettered, stops, hashes, dots, ellipses, n_lines, bullet_lines,
         ellipsis_lines) = _native.gopher_quality(text, PUNCTUATION, self._bullets, self._ascii_stops, self._stop_set,
                                                  self.min_stop_words or 0)
        if n_words == 0 or (self.min_doc_words is not None and n_words < self.min_doc_words):
            return "gopher_short_doc"
        if self.max_doc_words is not None and n_words > self.max_doc_words:
            return "gopher_long_doc"
        mean_len = n_chars / n_words
        if self.min_avg_word_length is not None and mean_len < self.min_avg_word_length:
            return "gopher_short_words"
        if self.max_avg_word_length is not None and mean_len > self.max_avg_word_length:
            return "gopher_long_words"
        if self.max_symbol_word_ratio is not None:
            if hashes / n_words > self.max_symbol_word_ratio:
                return "gopher_hash_ratio"
            if (dots + ellipses) / n_words > self.max_symbol_word_ratio:
                return "gopher_ellipsis_ratio"
        if (self.max_bullet_lines_ratio is not None and self._bullets
                and bullet_lines / n_lines > self.max_bullet_lines_ratio):
            return "gopher_bullet_lines"
        if self.max_ellipsis_lines_ratio is not None and ellipsis_lines / n_lines > self.max_ellipsis_lines_ratio:
            return "gopher_ellipsis_lines"
        if self.min_alpha_words_ratio is not None and lettered / n_words < self.min_alpha_words_ratio:
            return "gopher_non_alpha_words"
        if self.min_stop_words and stops < self.min_stop_words:
            return "gopher_few_stop_words"
        return None


class _NGrams:
    """The n-gram statistics of a word sequence, level by level over only the positions that can repeat.

    An n-gram occurring twice has its (n-1)-gram prefix occurring twice at the same positions, so level n only
    looks at the positions where the (n-1)-gram repeats (:meth:`_level`): one ``Counter`` over all bigrams,
    then ever smaller sets (a few percent of the positions for prose from n = 4 on). N-grams are tuples of
    the words themselves, so counts are exact (no hashing); about 3x less time than sorting hashes for every n.
    """

    def __init__(self, words: list[str]):
        self._words = words
        # n -> ((the positions whose n-gram occurs at least twice, in order, and those n-grams);
        #       (count, n-gram) of the most frequent n-gram, ties: the first seen)
        self._levels: dict[int, tuple[tuple[Sequence[int], list[tuple[str, ...]]], tuple[int, tuple[str, ...]]]] = {}

    def _level(self, n: int):
        level = self._levels.get(n)
        if level is not None:
            return level
        words = self._words
        if n <= 2:
            positions: Sequence[int] = range(len(words) - n + 1)
            keys = list(zip(*(words[i:] for i in range(n))))
        else:
            last = len(words) - n
            prev_positions, prev_keys = self._level(n - 1)[0]
            if prev_positions and prev_positions[-1] > last:  # the last (n-1)-gram has no n-gram
                prev_positions, prev_keys = prev_positions[:-1], prev_keys[:-1]
            positions = prev_positions
            # k + (words[c + n - 1],) for each position, in C loops (zip of one iterable makes 1-tuples)
            keys = list(map(tuple.__add__, prev_keys, zip(map(words.__getitem__, map((n - 1).__add__, positions)))))
        counts = Counter(keys)
        if len(counts) == len(keys):  # nothing repeats: every n-gram is a top one, the first seen wins
            level = (([], []), (1, tuple(words[:n])))
        else:
            top, best = max(counts.items(), key=itemgetter(1))  # max: the first maximal, in first-seen order
            multi = list(map((1).__lt__, map(counts.__getitem__, keys)))  # count > 1, in C loops
            level = ((list(compress(positions, multi)), list(compress(keys, multi))), (best, top))
        self._levels[n] = level
        return level

    def top_chars(self, n: int) -> int:
        """Characters covered by the most frequent n-gram (ties: the first seen, as ``Counter.most_common``).

        Every n-gram occurring at least twice is among the positions of :meth:`_level`, which are in order,
        so its first maximal n-gram is the first seen of the whole text; if none repeats, it is the first."""
        best, gram = self._level(n)[1]
        return (sum(map(len, gram)) + n - 1) * best

    def repeats(self, n: int) -> bool:
        """Whether any n-gram occurs twice (then so does every shorter one)."""
        return bool(self._level(n)[0][0])

    def duplicated_chars(self, n: int) -> int:
        """Characters in n-grams repeating an earlier one; after a repeat, skip past it (the reference's rule).

        The reference walks every position with a set of the n-grams seen at the positions it visited. Only
        positions whose n-gram occurs twice can be repeats, and the others never meet their n-gram again, so
        walking only those (in order, with the same skips) gives the same count."""
        seen: set[tuple[str, ...]] = set()
        chars = 0
        resume = 0  # the reference skips the n - 1 positions after a repeat
        for c, gram in zip(*self._level(n)[0]):
            if c < resume:
                continue
            if gram in seen:
                chars += sum(map(len, gram)) + n - 1
                resume = c + n
            else:
                seen.add(gram)
        return chars


class _HashedNGrams:
    """The n-grams of a word sequence as 64-bit hashes, sorted with numpy: faster than :class:`_NGrams` on long
    documents (``LONG_DOC_WORDS``), where its Python-level passes over the repeating positions cost more than
    numpy's per-call overhead.

    Joining every n-gram into a string costs about a microsecond each (nine n's over a 100k-word document is
    a second); hashing word ids costs nanoseconds. Word ids get a SplitMix64 mix, n-grams a polynomial hash
    mod 2^64; a collision between two different n-grams of one document is vanishingly unlikely and could
    only shift a ratio by one n-gram. Characters of the n-gram at ``i`` (words joined by single spaces)
    come from prefix sums of word lengths, exactly as the string version counts them.
    """

    _BASE = np.uint64(0x100000001B3)

    def __init__(self, words: list[str]):
        self._words = words
        index = {w: i for i, w in enumerate(dict.fromkeys(words))}
        ids = np.fromiter(map(index.__getitem__, words), dtype=np.uint64, count=len(words))
        with np.errstate(over="ignore"):
            x = (ids + np.uint64(1)) * np.uint64(0x9E3779B97F4A7C15)
            x ^= x >> np.uint64(30)
            x *= np.uint64(0xBF58476D1CE4E5B9)
            x ^= x >> np.uint64(27)
            x *= np.uint64(0x94D049BB133111EB)
            x ^= x >> np.uint64(31)
        self._values = x
        self._cum_len = np.concatenate(([0], np.cumsum(np.fromiter(map(len, words), dtype=np.int64,
                                                                    count=len(words)))))
        self._hashes: dict[int, np.ndarray] = {1: x}
        self._repeats: dict[int, bool] = {}

    def hashes(self, n: int) -> np.ndarray:
        """Hash of the n-gram starting at each word (length ``len(words) - n + 1``)."""
        if n not in self._hashes:
            prev = self.hashes(n - 1)
            with np.errstate(over="ignore"):
                self._hashes[n] = prev[:-1] * self._BASE + self._values[n - 1:]
        return self._hashes[n]

    def chars(self, n: int, start: int) -> int:
        """Characters of the n-gram at ``start`` with its words joined by single spaces."""
        return int(self._cum_len[start + n] - self._cum_len[start]) + n - 1

    def top_chars(self, n: int) -> int:
        """Characters covered by the most frequent n-gram (ties: the first seen, as ``Counter.most_common``)."""
        h = self.hashes(n)
        order = np.argsort(h, kind="stable")  # stable: each group's first element is its first occurrence
        ordered = h[order]
        starts = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1])))
        counts = np.diff(np.append(starts, len(h)))
        first = order[starts]
        best = counts.max()
        start = int(first[counts == best].min())
        return self.chars(n, start) * int(best)

    def repeats(self, n: int) -> bool:
        """Whether any n-gram occurs twice (then so does every shorter one)."""
        return bool(self._repeats.get(n, True))

    def duplicated_chars(self, n: int) -> int:
        """Characters in n-grams repeating an earlier one; after a repeat, skip past it (the reference's rule).

        The reference walks every position with a set of n-grams seen at the positions it visited. Only
        positions whose n-gram occurred earlier at all can be repeats, so only those are walked here (in
        order): one is skipped if it lies inside the skip of an earlier repeat, and it is a repeat if an
        earlier occurrence was visited -- its group's first occurrence unless that was skipped, or an
        earlier walked position that turned out new. Same count as the full walk, in time proportional to
        the repeats.
        """
        h = self.hashes(n)
        order = np.argsort(h, kind="stable")
        ordered = h[order]
        new = np.concatenate(([True], ordered[1:] != ordered[:-1]))
        if new.all():
            self._repeats[n] = False
            return 0
        group_sorted = np.cumsum(new) - 1
        group = np.empty(len(h), dtype=np.int64)
        group[order] = group_sorted
        first = order[np.flatnonzero(new)]  # first occurrence of every group (stable sort)
        later = np.flatnonzero(first[group] != np.arange(len(h)))  # positions whose n-gram occurred before
        skip_starts: list[int] = []  # skipped spans (r + 1 .. r + n - 1) after each repeat r, in order
        seen: dict[int, bool] = {}  # group -> an occurrence of it was visited
        chars = 0
        skip_end = -1
        for c, g in zip(later.tolist(), group[later].tolist()):
            if c <= skip_end:
                continue  # skipped, never added to the reference's set
            visited = seen.get(g)
            if visited is None:
                p0 = int(first[g])
                k = bisect.bisect_right(skip_starts, p0) - 1
                visited = not (k >= 0 and p0 <= skip_starts[k] + n - 2)
            if visited:
                chars += self.chars(n, c)
                skip_starts.append(c + 1)
                skip_end = c + n - 1
            seen[g] = True
        return chars


# from this many words on, the numpy n-grams are the faster (measured on stdlib docstrings)
LONG_DOC_WORDS = 2000
# the largest n-gram size a table may name (Gopher's go to 10; the Python levels recurse once per size)
MAX_NGRAM = 100


def _ngram_table(value: dict[int, float] | None, name: str) -> dict[int, float]:
    table = {} if value is None else {int(k): float(v) for k, v in value.items()}
    for n, frac in table.items():
        if not 1 <= n <= MAX_NGRAM:
            raise invalid(name, value, f"a mapping {{n: fraction}} with 1 <= n <= {MAX_NGRAM}")
        _ratio_ok(f"{name}[{n}]", frac)
    return dict(sorted(table.items()))


class GopherRepetition(DocumentFilter):
    """Repeated paragraphs, lines and n-grams (Gopher table A1); ``{}``/``null`` n-gram tables disable those."""

    name = "gopher_repetition"

    def __init__(
        self,
        *,
        dup_line_frac: float | None = 0.3,
        dup_para_frac: float | None = 0.3,
        dup_line_char_frac: float | None = 0.2,
        dup_para_char_frac: float | None = 0.2,
        top_n_grams: dict[int, float] | None = None,
        dup_n_grams: dict[int, float] | None = None,
    ):
        for key in ("dup_line_frac", "dup_para_frac", "dup_line_char_frac", "dup_para_char_frac"):
            _ratio_ok(key, locals()[key])
        self.dup_line_frac = dup_line_frac
        self.dup_para_frac = dup_para_frac
        self.dup_line_char_frac = dup_line_char_frac
        self.dup_para_char_frac = dup_para_char_frac
        self.top_n_grams = _ngram_table({2: 0.20, 3: 0.18, 4: 0.16} if top_n_grams is None else top_n_grams,
                                        "top_n_grams")
        self.dup_n_grams = _ngram_table(
            {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10} if dup_n_grams is None else dup_n_grams,
            "dup_n_grams",
        )
        self._top_ns, self._dup_ns = tuple(self.top_n_grams), tuple(self.dup_n_grams)
        self._native_fits = max(len(self._top_ns), len(self._dup_ns)) <= 64  # the compiled statistics' limit

    def apply(self, doc: Document, stats: StageStats) -> str | None:
        checked = self._line_checks(doc.text)
        if checked is not True:
            return checked
        if _native is not None and self._native_fits:
            return self._native_checks(doc.text)
        words = doc.text.split()
        return self._ngram_checks(doc.text, words, _NGrams(words) if len(words) < LONG_DOC_WORDS
                                  else _HashedNGrams(words))

    batch_size = 256

    def apply_batch(self, docs: list[Document], stats: StageStats) -> list[str | None]:
        """:meth:`apply` of each document; without the compiled statistics, the n-grams of the short ones are
        counted together (:class:`~data_pipelines.filters.ngram_batch.BatchNGrams`), long ones hashed."""
        if _native is not None and self._native_fits:
            return [self.apply(doc, stats) for doc in docs]
        checked = [self._line_checks(doc.text) for doc in docs]
        checked = [doc.text.split() if c is True else c for doc, c in zip(docs, checked)]
        short = [i for i, c in enumerate(checked) if isinstance(c, list) and len(c) < LONG_DOC_WORDS]
        batch = BatchNGrams([checked[i] for i in short]) if short else None
        views = {i: batch.view(k) for k, i in enumerate(short)}
        out: list[str | None] = []
        for i, (doc, words) in enumerate(zip(docs, checked)):
            if not isinstance(words, list):
                out.append(words)
            else:
                out.append(self._ngram_checks(doc.text, words, views[i] if i in views else _HashedNGrams(words)))
        return out

    def _line_checks(self, text: str) -> str | None | bool:
        """The paragraph and line rules: a drop reason, ``None`` (kept, no n-gram rules), or ``True`` (the
        n-gram rules decide)."""
        n_chars = len(text)
        if _native is not None:  # the same counts in one compiled pass
            n_paras, dup_paras, dup_para_chars, n_lines, dup_lines, dup_line_chars = _native.gopher_lines(text)
        else:
            paragraphs = [p for p in PARAGRAPH_SPLIT.split(text.strip()) if p.strip()]
            n_paras, (dup_paras, dup_para_chars) = len(paragraphs), find_duplicates(paragraphs)
            lines = non_empty_lines(text)
            n_lines, (dup_lines, dup_line_chars) = len(lines), find_duplicates(lines)
        # a blank text has no paragraph or line: nothing repeats (the ratios are 0)
        if self.dup_para_frac is not None and n_paras and dup_paras / n_paras > self.dup_para_frac:
            return "gopher_dup_para_frac"
        if self.dup_para_char_frac is not None and n_chars and dup_para_chars / n_chars > self.dup_para_char_frac:
            return "gopher_dup_para_char_frac"
        if self.dup_line_frac is not None and n_lines and dup_lines / n_lines > self.dup_line_frac:
            return "gopher_dup_line_frac"
        if self.dup_line_char_frac is not None and n_chars and dup_line_chars / n_chars > self.dup_line_char_frac:
            return "gopher_dup_line_char_frac"

        if not (self.top_n_grams or self.dup_n_grams):
            return None
        return True

    def _native_checks(self, text: str) -> str | None:
        """:meth:`_ngram_checks` from the compiled statistics (the same numbers: ``test_filters_fast.py``); every
        n is computed, and an n-gram size a text has too few words for never drops it."""
        num_words, tops, dups = _native.gopher_ngrams(text, self._top_ns, self._dup_ns)
        n_chars = len(text)
        for (n, frac), chars in zip(self.top_n_grams.items(), tops):
            if num_words >= n and chars / n_chars > frac:
                return f"gopher_top_{n}_gram"
        for (n, frac), chars in zip(self.dup_n_grams.items(), dups):
            if num_words >= n and chars / n_chars > frac:
                return f"gopher_dup_{n}_gram"
        return None

    def _ngram_checks(self, text: str, words: list[str], ngrams) -> str | None:
        n_chars = len(text)
        for n, frac in self.top_n_grams.items():
            if len(words) >= n and ngrams.top_chars(n) / n_chars > frac:
                return f"gopher_top_{n}_gram"
        repeats_at = None  # smallest n checked whose n-grams never repeat: no longer n-gram repeats either
        for n, frac in self.dup_n_grams.items():
            if len(words) < n or (repeats_at is not None and n > repeats_at):
                continue
            dup = ngrams.duplicated_chars(n)
            if dup == 0 and not ngrams.repeats(n):
                repeats_at = n
            if dup / n_chars > frac:
                return f"gopher_dup_{n}_gram"
        return None
