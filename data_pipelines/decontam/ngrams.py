"""Word n-grams hashed to 64-bit integers: the eval index is built once, documents are looked up against it.

Words are the ``\\w+`` runs of a text, case-folded (punctuation, whitespace and case do not matter). A word
hashes with xxh64 (a document's words are looked up in the eval vocabulary instead: an unknown word is 0); a run
of ``L`` words hashes polynomially, ``sum(w[j] * P**(L-1-j)) mod 2**64``, computed for every window of a text at
once from prefix sums (``P`` is odd, so it has an inverse modulo ``2**64``). The index keeps one sorted ``uint64``
array per length: the ``ngram``-grams of the eval texts, and the whole word sequence of each eval text shorter
than that (at least ``min_words`` words). A document matches where any of its windows of one of those lengths is
in the array of that length: a bitmap of the hashes rejects most windows, ``np.searchsorted`` checks the rest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from itertools import repeat
from typing import Sequence

import numpy as np

from data_pipelines.decontam.evalsets import EvalSet

WORD = re.compile(r"\w+")
_P = 0x9E3779B97F4A7C15  # odd: invertible modulo 2**64
_P_INV = pow(_P, -1, 1 << 64)


def words(text: str) -> list[re.Match]:
    """The words of ``text`` with their character offsets (for the spans of a document that matched)."""
    return list(WORD.finditer(text))


def normalised_words(text: str) -> list[str]:
    """The case-folded words of ``text``: the same sequence as :func:`words`, without match objects (faster)."""
    if text.isascii():  # lower() is casefold() for ASCII and keeps the word boundaries
        return WORD.findall(text.lower())
    return [w.casefold() for w in WORD.findall(text)]


def hash_word(word: str) -> int:
    import xxhash

    return xxhash.xxh64_intdigest(word.encode("utf-8", "surrogatepass"))


def _signed(h: int) -> int:
    return h - (1 << 64) if h >= 1 << 63 else h


def word_hashes(matches: Sequence[re.Match]) -> np.ndarray:
    return np.fromiter((hash_word(m.group().casefold()) for m in matches), dtype=np.uint64, count=len(matches))


class Windows:
    """The hashes of every window of ``L`` consecutive words of one text, for any ``L``."""

    def __init__(self, hashes: np.ndarray):
        m = len(hashes)
        with np.errstate(over="ignore"):
            self.pow = np.cumprod(np.concatenate([[np.uint64(1)], np.full(m, _P, dtype=np.uint64)]), dtype=np.uint64)
            inv = np.cumprod(np.concatenate([[np.uint64(1)], np.full(max(m - 1, 0), _P_INV, dtype=np.uint64)]),
                             dtype=np.uint64)[:m]
            self.prefix = np.concatenate([[np.uint64(0)], np.cumsum(hashes * inv, dtype=np.uint64)])
        self.m = m

    def __call__(self, length: int) -> np.ndarray:
        """``out[i]`` = hash of words ``i .. i+length-1``, for ``i`` in ``0 .. m-length``."""
        if length > self.m:
            return np.empty(0, dtype=np.uint64)
        with np.errstate(over="ignore"):
            diff = self.prefix[length:] - self.prefix[: self.m - length + 1]
            return self.pow[length - 1: self.m] * diff


@dataclass
class EvalSummary:
    """What the index holds of one eval set (the report's per-eval-set figures)."""

    file: str
    records: int
    examples: int
    skipped: dict[str, int]
    texts: int = 0
    ngrams: int = 0  # distinct ngram-word windows
    short_texts: int = 0  # texts of min_words..ngram-1 words, matched as a whole
    too_short: int = 0  # texts under min_words words: not matched


@dataclass
class EvalIndex:
    """Sorted hashes per window length, with the (eval set, example) that first contributed each hash."""

    ngram: int
    min_words: int
    names: list[str]
    hashes: dict[int, np.ndarray] = field(default_factory=dict)
    owner_set: dict[int, np.ndarray] = field(default_factory=dict)
    owner_example: dict[int, np.ndarray] = field(default_factory=dict)
    summaries: dict[str, EvalSummary] = field(default_factory=dict)
    # word -> its xxh64, for every word of the eval texts; a document word not in it can be in no eval window, so
    # it maps to 0 (one dictionary look-up per document word instead of a hash)
    vocab: dict[str, int] = field(default_factory=dict)
    # One bit per hash value modulo 2**bits (about 16 bits per eval hash): most document windows are rejected by one
    # cache-friendly gather here, and only the rest are searched in the sorted tables.
    bitmap: np.ndarray = field(default_factory=lambda: np.zeros(1, dtype=np.uint8))
    mask: int = 7

    def _values(self, ws: Sequence[str], add: bool) -> np.ndarray:
        # the hashes are kept as signed 64-bit ints: numpy converts those from Python ints much faster
        if add:
            vocab = self.vocab
            vals = [vocab[w] if w in vocab else vocab.setdefault(w, _signed(hash_word(w))) for w in ws]
        else:
            vals = list(map(self.vocab.get, ws, repeat(0)))
        return np.array(vals, dtype=np.int64).view(np.uint64)

    @classmethod
    def build(cls, sets: Sequence[EvalSet], ngram: int, min_words: int) -> "EvalIndex":
        idx = cls(ngram, min_words, [s.name for s in sets])
        parts: dict[int, list[tuple[np.ndarray, int, int]]] = {}
        for si, es in enumerate(sets):
            summary = EvalSummary(es.path, es.records, len(es.examples), dict(sorted(es.skipped.items())))
            grams: list[np.ndarray] = []
            for example, texts in es.examples:
                for text in texts:
                    summary.texts += 1
                    h = idx._values(normalised_words(text), add=True)
                    if len(h) >= ngram:
                        win = Windows(h)(ngram)
                        parts.setdefault(ngram, []).append((win, si, example))
                        grams.append(win)
                    elif len(h) >= min_words:
                        parts.setdefault(len(h), []).append((Windows(h)(len(h)), si, example))
                        summary.short_texts += 1
                    else:
                        summary.too_short += 1
            summary.ngrams = int(len(np.unique(np.concatenate(grams)))) if grams else 0
            idx.summaries[es.name] = summary
        for length, items in sorted(parts.items()):
            h = np.concatenate([w for w, _, _ in items])
            s = np.concatenate([np.full(len(w), si, dtype=np.int32) for w, si, _ in items])
            e = np.concatenate([np.full(len(w), ex, dtype=np.int64) for w, _, ex in items])
            uniq, first = np.unique(h, return_index=True)  # first: the earliest (eval set, example) of each hash
            idx.hashes[length], idx.owner_set[length], idx.owner_example[length] = uniq, s[first], e[first]
        total = sum(len(t) for t in idx.hashes.values())
        bits = max(16, int(np.ceil(np.log2(max(1, total) * 16))))
        idx.mask = (1 << bits) - 1
        idx.bitmap = np.zeros(1 << (bits - 3), dtype=np.uint8)
        for table in idx.hashes.values():
            low = (table & np.uint64(idx.mask)).astype(np.int64)
            np.bitwise_or.at(idx.bitmap, low >> 3, (1 << (low & 7)).astype(np.uint8))
        return idx

    def _maybe(self, h: np.ndarray) -> np.ndarray:
        """Positions of ``h`` whose bit is set (a superset of the hashes in the tables)."""
        low = (h & np.uint64(self.mask)).astype(np.int64)
        return np.nonzero((self.bitmap[low >> 3] >> (low & 7).astype(np.uint8)) & 1)[0]

    @property
    def lengths(self) -> list[int]:
        return sorted(self.hashes)

    def match(self, text: str) -> tuple[list[tuple[int, int]], dict[str, list[int]]]:
        """Character spans of ``text`` that overlap an eval example (merged, in order), and the examples hit
        per eval set (record indices, sorted). Both empty when the text is clean."""
        ws = normalised_words(text)
        if len(ws) < min(self.lengths, default=1 << 30):
            return [], {}
        win = Windows(self._values(ws, add=False))
        covered = np.zeros(len(ws) + 1, dtype=np.int32)  # +1 at a window's first word, -1 after its last
        hits: dict[str, set[int]] = {}
        for length in self.lengths:
            h = win(length)
            if not len(h):
                continue
            maybe = self._maybe(h)
            if not len(maybe):
                continue
            table = self.hashes[length]
            pos = np.minimum(np.searchsorted(table, h[maybe]), len(table) - 1)
            ok = table[pos] == h[maybe]
            found, pos = maybe[ok], pos[ok]
            if not len(found):
                continue
            np.add.at(covered, found, 1)
            np.add.at(covered, found + length, -1)
            for si, ex in zip(self.owner_set[length][pos], self.owner_example[length][pos]):
                hits.setdefault(self.names[int(si)], set()).add(int(ex))
        if not hits:
            return [], {}
        inside = np.cumsum(covered[:-1]) > 0
        ms = words(text)  # the same words, now with their offsets
        spans: list[tuple[int, int]] = []
        i, n = 0, len(ms)
        while i < n:
            if not inside[i]:
                i += 1
                continue
            j = i
            while j + 1 < n and inside[j + 1]:
                j += 1
            spans.append((ms[i].start(), ms[j].end()))
            i = j + 1
        return spans, {k: sorted(v) for k, v in sorted(hits.items())}

    def summary(self) -> dict[str, dict]:
        return {name: s.__dict__ for name, s in sorted(self.summaries.items())}


def cut(text: str, spans: Sequence[Sequence[int]]) -> str:
    """``text`` without the characters of ``spans`` (sorted, disjoint ``[start, end)`` ranges)."""
    out, at = [], 0
    for start, end in spans:
        out.append(text[at:start])
        at = end
    out.append(text[at:])
    return "".join(out)


def has_words(text: str) -> bool:
    return WORD.search(text) is not None


__all__ = ["EvalIndex", "EvalSummary", "Windows", "cut", "has_words", "normalised_words", "word_hashes", "words"]
