"""Vectorised MinHash: text -> shingle hashes -> signatures -> band hashes, plus the exact content hash.

Why hand-written instead of ``datasketch``: datasketch hashes every shingle with SHA-1 in a Python loop
and reduces ``(a*x+b) % p`` with numpy's (unvectorised) 64-bit division, one document at a time. Here a
whole batch of documents is one numpy computation:

1. *units* (words, ``\\w+`` tokens or characters) of the normalised text are hashed to uint64 -- words
   and tokens with xxh3 (one C call per unit through ``map``), characters by a splitmix64 mix of their
   code points;
2. an n-gram's hash is ``mix(sum_i unit[j+i] * C_i)`` (distinct odd constants ``C_i``, wrapping uint64
   arithmetic, splitmix64 finaliser), computed for all windows of the batch at once; its top 32 bits are
   the shingle value ``x`` (a distinct shingle pair collides with probability 2**-32, as with
   datasketch's 32-bit SHA-1 prefixes);
3. permutation ``k`` is Dietzfelbinger's multiply-add-shift hash ``h_k(x) = ((a_k*x + b_k) mod 2**64)
   >> 32`` with odd random ``a_k`` and random ``b_k`` (64-bit). For 32-bit keys this family is strongly
   universal (pairwise independent) -- the same guarantee as the textbook ``(a*x + b) mod p`` -- and it
   is injective on 32-bit keys before the shift. It costs two vector operations per cell (multiply, add;
   wrap-around is free) where a Mersenne-prime reduction needs six more (two folds, each shift/and/add):
   measured here, the prime version made the signature step 2.5x slower for the same estimator quality.
   A single Mersenne fold is *not* enough: its value still follows ``a*x`` monotonically in ``x``, every
   permutation then favours the same small shingles and the estimator's variance doubles (measured);
4. the signature is the per-document minimum over its shingles (``np.minimum.reduceat`` along the
   shingle axis of a permutation-major block of 4096 shingles, so every inner loop is long and
   contiguous); the top 32 bits of that minimum are stored (uint32: the minimum of the top bits);
5. band ``i``'s hash is xxh3-64 of the bytes of signature columns ``[i*r, (i+1)*r)``, seeded with the
   parameter fingerprint (so different parameter sets never share buckets).

A document without any unit (empty after normalisation) gets the all-``EMPTY`` signature and no band
hashes: it never becomes anyone's near-duplicate (exact dedup still sees it). A document with fewer than
``ngram`` units has one shingle: all its units.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any, Iterable, Sequence

import numpy as np
import xxhash

from data_pipelines.dedup.config import DedupConfig, MinHashParams, as_dedup_config

EMPTY = np.uint32(np.iinfo(np.uint32).max)  # signature value of a document without shingles
_BLOCK_SHINGLES = 4096  # shingles per vectorised block: num_perm x 4096 uint64 = 3.5 MiB at 112 permutations
_TOKEN_RE = re.compile(r"\w+")
_ASCII_SEPARATORS = bytes.maketrans(b"\x1c\x1d\x1e\x1f", b"    ")
_U64 = np.uint64


def normalize(text: str, lowercase: bool = True) -> str:
    """NFC, optionally lowercased, every run of (Unicode) whitespace collapsed to one space, stripped."""
    text = unicodedata.normalize("NFC", text)
    if lowercase:
        text = text.lower()
    return " ".join(text.split())


def exact_hash(text: str) -> tuple[int, int]:
    """128-bit xxh3 of the normalised (NFC, lowercased, whitespace-collapsed) text as (high, low) words.

    128 bits because at a billion documents a 64-bit hash would already have a ~3% chance of merging two
    different documents somewhere.
    """
    digest = xxhash.xxh3_128_intdigest(normalize(text, True).encode("utf-8", "surrogatepass"))
    return digest >> 64, digest & 0xFFFFFFFFFFFFFFFF


def _mix64(z: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on a uint64 array (wrapping arithmetic; bijective)."""
    z = z + _U64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> _U64(27))) * _U64(0x94D049BB133111EB)
    return z ^ (z >> _U64(31))


def _unit_hashes(text: str, params: MinHashParams) -> np.ndarray:
    """uint64 hash of every unit (word / token / character) of one document, in order."""
    if params.shingle == "word" and text.isascii():
        # fast path, same units as below: NFC is the identity on ASCII, bytes.lower() is str.lower() there,
        # and str.split() also splits on \x1c-\x1f, which bytes.split() would not
        raw = text.encode("ascii").translate(_ASCII_SEPARATORS)
        data: Sequence[bytes] = (raw.lower() if params.lowercase else raw).split()
        return np.fromiter(map(xxhash.xxh3_64_intdigest, data), dtype=np.uint64, count=len(data))
    norm = normalize(text, params.lowercase)
    if params.shingle == "char":
        cps = np.frombuffer(norm.encode("utf-32-le", "surrogatepass"), dtype="<u4").astype(np.uint64)
        return _mix64(cps)
    if params.shingle == "token":
        data = [u.encode("utf-8", "surrogatepass") for u in _TOKEN_RE.findall(norm)]
    else:
        data = norm.encode("utf-8", "surrogatepass").split(b" ") if norm else []
    return np.fromiter(map(xxhash.xxh3_64_intdigest, data), dtype=np.uint64, count=len(data))


class MinHasher:
    """Signatures and band hashes for one :class:`MinHashParams` (permutations drawn once from ``seed``)."""

    def __init__(self, params: MinHashParams):
        self.params = params
        rng = np.random.Generator(np.random.PCG64(params.seed))
        self.a = rng.integers(0, 1 << 63, size=params.num_perm, dtype=np.uint64) * _U64(2) + _U64(1)
        self.b = rng.integers(0, np.iinfo(np.uint64).max, size=params.num_perm, dtype=np.uint64, endpoint=True)
        # odd multipliers combining the units of an n-gram (position-dependent, so order matters)
        self.combine = rng.integers(0, 1 << 63, size=params.ngram, dtype=np.uint64) * _U64(2) + _U64(1)
        self.band_seed = params.fingerprint

    # -- shingles ---------------------------------------------------------------------------------------
    def shingles(self, texts: Iterable[str]) -> tuple[np.ndarray, np.ndarray]:
        """(x, counts): the 32-bit shingle values of all documents concatenated, and shingles per document."""
        n = self.params.ngram
        unit_arrays = [_unit_hashes(t, self.params) for t in texts]
        counts = np.array([max(len(u) - n + 1, 1) if len(u) else 0 for u in unit_arrays], dtype=np.int64)
        if not unit_arrays or counts.sum() == 0:
            return np.zeros(0, dtype=np.uint64), counts
        units = np.concatenate(unit_arrays)
        lengths = np.array([len(u) for u in unit_arrays], dtype=np.int64)
        starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
        ends = starts + lengths
        total = len(units)
        # every window start of the concatenation; keep those whose window stays inside its document
        num_windows = max(total - n + 1, 0)
        if num_windows:
            acc = units[0:num_windows] * self.combine[0]
            for i in range(1, n):
                acc += units[i : num_windows + i] * self.combine[i]
            doc_end = np.repeat(ends, lengths)[:num_windows]
            valid = np.arange(num_windows) + n <= doc_end
            window_doc = np.repeat(np.arange(len(lengths)), lengths)[:num_windows][valid]
            windows = acc[valid]
        else:
            window_doc = np.zeros(0, dtype=np.int64)
            windows = np.zeros(0, dtype=np.uint64)
        short = np.flatnonzero((lengths > 0) & (lengths < n))
        if len(short):  # documents shorter than one n-gram: a single shingle of all their units
            extra = np.array(
                [
                    (units[starts[d] : ends[d]] * self.combine[: lengths[d]]).sum(dtype=np.uint64)
                    for d in short
                ],
                dtype=np.uint64,
            )
            windows = np.concatenate((windows, extra))
            window_doc = np.concatenate((window_doc, short))
            order = np.argsort(window_doc, kind="stable")
            windows = windows[order]
        x = _mix64(windows) >> _U64(32)
        return x, counts

    # -- signatures -------------------------------------------------------------------------------------
    def signatures(self, texts: Iterable[str]) -> np.ndarray:
        """(n_docs, num_perm) uint32 MinHash signatures; ``EMPTY`` rows for documents without shingles."""
        return self.signatures_and_counts(texts)[0]

    def signatures_and_counts(self, texts: Iterable[str]) -> tuple[np.ndarray, np.ndarray]:
        """Signatures plus the number of shingles of each document (0: no signature)."""
        x, counts = self.shingles(texts)
        return self._signatures_from_shingles(x, counts), counts

    def signatures_and_shingle_sets(
        self, texts: Iterable[str]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Signatures, shingle counts, and every document's *distinct* shingle values (sorted, uint32,
        concatenated) with their per-document lengths: what exact candidate verification compares."""
        x, counts = self.shingles(texts)
        sig = self._signatures_from_shingles(x, counts)
        doc_of = np.repeat(np.arange(len(counts), dtype=np.uint64), counts)
        combined = np.unique((doc_of << _U64(32)) | x)  # sorted by document, then value; duplicates gone
        values = (combined & _U64(0xFFFFFFFF)).astype(np.uint32)
        lengths = np.bincount((combined >> _U64(32)).astype(np.int64), minlength=len(counts))
        return sig, counts, values, lengths

    def _signatures_from_shingles(self, x: np.ndarray, counts: np.ndarray) -> np.ndarray:
        num_perm = self.params.num_perm
        sig = np.full((num_perm, len(counts)), np.iinfo(np.uint64).max, dtype=np.uint64)
        doc_of = np.repeat(np.arange(len(counts)), counts)
        a, b = self.a[:, None], self.b[:, None]
        for r0 in range(0, len(x), _BLOCK_SHINGLES):
            r1 = min(len(x), r0 + _BLOCK_SHINGLES)
            y = a * x[None, r0:r1]  # (num_perm, block): wraps mod 2**64 by design
            y += b
            d = doc_of[r0:r1]
            seg = np.flatnonzero(np.concatenate(([True], d[1:] != d[:-1])))
            mins = np.minimum.reduceat(y, seg, axis=1)
            docs = d[seg]
            sig[:, docs] = np.minimum(sig[:, docs], mins)
        out = (sig.T >> _U64(32)).astype(np.uint32)
        out[counts == 0] = EMPTY
        return out

    # -- bands ------------------------------------------------------------------------------------------
    def band_hashes(self, sig: np.ndarray) -> np.ndarray:
        """(bands, n_docs) uint64: xxh3 of each band's signature bytes, seeded with the parameter id.

        Band-major so a band range of a whole shard is one contiguous slice (the bucket step reads bands
        in ranges). Rows of documents without shingles are meaningless and must be masked by the caller.
        """
        bands, rows = self.params.bands, self.params.rows
        used = np.ascontiguousarray(sig[:, : bands * rows]).astype("<u4", copy=False)
        out = np.empty((bands, len(sig)), dtype=np.uint64)
        width = rows * 4
        h = xxhash.xxh3_64_intdigest
        seed = self.band_seed
        for i in range(len(sig)):
            buf = used[i].tobytes()
            out[:, i] = [h(buf[j * width : (j + 1) * width], seed) for j in range(bands)]
        return out


_HASHERS: dict[MinHashParams, MinHasher] = {}


def hasher_for(params: MinHashParams) -> MinHasher:
    """A cached :class:`MinHasher` (drawing permutations is cheap, but batches call this often)."""
    hasher = _HASHERS.get(params)
    if hasher is None:
        hasher = _HASHERS[params] = MinHasher(params)
    return hasher


def resolve_params(cfg: Any, kind: str | None = None) -> MinHashParams:
    """:class:`MinHashParams` from a :class:`MinHashParams`, a :class:`DedupConfig` or a config mapping."""
    if isinstance(cfg, MinHashParams):
        return cfg
    if not isinstance(cfg, DedupConfig):
        cfg = as_dedup_config(cfg)
    return cfg.params_for(kind)


def compute_signatures(texts: Iterable[str], cfg: Any, kind: str | None = None) -> np.ndarray:
    """MinHash signatures of ``texts``: a ``(n_docs, num_perm)`` uint32 array (see the module docstring).

    ``cfg`` is a :class:`DedupConfig` (``kind`` picks the per-kind parameters), a config mapping, or a
    resolved :class:`MinHashParams`. Rows of documents without any shingle are all :data:`EMPTY`.
    """
    return hasher_for(resolve_params(cfg, kind)).signatures(list(texts))


def estimate_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> float:
    """Fraction of agreeing signature entries: the MinHash estimate of the Jaccard similarity
    (0 when either document has no shingles)."""
    if sig_a.shape != sig_b.shape:
        raise ValueError(f"signatures of different lengths: {sig_a.shape} vs {sig_b.shape}")
    if np.all(sig_a == EMPTY) or np.all(sig_b == EMPTY):
        return 0.0
    return float(np.mean(sig_a == sig_b))
