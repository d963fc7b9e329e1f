"""py3langid's scores, bit for bit, with the byte walk compiled or vectorised in numpy.

py3langid feeds the UTF-8 bytes of a text through a DFA (an Aho-Corasick automaton over the byte n-grams
of its model) in a Python loop, one dictionary step per byte: 41% of the whole web filter chain's time.
In an Aho-Corasick automaton the state after byte ``i`` is the longest suffix of the input that is a trie
node, so it depends only on the last ``depth`` bytes (``depth`` = the deepest trie node, 6 for the bundled
model; measured from the automaton at load time). Starting the automaton afresh ``depth - 1`` bytes back
therefore reaches the same state, and that can be done for every position at once: ``depth`` vectorised
table look-ups instead of ``len(text)`` Python steps. The compiled walk (``data_pipelines/_native.c``, used
when it is built) uses the same fact to cut a batch into 16 streams walked in lock-step, whose cache misses in
the 39 MB transition table overlap, and counts each text's features in the same pass.

Feature counts then go into py3langid's own naive-Bayes product in the order its ``Counter`` would hold
them (first occurrence), so the float32 sums, and thus every probability, are identical to
``LanguageIdentifier.rank``; ``tests/pipeline/test_filters_fast.py`` checks that on the bundled samples and
a multilingual check set. The product is numpy's ``@`` (OpenBLAS's sgemv) on each text's gathered rows, or the
compiled one (``_native.langid_scores``), which sums in the order of OpenBLAS's SkylakeX or Haswell/Zen kernels
straight from the table: it is used only when a check at load finds numpy's bits with one of those orders.
:func:`fast_identifier` falls back to py3langid's own ``rank`` if the model does not have the shape this relies
on.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import shutil
import time
from operator import itemgetter
from pathlib import Path
from typing import Any

import numpy as np

from data_pipelines.native import compiled as _native  # None: the numpy paths

log = logging.getLogger(__name__)

_ITEMSIZE = {2: np.uint16, 4: np.uint32, 8: np.uint64}
WALK_BYTES = 4 << 20  # bytes of text per vectorised walk of detect_many: ~90 MB of arrays at most
FUSED_MAX = 3200  # distinct features of a text the compiled product takes (checked at load; more: numpy's)
CACHE_FORMAT = 2  # 2: meta.json holds a checksum of every table
STALE_AFTER_DAYS = 30  # a cached copy that no process has loaded for this long is removed (another environment's)
_STAMP = "last_used"  # touched in a copy at most once a day by the processes that load it
_CACHED_ARRAYS = {"_next": np.int32, "_rowbase": np.int32, "_next_base": np.int32, "_out": np.int64,
                  "_ptc": np.float32}


def _array(values: Any) -> np.ndarray:
    """A read-only view of a stdlib ``array.array`` (no copy: casts happen once, to the dtype used), else an
    int64 array."""
    if hasattr(values, "itemsize") and hasattr(values, "tobytes"):  # stdlib array.array
        return np.frombuffer(values, dtype=_ITEMSIZE[values.itemsize])
    return np.asarray(values, dtype=np.int64)


class FastLanguageIdentifier:
    """``rank(text)`` of a py3langid ``LanguageIdentifier`` (``norm_probs`` as it was built)."""

    def __init__(self, ident: Any):
        self.ident = ident
        self.labels = ident.labels
        nxt = _array(ident.tk_nextmove)  # the distinct 256-entry rows, one after another
        rows = _array(ident.tk_row)  # the row of each state
        if len(nxt) % 256 or max(int(nxt.max()), (int(rows.max()) << 8) + 255) >= 2**31:
            raise ValueError("the model's tables are not 256-entry rows that fit int32")
        self.depth = _trie_depth(nxt, rows)
        # int32 halves the bytes of the walk's cache misses; ``_next_base`` (the next state's row base) saves
        # one look-up per byte and step: the walk only needs states at its last step
        self._next = nxt.astype(np.int32)
        self._rowbase = rows.astype(np.int32) << 8
        self._next_base = self._rowbase[self._next]
        self._out = np.asarray(ident.tk_output, dtype=np.int64)
        # float16 -> float32 is exact, and numpy casts the table to float32 for the product anyway: casting
        # once here instead of per call gives the same bits
        self._ptc = np.asarray(ident.nb_ptc, dtype=np.float32)
        self._scratch()

    def _scratch(self) -> None:
        """What the tables and ``self.ident`` imply: scratch arrays, label columns, the reset byte."""
        ident = self.ident
        self._first = np.zeros(len(self._ptc), dtype=np.int64)  # scratch: first position of each feature
        # rank's labels: the first column of each (aliased labels share a name)
        cols = {}
        for j, lang in enumerate(ident.nb_classes):
            cols.setdefault(lang, j)
        self._label_names = list(cols)
        self._label_cols = np.array(list(cols.values()), dtype=np.intp)
        self._label_index = {lang: i for i, lang in enumerate(cols)}
        # detect_many: counts scratch, and a byte that sends every state back to the start (0xFF, never in
        # UTF-8, does for the bundled model); without one each text is walked on its own
        self._counts = np.zeros(len(self._ptc), dtype=np.int64)
        self._ptc_rows = self._ptc.view(np.ndarray)  # the same (mapped) table, indexed without memmap's Python layer
        self._reset = next((b for b in (0xFF, 0x00) if not self._next[self._rowbase + b].any()), None)
        if self._reset is not None and self._out[0] >= 0:
            self._reset = None
        # the compiled walk's per-state pairs (row base, feature or -1): both in one cache line
        if len(self._out) and int(self._out.max()) >= len(self._ptc):
            raise ValueError("the model's output table names features its naive-Bayes table does not have")
        self._states = np.stack((self._rowbase, np.maximum(self._out, -1).astype(np.int32)), axis=1)
        self._prior = np.ascontiguousarray(self.ident.nb_pc, dtype=np.float32)  # the compiled product's
        self._fused = self._fused_kernels() if _native is not None else None

    def _fused_kernels(self) -> int | None:
        """Which summation order of the compiled product (``_native.langid_scores``: OpenBLAS's, no rows gathered)
        gives :meth:`_product`'s float32 bits here, for texts of 1 to :data:`FUSED_MAX` distinct features: that of
        the SkylakeX kernels (0) or the Haswell/Zen ones (1). ``None`` if neither (another BLAS or CPU, or no FMA
        at all): then numpy's product stays."""
        rng = np.random.default_rng(0)
        sizes = [*range(1, 65), 100, 255, 517, 1000, 2000, FUSED_MAX]
        feats = [rng.integers(0, len(self._ptc), size=n).astype(np.int32) for n in sizes]
        counts = [rng.integers(1, 60, size=n).astype(np.int32) for n in sizes]
        want = np.stack([self._product(f, c) for f, c in zip(feats, counts)]).view(np.uint32)
        bounds = np.concatenate(([0], np.cumsum(sizes))).astype(np.int64)
        for kernels in (0, 1):
            try:
                got = self._fused_scores(np.concatenate(feats), np.concatenate(counts), bounds, kernels)
            except ValueError as exc:  # a table this build cannot take
                log.info("language ID: the compiled product cannot take this model (%s); numpy's is used", exc)
                return None
            if got is None:
                log.info("language ID: the compiled product does not run on this CPU; numpy's is used")
                return None
            if np.array_equal(got.view(np.uint32), want):
                return kernels
        log.info("language ID: the compiled product does not give numpy's bits here; numpy's is used")
        return None

    def _fused_scores(self, feats: np.ndarray, counts: np.ndarray, bounds: np.ndarray,
                      kernels: int) -> np.ndarray | None:
        """``_product`` of every text (features ``feats[bounds[i]:bounds[i+1]]``, their counts) by the compiled
        product in the summation order of OpenBLAS's ``kernels``, or ``None`` where it does not run."""
        x = np.log1p(counts.astype(np.float32))  # elementwise: the bits of each text's own call
        out = np.empty((len(bounds) - 1, self._ptc.shape[1]), dtype=np.float32)
        ok = _native.langid_scores(self._ptc_rows, self._ptc.shape[1], feats, x, bounds, self._prior, out, kernels)
        return out if ok else None

    # -- the tables cached on disk (see fast_identifier)
    def save(self, folder: Path) -> None:
        """Write the tables (``.npy``, no pickles) and the model's small fields (JSON) into ``folder``, made
        whole or not at all (written beside it, then renamed). A folder left without ``meta.json`` (a removal
        cut short) is replaced; the half-written copies of writers that died are removed first."""
        _remove_dead_writers(folder)
        tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}-{os.urandom(4).hex()}")
        tmp.mkdir(parents=True)
        try:
            for name in _CACHED_ARRAYS:
                np.save(tmp / f"{name}.npy", getattr(self, name), allow_pickle=False)
            np.save(tmp / "nb_pc.npy", np.asarray(self.ident.nb_pc), allow_pickle=False)
            meta = {"format": CACHE_FORMAT, "depth": self.depth, "labels": list(self.labels),
                    "nb_classes": list(self.ident.nb_classes), "norm_probs": bool(self.ident._norm_probs),
                    "alias_pairs": [list(map(int, pair)) for pair in self.ident._alias_pairs],
                    "checksums": {name: _checksum(getattr(self, name)) for name in _CACHED_ARRAYS}}
            (tmp / "meta.json").write_text(json.dumps(meta))
            try:
                os.rename(tmp, folder)
            except OSError:
                if (folder / "meta.json").exists() or not folder.is_dir():
                    raise
                shutil.rmtree(folder)  # no meta.json: never a whole copy (one is renamed into place with it)
                os.rename(tmp, folder)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if not (folder / "meta.json").exists():  # another process's copy won the rename: fine
                raise

    @classmethod
    def load(cls, folder: Path) -> "FastLanguageIdentifier":
        """The identifier of :meth:`save`'s folder, its tables memory-mapped (read-only, shared by every process
        that maps them). ValueError/OSError if the folder is not a whole, consistent copy."""
        meta = json.loads((folder / "meta.json").read_text())
        if not isinstance(meta, dict) or meta.get("format") != CACHE_FORMAT:
            found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
            raise ValueError(f"{folder}: cache format {found!r}, expected {CACHE_FORMAT}")
        self = cls.__new__(cls)
        for name, dtype in _CACHED_ARRAYS.items():
            arr = np.load(folder / f"{name}.npy", mmap_mode="r", allow_pickle=False)
            if arr.dtype != dtype or arr.ndim != (2 if name == "_ptc" else 1):
                raise ValueError(f"{folder / name}.npy: {arr.dtype} x{arr.ndim}, expected {np.dtype(dtype)}")
            setattr(self, name, arr)
        nb_pc = np.load(folder / "nb_pc.npy", allow_pickle=False)
        n_states, n_feats = len(self._rowbase), len(self._ptc)
        if (len(self._next) % 256 or len(self._next_base) != len(self._next) or len(self._out) != n_states
                or self._ptc.shape[1] != len(meta["nb_classes"]) or nb_pc.shape != (len(meta["nb_classes"]),)
                or int(self._out.max()) >= n_feats or int(self._next.max()) >= n_states
                or int(self._rowbase.max()) + 255 >= len(self._next)):
            raise ValueError(f"{folder}: the cached tables do not fit together")
        checksums = meta.get("checksums") or {}
        for name in _CACHED_ARRAYS:  # a copy of the right shapes with other bytes: ~50 ms for all tables
            if checksums.get(name) != _checksum(getattr(self, name)):
                raise ValueError(f"{folder / name}.npy: its checksum is not the one meta.json recorded")
        self.ident = _CachedModel(meta["labels"], meta["nb_classes"], nb_pc, meta["norm_probs"],
                                  [tuple(p) for p in meta["alias_pairs"]])
        self.labels = self.ident.labels
        self.depth = int(meta["depth"])
        self._scratch()
        return self

    def _features(self, data: bytes) -> np.ndarray:
        """Feature index of every DFA state visited (in order), -1 entries removed."""
        a = np.frombuffer(data, dtype=np.uint8).astype(np.int32)
        n, d = len(a), self.depth
        nm, rb = self._next, self._rowbase
        head = min(n, d - 1)
        states = []
        state = 0
        for i in range(head):  # the first bytes have fewer than depth-1 predecessors: walk them
            state = int(nm[rb[state] + a[i]])
            states.append(state)
        if n >= d:
            m = n - d + 1
            base = np.full(m, rb[0], dtype=np.int32)
            nb = self._next_base
            for k in range(d - 1):
                base = nb[base + a[k : k + m]]
            s = np.concatenate((np.array(states, dtype=np.int32), nm[base + a[d - 1 : d - 1 + m]]))
        else:
            s = np.array(states, dtype=np.int32)
        f = self._out[s]
        return f[f >= 0]

    def _normalise(self, scores: np.ndarray, num_bytes: int) -> np.ndarray:
        """py3langid's probabilities (temperature sqrt(bytes)) and aliases, in place, as its ``rank`` does."""
        ident = self.ident
        if ident._norm_probs:
            scores *= 1.0 / math.sqrt(num_bytes or 1)
            np.exp(scores - scores.max(), out=scores)
            scores /= scores.sum()
        for i, j in ident._alias_pairs:
            if ident._norm_probs:
                scores[i] += scores[j]
                scores[j] = 0.0
            else:
                scores[i] = max(scores[i], scores[j])
                scores[j] = np.finfo(np.float32).min
        return scores

    def _normalise_many(self, scores: np.ndarray, num_bytes: list[int]) -> np.ndarray:
        """:meth:`_normalise` of every row of ``scores`` (one text each) in a few numpy calls for the batch:
        elementwise float32 steps and per-row reductions, so each row gets the bits of its own call (the tests
        compare every text with py3langid's ``rank``)."""
        ident = self.ident
        if ident._norm_probs:
            # 1 / sqrt(bytes) in float64 as math.sqrt gives it, then float32, as `scores *= <python float>`
            scale = (1.0 / np.sqrt(np.maximum(np.asarray(num_bytes, dtype=np.float64), 1.0))).astype(np.float32)
            scores *= scale[:, None]
            np.exp(scores - scores.max(axis=1, keepdims=True), out=scores)
            scores /= scores.sum(axis=1, keepdims=True)
        for i, j in ident._alias_pairs:
            if ident._norm_probs:
                scores[:, i] += scores[:, j]
                scores[:, j] = 0.0
            else:
                np.maximum(scores[:, i], scores[:, j], out=scores[:, i])
                scores[:, j] = np.finfo(np.float32).min
        return scores

    def _pick_many(self, scores: np.ndarray, languages: list[str]) -> list[tuple[str, float, str]]:
        """:meth:`_pick` of every row."""
        merged = scores[:, self._label_cols]
        rows = np.arange(len(merged))
        tops = merged.argmax(axis=1)  # the first maximum of each row, as _pick
        top_names = [self._label_names[i] for i in tops.tolist()]
        if not languages:
            return [(name, score, name) for name, score in zip(top_names, merged[rows, tops].tolist())]
        cols = np.array([self._label_index[lang] for lang in languages], dtype=np.intp)
        best = merged[:, cols].argmax(axis=1)  # max(languages, key=...): the first maximal language
        return [(languages[b], score, name) for b, score, name in
                zip(best.tolist(), merged[rows, cols[best]].tolist(), top_names)]

    def _decide(self, text: str) -> np.ndarray:
        data = self.ident._encode(text)
        scores = self._native_scores([data])[0] if _native is not None else self._raw_scores(self._features(data))
        return self._normalise(scores, len(data))

    def _walk_many(self, datas: list[bytes]) -> tuple[np.ndarray, list[int]]:
        """The feature index (or -1) at every byte of all ``datas`` in one vectorised walk, and where each
        text starts in it. The texts are joined by ``_reset``, a byte that takes every state back to the
        start state (checked at load time), so the walk through the joined bytes is each text's own walk;
        ``depth - 1`` more of them in front let every position start its window the same way."""
        d = self.depth
        sep = bytes([self._reset])
        buf = sep * (d - 1) + sep.join(datas)
        a = np.frombuffer(buf, dtype=np.uint8).astype(np.int32)
        m = len(a) - d + 1
        base = np.full(m, self._rowbase[0], dtype=np.int32)
        nb = self._next_base
        for k in range(d - 1):
            base = nb[base + a[k : k + m]]
        f = self._out[self._next[base + a[d - 1 :]]]
        starts, pos = [], 0
        for data in datas:
            starts.append(pos)
            pos += len(data) + 1
        return f, starts

    def _raw_scores(self, f: np.ndarray) -> np.ndarray:
        """py3langid's naive-Bayes scores of one text's features (``-1`` entries allowed): the features in
        first-occurrence order (its ``Counter``'s), so the float32 sums are its own."""
        f = f[f >= 0]
        n = len(f)
        if not n:
            return np.full(len(self.ident.nb_classes), 0.0 if self.ident._norm_probs else np.finfo(np.float32).min,
                           dtype=np.float32)
        positions = np.arange(n)
        first = self._first
        first[f] = n
        np.minimum.at(first, f, positions)
        idx = f[first[f] == positions]
        counts = self._counts
        np.add.at(counts, f, 1)
        found = counts[idx]
        counts[idx] = 0
        return self._product(idx, found)

    def _product(self, idx: np.ndarray, found: np.ndarray) -> np.ndarray:
        """py3langid's naive-Bayes scores from one text's distinct features (first-occurrence order) and their
        counts: its float32 product, through the same BLAS call."""
        return np.log1p(found.astype(np.float32)) @ self._ptc_rows[idx] + self.ident.nb_pc

    def _native_scores(self, datas: list[bytes]) -> np.ndarray:
        """The raw scores of every text (a row each), walked and counted by the compiled loop
        (:mod:`data_pipelines._native`) in one call per at most :data:`WALK_BYTES` of text."""
        fill = 0.0 if self.ident._norm_probs else np.finfo(np.float32).min  # a text with no feature
        out = np.empty((len(datas), len(self.ident.nb_classes)), dtype=np.float32)
        i = 0
        while i < len(datas):
            j, size = i + 1, len(datas[i])
            while j < len(datas) and size + len(datas[j]) <= WALK_BYTES:
                size += len(datas[j])
                j += 1
            buf = b"".join(datas[i:j])
            ends = np.cumsum(np.fromiter(map(len, datas[i:j]), dtype=np.int64, count=j - i))
            feats = np.empty(max(len(buf), 1), dtype=np.int32)
            counts = np.empty_like(feats)
            bounds = np.empty(j - i + 1, dtype=np.int64)
            # scratch counts of its own per call: the walk runs without the GIL, and threads share the identifier
            scratch = np.zeros(len(self._ptc), dtype=np.int32)
            _native.langid_walk(buf, ends, self._next, self._states, feats, counts, bounds, scratch,
                                self.depth)
            sizes = np.diff(bounds)
            fused = (None if self._fused is None else
                     self._fused_scores(feats[:bounds[-1]], counts[:bounds[-1]], bounds, self._fused))
            if fused is not None:
                out[i:j] = fused
            left = sizes > FUSED_MAX if fused is not None else np.ones(len(sizes), dtype=bool)  # numpy's product
            out[i:j][sizes == 0] = fill
            b = bounds.tolist()
            for k in np.flatnonzero(left & (sizes > 0)).tolist():
                out[i + k] = self._product(feats[b[k]:b[k + 1]], counts[b[k]:b[k + 1]])
            i = j
        return out

    def detect_many(self, texts: list[str], languages: list[str]) -> list[tuple[str, float, str]]:
        """:meth:`detect` of every text, the walk done once for all of them (per-call numpy overhead, not the
        bytes, is most of the cost of a short document)."""
        datas = [self.ident._encode(t) for t in texts]
        if _native is not None:
            if not datas:
                return []
            scores = self._native_scores(datas)
            return self._pick_many(self._normalise_many(scores, [len(d) for d in datas]), languages)
        if self._reset is None:
            return [self.detect(t, languages) for t in texts]
        out = []
        i = 0
        while i < len(datas):  # walks of at most WALK_BYTES (each byte holds ~22 bytes of arrays in the walk)
            j, size = i + 1, len(datas[i])
            while j < len(datas) and size + len(datas[j]) <= WALK_BYTES:
                size += len(datas[j]) + 1
                j += 1
            f, starts = self._walk_many(datas[i:j])
            for start, data in zip(starts, datas[i:j]):
                scores = self._raw_scores(f[start : start + len(data)])
                out.append(self._pick(self._normalise(scores, len(data)), languages))
            i = j
        return out

    def detect(self, text: str, languages: list[str]) -> tuple[str, float, str]:
        """``(language of `languages` scored highest, its score, the top language)`` exactly as from
        :meth:`rank` (its first entry; ties: the first listed), without building and sorting all labels."""
        return self._pick(self._decide(text), languages)

    def _pick(self, scores: np.ndarray, languages: list[str]) -> tuple[str, float, str]:
        merged = scores[self._label_cols]
        i = int(merged.argmax())  # the first maximum: rank's stable sort keeps label order among ties
        top, top_score = self._label_names[i], float(merged[i])
        if not languages:
            return top, top_score, top
        best = max(languages, key=lambda lang: merged[self._label_index[lang]])
        return best, float(merged[self._label_index[best]]), top

    def rank(self, text: str) -> list[tuple[str, float]]:
        merged: dict[str, float] = {}
        for lang, score in zip(self.ident.nb_classes, self._decide(text).tolist()):
            merged.setdefault(lang, score)
        return sorted(merged.items(), key=itemgetter(1), reverse=True)


def _trie_depth(nm: np.ndarray, rows: np.ndarray) -> int:
    """Largest breadth-first distance of any state from the start state (the deepest trie node).

    ``nm``: the distinct 256-entry transition rows, flat; ``rows``: the row of each state. Transitions depend
    only on a state's row, so each level expands the rows of its new states, and each row at most once: a
    row already expanded at an earlier level leads only to states seen by now. New states and rows are found
    with mark arrays instead of sorting: about 0.08 s for the bundled model (0.2-0.3 s expanding every level's
    distinct rows), and the same depth.
    """
    table = nm.reshape(-1, 256)
    num_states = len(rows)
    seen = np.zeros(num_states, dtype=bool)
    seen[0] = True
    expanded = np.zeros(len(table), dtype=bool)
    frontier = np.asarray(rows[:1], dtype=np.intp)
    depth = 0
    while len(frontier):
        expanded[frontier] = True
        fresh = np.zeros(num_states, dtype=bool)
        fresh[table[frontier].ravel()] = True
        fresh &= ~seen
        if not fresh.any():
            break
        depth += 1
        seen |= fresh
        todo = np.zeros(len(table), dtype=bool)
        todo[rows[fresh]] = True
        todo &= ~expanded
        frontier = np.flatnonzero(todo)
    return max(depth, 1)


class _CachedModel:
    """The small fields of a py3langid ``LanguageIdentifier`` that :class:`FastLanguageIdentifier` reads, for an
    identifier loaded from the cache (the 68 MB model is then not decompressed)."""

    def __init__(self, labels: list[str], nb_classes: list[str], nb_pc: np.ndarray, norm_probs: bool,
                 alias_pairs: list[tuple[int, int]]):
        from py3langid.langid import LanguageIdentifier

        self.labels, self.nb_classes, self.nb_pc = tuple(labels), nb_classes, nb_pc
        self._norm_probs, self._alias_pairs = norm_probs, alias_pairs
        self._encode = LanguageIdentifier._encode


def _checksum(arr: np.ndarray) -> str:
    """A cheap fingerprint of a table's values (not cryptographic: it catches a corrupted or mixed-up copy)."""
    if arr.dtype.kind == "f":
        total = float(np.sum(arr, dtype=np.float64))
    else:  # int64 sums wrap the same way every time; the weighted sum also catches values moved around
        flat = arr.reshape(-1)
        total = int(np.sum(flat, dtype=np.int64)) ^ int(np.sum(flat[::7], dtype=np.int64)) * 31
    return f"{arr.dtype.str}:{arr.shape}:{total!r}"


def _remove_dead_writers(folder: Path, pattern: str | None = None) -> None:
    """Remove the half-written copies (``.<name>.tmp-<pid>-<token>``) beside ``folder`` whose writer is no longer
    running on this machine (a process killed while it saved the tables, or while it removed a stale copy);
    ``pattern`` matches other names than ``folder``'s."""
    try:
        siblings = list(folder.parent.glob(pattern or f".{folder.name}.tmp-*"))
    except OSError:
        return
    for tmp in siblings:
        try:
            pid = int(tmp.name.rsplit(".tmp-", 1)[1].split("-")[0])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except (ValueError, IndexError, OSError):  # not ours, or a live writer we may not signal
            continue


def mark_used(folder: Path, now: float | None = None) -> None:
    """Record that this process uses the copy in ``folder`` (its ``last_used`` file, touched at most once a day)
    and, when it does, remove the copies beside it that no process has used for :data:`STALE_AFTER_DAYS`: those
    of another py3langid, numpy or virtual environment, ~130 MB each. A copy from before the stamp existed
    counts as used when its folder was made. A cache that cannot be written is left as it is."""
    now = time.time() if now is None else now
    stamp = folder / _STAMP
    try:
        stamped = stamp.stat().st_mtime
    except FileNotFoundError:
        stamped = -math.inf  # never stamped: this process is the first user
    except OSError:
        return
    if now - stamped < 86400:
        return
    try:
        stamp.touch()
        os.utime(stamp, (now, now))
    except OSError:
        return
    _remove_dead_writers(folder, ".langid-*.tmp-*")
    try:
        others = [p for p in folder.parent.glob("langid-*") if p.name != folder.name and p.is_dir()]
    except OSError:
        return
    for other in others:
        try:
            used = (other / _STAMP).stat().st_mtime if (other / _STAMP).exists() else other.stat().st_mtime
        except OSError:
            continue
        if now - used <= STALE_AFTER_DAYS * 86400:
            continue
        # renamed first, so that no process sees a half-removed copy under its own name
        doomed = other.with_name(f".{other.name}.tmp-{os.getpid()}-{os.urandom(4).hex()}")
        try:
            os.rename(other, doomed)
        except OSError:
            continue
        log.info("removed the language-ID cache %s: not used for %d days", other, (now - used) // 86400)
        shutil.rmtree(doomed, ignore_errors=True)


def cache_folder() -> Path | None:
    """Where the identifier's tables are cached: ``$DATA_PIPELINES_CACHE_DIR`` (``none`` turns the cache off),
    else ``$XDG_CACHE_HOME/data_pipelines`` or ``~/.cache/data_pipelines``; a subfolder per model file."""
    from py3langid.langid import MODEL_DIR, MODEL_FILE

    env = os.environ.get("DATA_PIPELINES_CACHE_DIR")
    if env is not None and env.strip().lower() in ("", "none", "off", "false", "0"):
        return None
    try:
        root = Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "data_pipelines"
    except RuntimeError:  # no HOME and no passwd entry (a container's arbitrary uid): no cache
        return None
    import py3langid

    model = (Path(MODEL_DIR) / MODEL_FILE).resolve()
    st = model.stat()
    key = json.dumps([CACHE_FORMAT, getattr(py3langid, "__version__", "?"), str(model), st.st_size, st.st_mtime_ns,
                      np.__version__.split(".")[0]])
    return root / f"langid-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


@functools.lru_cache(maxsize=1)
def fast_identifier() -> Any:
    """The bundled model with the vectorised walk, or py3langid's own identifier if its layout differs.

    Decompressing py3langid's model and building the tables costs about 1.3 s per process; the tables are
    therefore cached (:func:`cache_folder`, ~140 MB, rebuilt when py3langid's model file changes) and later
    processes memory-map them: about 0.05 s with the checksums, and the pages are shared by every worker. A
    cache that cannot be read or written is rebuilt or skipped, never an error; copies that no process has used
    for :data:`STALE_AFTER_DAYS` are removed (:func:`mark_used`)."""
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    folder = None
    try:
        folder = cache_folder()
        if folder is not None and (folder / "meta.json").exists():
            fast = FastLanguageIdentifier.load(folder)
            mark_used(folder)
            return fast
    except (OSError, EOFError, ValueError, KeyError, TypeError, IndexError, AttributeError) as e:  # rebuilt below
        log.info("language-ID cache %s unusable (%s): rebuilding it", folder, e)
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
    ident = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    try:
        fast = FastLanguageIdentifier(ident)
    except (AttributeError, KeyError, TypeError, ValueError):  # another py3langid layout: exact but slower
        return ident
    if folder is not None:
        try:
            fast.save(folder)
            mark_used(folder)
        except OSError as e:  # a read-only home, a full disk: the next process builds the tables again
            log.info("language-ID tables not cached in %s: %s", folder, e)
    return fast
