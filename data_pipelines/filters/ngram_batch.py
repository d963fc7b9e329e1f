"""The Gopher repetition n-gram statistics of many documents at once, in numpy, exact.

:class:`~data_pipelines.filters.gopher._NGrams` counts one document's n-grams with ``Counter``s of word tuples:
fine per document, but for the short documents of a web corpus most of its time is per-call overhead (nine
levels of small lists per document). Here a batch of documents is one array of word ids, and each level is a
few numpy calls for the whole batch:

* words get ids from one dictionary, and the document's number is part of every key, so n-grams of different
  documents never meet;
* level 2 keys every bigram as ``(document * V + id) * V + next_id``; level n keys only the positions whose
  (n-1)-gram repeats (an n-gram can only repeat where its prefix does) as ``group of the (n-1)-gram * V + next
  id``, where the group is the dense index ``np.unique`` gave that (n-1)-gram. Keys are exact integers (no
  hashing), so the counts are the word tuples' counts;
* per document, the most frequent n-gram (ties: the first seen, as ``Counter.most_common``) and the positions
  whose n-gram repeats, in order, with its group -- what :meth:`BatchNGrams.view` hands to the filter.

``tests/pipeline/test_filters_fast.py`` checks every statistic against the reference loops.
"""

from __future__ import annotations

from itertools import chain, count

import numpy as np


class BatchNGrams:
    """N-gram statistics of ``docs`` (lists of words); :meth:`view` gives one document's, with the interface of
    ``_NGrams`` (``top_chars``, ``repeats``, ``duplicated_chars``). Levels are computed on first use, for every
    document of the batch at once."""

    def __init__(self, docs: list[list[str]]):
        # one dictionary for the batch: a word's id is the position of its first occurrence (not dense, but
        # below the number of words); the document goes into every key, so documents never share an n-gram
        words = list(chain.from_iterable(docs))
        total = len(words)
        index: dict[str, int] = {}
        self._ids = np.fromiter(map(index.setdefault, words, count()), dtype=np.int64, count=total)
        self._vocab = max(total, 1)
        sizes = np.fromiter(map(len, docs), dtype=np.int64, count=len(docs))
        self._start = np.concatenate(([0], np.cumsum(sizes)))  # document d: words start[d] .. start[d + 1]
        self._doc_of = np.repeat(np.arange(len(docs), dtype=np.int64), sizes)
        self._end_of = self._start[1:][self._doc_of]  # end of each word's document
        self._cum_len = np.concatenate(([0], np.cumsum(np.fromiter(map(len, words), dtype=np.int64,
                                                                    count=total)))).tolist()
        # n -> (positions whose n-gram repeats and their groups, arrays; per document as lists: where its
        # positions start in them, its top count and the first position of its top n-gram)
        self._levels: dict[int, tuple[np.ndarray, np.ndarray, list[int], list[int], list[int]]] = {}

    def _level(self, n: int):
        level = self._levels.get(n)
        if level is not None:
            return level
        if n <= 2:
            cand = np.arange(len(self._ids))
            prefix = self._ids
        else:
            cand, prefix = self._level(n - 1)[:2]
        if n <= 2:  # the document's number in front; from n = 3 on the prefix group holds it
            prefix = self._doc_of * self._vocab + prefix
        if n == 1:
            keys = prefix
        else:
            ok = cand + n - 1 < self._end_of[cand]
            cand, prefix = cand[ok], prefix[ok]
            keys = prefix * self._vocab + self._ids[cand + n - 1]
        uniq, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
        num_docs = len(self._start) - 1
        first = np.full(len(uniq), len(self._ids), dtype=np.int64)
        np.minimum.at(first, inverse, cand)
        group_doc = self._doc_of[first] if len(first) else np.zeros(0, dtype=np.int64)
        top = np.ones(num_docs, dtype=np.int64)
        np.maximum.at(top, group_doc, counts)
        top_pos = self._start[:-1].copy()  # nothing repeats: every n-gram is a top one, the first seen wins
        best = (counts == top[group_doc]) & (counts > 1)
        if best.any():
            repeated_top = np.full(num_docs, len(self._ids), dtype=np.int64)
            np.minimum.at(repeated_top, group_doc[best], first[best])
            has = top > 1
            top_pos[has] = repeated_top[has]
        multi = counts[inverse] > 1
        pos = cand[multi]
        level = (pos, inverse[multi], np.searchsorted(pos, self._start).tolist(), top.tolist(), top_pos.tolist())
        self._levels[n] = level
        return level

    def view(self, d: int) -> "_DocNGrams":
        return _DocNGrams(self, d)


class _DocNGrams:
    """One document of a :class:`BatchNGrams`: the statistics ``GopherRepetition`` asks of ``_NGrams``."""

    def __init__(self, batch: BatchNGrams, d: int):
        self._batch = batch
        self._d = d

    def _chars(self, n: int, start: int) -> int:
        cum = self._batch._cum_len
        return cum[start + n] - cum[start] + n - 1

    def _repeating(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        pos, grp, bounds = self._batch._level(n)[:3]
        lo, hi = bounds[self._d], bounds[self._d + 1]
        return pos[lo:hi], grp[lo:hi]

    def top_chars(self, n: int) -> int:
        """Characters covered by the most frequent n-gram (ties: the first seen, as ``Counter.most_common``)."""
        top, top_pos = self._batch._level(n)[3:]
        return self._chars(n, top_pos[self._d]) * top[self._d]

    def repeats(self, n: int) -> bool:
        """Whether any n-gram occurs twice (then so does every shorter one)."""
        bounds = self._batch._level(n)[2]
        return bounds[self._d + 1] > bounds[self._d]

    def duplicated_chars(self, n: int) -> int:
        """Characters in n-grams repeating an earlier one; after a repeat, skip past it (the reference's rule,
        walked over only the positions whose n-gram repeats, as ``_NGrams.duplicated_chars``)."""
        pos, grp = self._repeating(n)
        seen: set[int] = set()
        chars = 0
        resume = 0
        for c, g in zip(pos.tolist(), grp.tolist()):
            if c < resume:
                continue
            if g in seen:
                chars += self._chars(n, c)
                resume = c + n
            else:
                seen.add(g)
        return chars
