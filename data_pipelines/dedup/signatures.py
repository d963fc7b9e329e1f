"""Stage 1 of dedup, run once per shard in parallel: exact hashes and MinHash band hashes to one file.

Document keys
-------------
A document is identified by its *global key* ``shard_index << 32 | row``: ``row`` is the document's
position (0-based) in the stream of texts the stage was given for that shard. Keys order documents by
shard, then by row, so "keep the smallest key" keeps the first copy in corpus order, and splitting a corpus
into 1 or N contiguous shards keeps the same documents. Shard indices must be unique across all sources
of one dedup run (the executor numbers shards globally) and below 2**31; a shard holds fewer than 2**32
documents. The final filter stage must enumerate the same documents in the same order.

Signature file (an uncompressed ``.npz`` written by :func:`data_pipelines.dedup.io.save_arrays`)
---------------------------------------------------------------------------------------------------
``meta``: format, shard, num_docs, kind, which dedup kinds ran, the MinHash parameters and their
fingerprint; ``exact``: ``(num_docs, 2)`` uint64 (high, low) 128-bit content hashes; ``band_rows``:
uint32 rows of the documents that have shingles; ``bands``: ``(bands, len(band_rows))`` uint64 band
hashes, band-major so the bucket step can take a band range of a shard as one slice; ``sig``:
``(len(band_rows), num_perm)`` uint32 full signatures (candidate verification estimates Jaccard from them);
with ``verify=exact`` also ``shingles`` (uint32 distinct shingle values of those documents, concatenated,
sorted within each) and ``shingle_offsets`` (``len(band_rows) + 1`` int64 bounds into it).
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any, Iterable

import numpy as np

from data_pipelines.dedup.config import DedupConfig, as_dedup_config
from data_pipelines.dedup.io import ArrayFile, save_arrays
from data_pipelines.dedup.minhash import exact_hash, hasher_for
from data_pipelines.stats import StageStats
from pretrain.core.errors import ConfigError, DataError

log = logging.getLogger(__name__)

FORMAT = "dedup-signatures/2"
ROW_BITS = 32
MAX_SHARD = 1 << 31


def doc_key(shard: int, row: int | np.ndarray) -> Any:
    """Global document key(s) of ``row`` in shard ``shard`` (see the module docstring)."""
    return (np.uint64(shard) << np.uint64(ROW_BITS)) | np.asarray(row, dtype=np.uint64)


def split_keys(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(shard, row) arrays of global keys."""
    keys = np.asarray(keys, dtype=np.uint64)
    return (keys >> np.uint64(ROW_BITS)).astype(np.int64), (keys & np.uint64(0xFFFFFFFF)).astype(np.int64)


def signature_stage(
    shard_index: int, texts: Iterable[str], out_path: str, cfg: Any, kind: str | None = None
) -> StageStats:
    """Hash every text of shard ``shard_index`` and write the signature file ``out_path``.

    ``cfg`` is a :class:`DedupConfig` (or the ``dedup`` config mapping); ``kind`` (``web``, ``code``...)
    picks the per-kind MinHash parameters, all texts of one shard share it. Streams ``texts`` in batches
    of ``cfg.batch_size``: memory is one batch plus the per-document hashes (16 + 8*bands bytes each).
    Returns the stage's counters (``extra["no_shingles"]``: documents too empty for near-dedup).
    """
    dcfg: DedupConfig = as_dedup_config(cfg)
    if not isinstance(shard_index, (int, np.integer)) or not 0 <= int(shard_index) < MAX_SHARD:
        raise ConfigError(f"dedup shard index {shard_index!r}: expected an integer in [0, {MAX_SHARD})")
    shard_index = int(shard_index)
    params = dcfg.params_for(kind) if dcfg.minhash else None
    hasher = hasher_for(params) if params is not None else None
    stats = StageStats()
    exact_parts: list[np.ndarray] = []
    row_parts: list[np.ndarray] = []
    band_parts: list[np.ndarray] = []
    sig_parts: list[np.ndarray] = []
    shingle_parts: list[np.ndarray] = []
    length_parts: list[np.ndarray] = []
    keep_shingles = hasher is not None and dcfg.verify == "exact"
    num_docs = 0
    batch: list[str] = []

    def flush() -> None:
        nonlocal num_docs
        if not batch:
            return
        if dcfg.exact:
            exact_parts.append(np.array([exact_hash(t) for t in batch], dtype=np.uint64).reshape(-1, 2))
        if hasher is not None:
            if keep_shingles:
                sig, counts, values, lengths = hasher.signatures_and_shingle_sets(batch)
                shingle_parts.append(values)
                length_parts.append(lengths[counts > 0])
            else:
                sig, counts = hasher.signatures_and_counts(batch)
            has = counts > 0
            rows = np.flatnonzero(has)
            row_parts.append((rows + num_docs).astype(np.uint32))
            band_parts.append(hasher.band_hashes(sig[has]))
            sig_parts.append(sig[has])
            stats.extra["no_shingles"] = stats.extra.get("no_shingles", 0) + int(len(batch) - len(rows))
        num_docs += len(batch)
        batch.clear()

    for text in texts:
        if not isinstance(text, str):
            raise TypeError(f"dedup shard {shard_index}: expected str texts, got {type(text).__name__}")
        stats.seen(text)
        stats.kept(text)
        batch.append(text)
        if len(batch) >= dcfg.batch_size:
            flush()
            if num_docs >= 1 << ROW_BITS:
                raise DataError(f"dedup shard {shard_index} holds over 2**32 documents; split it further")
    flush()

    arrays: dict[str, np.ndarray] = {}
    if dcfg.exact:
        arrays["exact"] = np.concatenate(exact_parts) if exact_parts else np.zeros((0, 2), np.uint64)
    if params is not None:
        arrays["band_rows"] = np.concatenate(row_parts) if row_parts else np.zeros(0, np.uint32)
        arrays["bands"] = (
            np.concatenate(band_parts, axis=1) if band_parts else np.zeros((params.bands, 0), np.uint64)
        )
        arrays["sig"] = np.concatenate(sig_parts) if sig_parts else np.zeros((0, params.num_perm), np.uint32)
        if keep_shingles:
            lengths = np.concatenate(length_parts) if length_parts else np.zeros(0, np.int64)
            arrays["shingles"] = np.concatenate(shingle_parts) if shingle_parts else np.zeros(0, np.uint32)
            arrays["shingle_offsets"] = np.concatenate(([0], np.cumsum(lengths))).astype(np.int64)
    meta = {
        "format": FORMAT,
        "shard": shard_index,
        "num_docs": num_docs,
        "kind": kind,
        "exact": bool(dcfg.exact),
        "minhash": params is not None,
        "params": asdict(params) if params is not None else None,
        "fingerprint": params.fingerprint if params is not None else None,
        "shingles": keep_shingles,
    }
    save_arrays(out_path, arrays, meta)
    log.debug("dedup signatures: shard %d, %d documents -> %s", shard_index, num_docs, out_path)
    return stats


def check_exact(path: str, exact: np.ndarray, num_docs: int) -> None:
    """The ``exact`` array of a signature file holds one (high, low) hash per document."""
    if exact.shape != (num_docs, 2):
        raise DataError(f"dedup signature file {path}: exact hashes {exact.shape}, expected ({num_docs}, 2)")


def check_bands(path: str, bands: np.ndarray, rows: np.ndarray, num_docs: int) -> None:
    """``bands`` (bands, len(rows)) and ``band_rows`` (sorted rows below ``num_docs``) of a signature file agree."""
    if (bands.ndim != 2 or rows.ndim != 1 or bands.shape[1] != len(rows)
            or (len(rows) and (int(rows.max()) >= num_docs or np.any(np.diff(rows.astype(np.int64)) <= 0)))):
        raise DataError(f"dedup signature file {path}: band arrays do not match its {num_docs} documents")


def open_signatures(path: str, cfg: DedupConfig) -> ArrayFile:
    """Open a signature file and check it was built with ``cfg`` (a stale file names itself)."""
    f = ArrayFile(path, "dedup signature file")
    meta = f.meta
    if meta.get("format") != FORMAT:
        raise DataError(f"dedup signature file {path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    if bool(meta["exact"]) != bool(cfg.exact) or bool(meta["minhash"]) != bool(cfg.minhash):
        raise DataError(
            f"dedup signature file {path} was written with exact={meta['exact']}, minhash={meta['minhash']} "
            f"but the config says exact={cfg.exact}, minhash={cfg.minhash}; rerun the signature stage"
        )
    if cfg.minhash and cfg.verify == "exact" and not meta.get("shingles"):
        raise DataError(
            f"dedup signature file {path} holds no shingle sets, but dedup.verify=exact needs them; rerun the "
            "signature stage with verify=exact"
        )
    if cfg.minhash:
        expected = cfg.params_for(meta.get("kind"))
        if meta.get("params") != asdict(expected):
            raise DataError(
                f"dedup signature file {path} was written with MinHash parameters {meta.get('params')} but the "
                f"config gives {asdict(expected)} for kind {meta.get('kind')!r}; rerun the signature stage"
            )
    return f
