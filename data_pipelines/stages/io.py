"""Streaming Parquet files of documents: the work files between stages and their text columns."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator

from data_pipelines.document import Document
from pretrain.core.atomic import commit

# Provenance fields promoted to their own (string) columns in documents/*.parquet; every other metadata key
# goes to the ``metadata`` JSON column. One schema for every source, so all documents load as one dataset.
PROVENANCE = ("file", "url", "date", "title", "book_id", "repo", "path", "language", "license")
COLUMNS = ("id", "text", "source", *PROVENANCE, "metadata")


def work_schema():
    import pyarrow as pa

    return pa.schema([("id", pa.string()), ("text", pa.string()), ("metadata", pa.string())])


def warm_arrow() -> None:
    """Do the imports of a process's first Arrow table from Python lists ahead of it: pyarrow and the parquet
    module, and pandas, which pyarrow imports the first time it converts Python objects (its pandas check),
    about 0.3 s a process together. Done before workers fork, every worker inherits them."""
    import pyarrow as pa
    import pyarrow.parquet  # noqa: F401

    pa.array([""], type=pa.string())


def meta_json(meta: dict[str, Any]) -> str:
    return json.dumps(meta, sort_keys=True, ensure_ascii=False, default=str)


class WorkWriter:
    """Streams documents into a work parquet file in row groups of ``batch_size`` (bounded memory)."""

    def __init__(self, path: Path, batch_size: int):
        import pyarrow.parquet as pq

        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        self.writer = pq.ParquetWriter(self.tmp, work_schema(), compression="zstd")
        self.batch_size = batch_size
        self.rows: dict[str, list] = {"id": [], "text": [], "metadata": []}
        self.count = 0

    def add(self, doc: Document) -> None:
        self.rows["id"].append(doc.id)
        self.rows["text"].append(doc.text)
        self.rows["metadata"].append(meta_json(doc.metadata))
        self.count += 1
        if len(self.rows["id"]) >= self.batch_size:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa

        if self.rows["id"]:
            self.writer.write_table(pa.table(self.rows, schema=work_schema()))
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
