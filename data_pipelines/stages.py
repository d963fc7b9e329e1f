"""The pipeline's stages and where their files live.

=============  ========  ====================================================================================
stage          scope     output (under ``output_dir``)
=============  ========  ====================================================================================
read           per part  ``work/read/<source>/part-N.parquet``: reader + filters (id, text, metadata JSON)
signatures     per part  ``work/signatures/<source>/part-N.npz``: dedup hashes (dedup helper's format)
cluster        global    ``work/dedup/``: removal lists per part, ``dedup.json`` (cluster sizes)
documents      per part  ``documents/<source>/part-N.parquet`` through ``datasets``: the final documents
tokenizer      global    ``tokenizer/tokenizer.json``: trained on the documents, or the given file
tokenize       per part  ``tokens/<source>/part-N.{bin,idx}``: indexed token shards, EOD after each document
report         global    ``manifest.json``, ``report.json``, ``report.md``, ``report/*.png``
=============  ========  ====================================================================================

Per-part functions run in executor workers: they take a :class:`Task` (plain, picklable config + the part)
and a progress counter, write their output under a temporary name, rename it, and write the completion
marker last (:mod:`data_pipelines.executor`). Nothing in a data file depends on time, worker count or
sharding: rows keep input order, parquet and JSON writing is deterministic.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from data_pipelines.document import Document
from data_pipelines.executor import Part, Progress, remove_stale_tmp, write_marker
from data_pipelines.stats import StageStats
from pretrain.core.atomic import atomic_write, commit

log = logging.getLogger(__name__)

# Provenance fields promoted to their own (string) columns in documents/*.parquet; every other metadata key
# goes to the ``metadata`` JSON column. One schema for every source, so all documents load as one dataset.
PROVENANCE = ("file", "url", "date", "title", "book_id", "repo", "path", "language", "license")
COLUMNS = ("id", "text", "source", *PROVENANCE, "metadata")


@dataclass(frozen=True)
class Layout:
    """Every path the pipeline writes, in one place."""

    root: Path

    @property
    def work(self) -> Path:
        return self.root / "work"

    def read_data(self, part: Part) -> Path:
        return self.work / "read" / part.source / f"{part.name}.parquet"

    def signatures(self, part: Part) -> Path:
        return self.work / "signatures" / part.source / f"{part.name}.npz"

    @property
    def dedup_dir(self) -> Path:
        return self.work / "dedup"

    def documents(self, part: Part) -> Path:
        return self.root / "documents" / part.source / f"{part.name}.parquet"

    @property
    def tokenizer_file(self) -> Path:
        return self.root / "tokenizer" / "tokenizer.json"

    def tokens_prefix(self, part: Part) -> Path:
        return self.root / "tokens" / part.source / part.name

    def marker(self, stage: str, part: Part | None = None) -> Path:
        if part is None:
            return self.work / "markers" / f"{stage}.done.json"
        return self.work / "markers" / stage / part.source / f"{part.name}.done.json"

    def output(self, stage: str, part: Part | None = None) -> Path | None:
        """The file whose presence (with the marker) means the unit is complete."""
        if stage == "read":
            return self.read_data(part)
        if stage == "signatures":
            return self.signatures(part)
        if stage == "documents":
            return self.documents(part)
        if stage == "tokenize":
            return Path(f"{self.tokens_prefix(part)}.idx")
        if stage == "tokenizer":
            return self.tokenizer_file
        if stage == "cluster":
            return self.dedup_dir / "dedup.json"
        if stage == "report":
            return self.root / "report.json"
        raise KeyError(stage)


@dataclass(frozen=True)
class Task:
    """What a worker needs for one part: the plain config sections, the part, and the stage fingerprint."""

    root: str
    part: Part
    fingerprint: str
    source: dict[str, Any]
    filters: dict[str, Any]
    dedup: dict[str, Any]
    tokenizer: dict[str, Any]
    batch_size: int

    @property
    def layout(self) -> Layout:
        return Layout(Path(self.root))


# --------------------------------------------------------------------------------------- worker caches
_BLOCKS: dict[tuple[str, str], list] = {}
_TOKENIZERS: dict[tuple[str, int], Any] = {}


def _blocks_for(task: Task) -> list:
    """Filter blocks of the task's source, built once per worker process (a language model loads once)."""
    from data_pipelines.filters import filters_for_source

    key = (task.part.source, json.dumps(task.filters, sort_keys=True))
    if key not in _BLOCKS:
        _BLOCKS[key] = filters_for_source(task.filters, task.part.source, task.part.kind)
    return _BLOCKS[key]


def _tokenizer_for(path: Path):
    from pretrain.core.tokenizer import load_tokenizer

    key = (str(path), path.stat().st_mtime_ns)
    if key not in _TOKENIZERS:
        tok = load_tokenizer(path)
        tok.encode_special_tokens = True  # "<|endoftext|>" inside a document is text, never a control token
        _TOKENIZERS.clear()
        _TOKENIZERS[key] = tok
    return _TOKENIZERS[key]


# ------------------------------------------------------------------------------------- parquet helpers
def _work_schema():
    import pyarrow as pa

    return pa.schema([("id", pa.string()), ("text", pa.string()), ("metadata", pa.string())])


def _meta_json(meta: dict[str, Any]) -> str:
    return json.dumps(meta, sort_keys=True, ensure_ascii=False, default=str)


class _WorkWriter:
    """Streams documents into a work parquet file in row groups of ``batch_size`` (bounded memory)."""

    def __init__(self, path: Path, batch_size: int):
        import pyarrow.parquet as pq

        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        self.writer = pq.ParquetWriter(self.tmp, _work_schema(), compression="zstd")
        self.batch_size = batch_size
        self.rows: dict[str, list] = {"id": [], "text": [], "metadata": []}
        self.count = 0

    def add(self, doc: Document) -> None:
        self.rows["id"].append(doc.id)
        self.rows["text"].append(doc.text)
        self.rows["metadata"].append(_meta_json(doc.metadata))
        self.count += 1
        if len(self.rows["id"]) >= self.batch_size:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa

        if self.rows["id"]:
            self.writer.write_table(pa.table(self.rows, schema=_work_schema()))
            self.rows = {"id": [], "text": [], "metadata": []}

    def close(self) -> None:
        self._flush()
        self.writer.close()
        commit(self.tmp, self.path)

    def abort(self) -> None:
        try:
            self.writer.close()
        finally:
            self.tmp.unlink(missing_ok=True)


def iter_work_docs(path: Path, source: str, batch_size: int, columns=("id", "text", "metadata")) -> Iterator[Document]:
    """The documents of a work parquet file, in order."""
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    for batch in pf.iter_batches(batch_size=batch_size, columns=list(columns)):
        cols = batch.to_pydict()
        for i in range(batch.num_rows):
            meta = json.loads(cols["metadata"][i]) if "metadata" in cols else {}
            yield Document(cols["id"][i] if "id" in cols else "", cols["text"][i], source, meta)


def iter_texts(path: Path, batch_size: int) -> Iterator[str]:
    """Only the ``text`` column of a parquet file, in order."""
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    for batch in pf.iter_batches(batch_size=batch_size, columns=["text"]):
        yield from batch.column(0).to_pylist()


def text_bytes(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


# ----------------------------------------------------------------------------------------------- stages
def read_part(task: Task, progress: Progress) -> dict[str, Any]:
    """Stage ``read``: stream the part's files through its reader and its filter blocks."""
    from data_pipelines.filters import run_blocks
    from data_pipelines.sources import make_reader

    part, lay = task.part, task.layout
    out = lay.read_data(part)
    remove_stale_tmp(out.parent, part.name)
    reader = make_reader(part.source, task.source)
    blocks = _blocks_for(task)
    read_stats = StageStats()
    block_stats = [StageStats() for _ in blocks]

    def docs() -> Iterator[Document]:
        for f, size in zip(part.files, part.sizes):
            for doc in reader.read(f, read_stats):
                progress.update(docs=1)
                yield doc
            progress.update(units=size)

    writer = _WorkWriter(out, task.batch_size)
    try:
        for doc in run_blocks(blocks, docs(), block_stats):
            writer.add(doc)
    except BaseException:
        writer.abort()
        raise
    writer.close()
    payload = {
        "part": part.label,
        "read": read_stats.to_dict(),
        "filters": [{"name": b.name, "stats": s.to_dict()} for b, s in zip(blocks, block_stats)],
        "docs": writer.count,
    }
    write_marker(lay.marker("read", part), task.fingerprint, payload)
    return payload


def signatures_part(task: Task, progress: Progress) -> dict[str, Any]:
    """Stage ``signatures``: dedup hashes of the part's documents (keys = global part index, row)."""
    from data_pipelines.dedup import signature_stage

    part, lay = task.part, task.layout
    out = lay.signatures(part)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp(out.parent, part.name)

    def texts() -> Iterator[str]:
        for t in iter_texts(lay.read_data(part), task.batch_size):
            progress.update(docs=1, units=1)
            yield t

    stats = signature_stage(part.global_index, texts(), str(out), task.dedup, kind=part.kind)
    payload = {"part": part.label, "stats": stats.to_dict()}
    write_marker(lay.marker("signatures", part), task.fingerprint, payload)
    return payload


def bucket_task(task: tuple[list[str], str, dict[str, Any], int, int], progress: Progress) -> str:
    """One bucket part of the cluster stage (run in a worker)."""
    from data_pipelines.dedup import bucket_stage

    paths, out_dir, dedup, index, num_parts = task
    out = bucket_stage(paths, out_dir, dedup, index, num_parts)
    progress.update(units=1)
    return out


def documents_part(task: Task, progress: Progress) -> dict[str, Any]:
    """Stage ``documents``: drop the part's duplicates and write its final documents with ``datasets``."""
    import datasets

    part, lay = task.part, task.layout
    out = lay.documents(part)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp(out.parent, part.name)
    docs: Iterator[Document] = iter_work_docs(lay.read_data(part), part.source, task.batch_size)
    stats = StageStats()
    dedup_on = bool(task.dedup.get("exact") or task.dedup.get("minhash"))
    if dedup_on:
        from data_pipelines.dedup import DedupFilter

        docs = DedupFilter(str(lay.dedup_dir), part.global_index)(docs, stats)
    # Stream the rows into an Arrow file (memory-mapped by ``datasets``), then let ``datasets`` write the
    # Parquet file from it: memory stays at one batch whatever the part's size.
    import pyarrow as pa

    datasets.disable_progress_bars()
    features = datasets.Features({c: datasets.Value("string") for c in COLUMNS})
    schema = features.arrow_schema
    arrow_tmp = out.with_name(f"{out.name}.arrow.tmp-{os.getpid()}")
    columns: dict[str, list] = {c: [] for c in COLUMNS}
    with pa.OSFile(str(arrow_tmp), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        def flush() -> None:
            if columns["id"]:
                writer.write_table(pa.table(columns, schema=schema))
                for c in COLUMNS:
                    columns[c] = []

        for doc in docs:
            if not dedup_on:
                stats.seen(doc.text)
                stats.kept(doc.text)
            meta = dict(doc.metadata)
            columns["id"].append(doc.id)
            columns["text"].append(doc.text)
            columns["source"].append(part.source)
            for key in PROVENANCE:
                value = meta.pop(key, None)
                columns[key].append(None if value is None else str(value))
            columns["metadata"].append(_meta_json(meta))
            progress.update(docs=1, units=1)
            if len(columns["id"]) >= task.batch_size:
                flush()
        flush()
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    try:
        ds = datasets.Dataset.from_file(str(arrow_tmp), info=datasets.DatasetInfo(features=features))
        ds.to_parquet(str(tmp))
        del ds
    finally:
        arrow_tmp.unlink(missing_ok=True)
    commit(tmp, out)
    payload = {"part": part.label, "dedup": stats.to_dict() if dedup_on else None,
               "docs": stats.docs_out, "bytes": stats.bytes_out}
    write_marker(lay.marker("documents", part), task.fingerprint, payload)
    return payload


def tokenize_part(task: Task, progress: Progress) -> dict[str, Any]:
    """Stage ``tokenize``: the part's documents -> ``tokens/<source>/part-N.{bin,idx}`` with EOD tokens."""
    from pretrain.core.tokenizer import TokenizerSpec, batched, encode_documents, eod_id
    from pretrain.core.indexed import IndexedDatasetWriter, best_dtype

    part, lay = task.part, task.layout
    tok = _tokenizer_for(lay.tokenizer_file)
    spec = TokenizerSpec.from_config(task.tokenizer)
    eod = eod_id(tok, spec, str(lay.tokenizer_file))
    vocab = tok.get_vocab_size(with_added_tokens=True)
    prefix = lay.tokens_prefix(part)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp(prefix.parent, part.name)
    docs = tokens = nbytes = 0
    with IndexedDatasetWriter(prefix, best_dtype(vocab)) as writer:
        for texts in batched(iter_texts(lay.documents(part), task.batch_size), task.tokenizer.get("batch_size", 1000)):
            for ids in encode_documents(tok, texts, eod):
                writer.add_document(ids)
                tokens += len(ids)
            docs += len(texts)
            nbytes += sum(map(text_bytes, texts))
            progress.update(docs=len(texts), units=len(texts))
    payload = {"part": part.label, "docs": docs, "tokens": tokens, "bytes": nbytes}
    write_marker(lay.marker("tokenize", part), task.fingerprint, payload)
    return payload


# ------------------------------------------------------------------------------------- global helpers
def train_tokenizer_file(layout: Layout, parts: list[Part], spec, total_bytes: int, batch_size: int) -> dict[str, Any]:
    """Stage ``tokenizer``: train on a deterministic sample of the documents (or copy ``spec.path``)."""
    import xxhash

    from pretrain.core.tokenizer import eod_id, load_tokenizer, save_tokenizer, train_tokenizer

    out = layout.tokenizer_file
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp(out.parent)
    info: dict[str, Any] = {"kind": spec.kind, "given": spec.path}
    if spec.path:
        atomic_write(out, Path(spec.path).read_bytes())
        tok = load_tokenizer(out)
        info.update(train_docs=0, train_bytes=0)
    else:
        # Uniform over documents: keep a document when the hash of its id falls under the fraction, so the
        # sample does not depend on order, sharding or worker count.
        fraction = 1.0 if total_bytes <= spec.max_train_bytes else spec.max_train_bytes / total_bytes
        limit = int(fraction * 2**64) if fraction < 1.0 else None
        counts = {"docs": 0, "bytes": 0}

        def texts() -> Iterator[str]:
            import pyarrow.parquet as pq

            counts["docs"] = counts["bytes"] = 0
            for part in parts:
                pf = pq.ParquetFile(layout.documents(part))
                for batch in pf.iter_batches(batch_size=batch_size, columns=["id", "text"]):
                    ids, txts = batch.column(0).to_pylist(), batch.column(1).to_pylist()
                    for doc_id, text in zip(ids, txts):
                        if limit is not None and xxhash.xxh64_intdigest(f"{part.source}\x00{doc_id}") >= limit:
                            continue
                        counts["docs"] += 1
                        counts["bytes"] += text_bytes(text)
                        yield text

        if total_bytes == 0:
            from pretrain.core.errors import DataError

            raise DataError("tokenizer: no document survived cleaning and dedup; nothing to train a tokenizer on")
        tok = train_tokenizer(spec, texts)
        save_tokenizer(tok, out)
        tok = load_tokenizer(out)
        info.update(train_docs=counts["docs"], train_bytes=counts["bytes"])
    info.update(
        vocab_size=tok.get_vocab_size(with_added_tokens=True), eod_token=spec.eod,
        eod_id=eod_id(tok, spec, str(spec.path or out)),
    )
    return info
