"""Already-extracted text: JSON Lines (plain or compressed) and Parquet (read in record batches).

Both keep each record's own id (``id_field``) so documents can be traced back to the upstream data set;
a record without one gets ``<source>:<file name>:<line or row>``. ``metadata_fields`` copies further
columns into the document metadata.
"""

from __future__ import annotations

import logging
import os
from typing import Any, ClassVar, Iterator

from data_pipelines.document import Document
from data_pipelines.sources.base import SourceReader, file_label
from data_pipelines.stats import StageStats
from pretrain.core.errors import DataError

log = logging.getLogger(__name__)


class _RecordOptions(SourceReader):
    OPTIONS: ClassVar[dict[str, Any]] = {"text_field": "text", "id_field": "id", "metadata_fields": []}

    def _document(self, record: Any, fname: str, pos: int, nbytes: int, stats: StageStats) -> Document | None:
        where = f"{fname}:{pos}"
        if not isinstance(record, dict):
            self.skip(stats, "not_an_object", nbytes, where)
            return None
        text = record.get(self.options["text_field"])
        if not isinstance(text, str):
            self.skip(stats, "missing_text_field", nbytes, where)
            return None
        if len(text) > self.max_record_bytes:
            self.skip(stats, "record_too_large", nbytes, where)
            return None
        rec_id = record.get(self.options["id_field"])
        doc_id = str(rec_id) if rec_id not in (None, "") else f"{self.source}:{os.path.basename(fname)}:{pos}"
        meta: dict[str, Any] = {"file": fname}
        for key in self.options["metadata_fields"]:
            if key in record:
                meta[key] = record[key]
        return self.emit(stats, doc_id, text, nbytes, meta)


class JsonlReader(_RecordOptions):
    """``kind: jsonl``: one JSON object per line; ``.gz``/``.bz2``/``.xz``/``.zst`` read transparently. A file
    larger than a part is read in pieces (``span``: a byte range, :mod:`data_pipelines.sources.split`)."""

    kind: ClassVar[str] = "jsonl"
    extensions: ClassVar[tuple[str, ...]] = (
        ".jsonl", ".jsonl.gz", ".jsonl.bz2", ".jsonl.xz", ".jsonl.zst", ".json.gz", ".json", ".ndjson",
    )

    def read(self, path: str, stats: StageStats, span: Any = None) -> Iterator[Document]:
        for record, fname, lineno, nbytes in self.iter_json_lines(path, stats, span):
            doc = self._document(record, fname, lineno, nbytes, stats)
            if doc is not None:
                yield doc


class ParquetReader(_RecordOptions):
    """``kind: parquet``: streamed with ``pyarrow`` in record batches of ``batch_size`` rows."""

    kind: ClassVar[str] = "parquet"
    extensions: ClassVar[tuple[str, ...]] = (".parquet",)
    OPTIONS: ClassVar[dict[str, Any]] = {**_RecordOptions.OPTIONS, "batch_size": 1024}

    def read(self, path: str, stats: StageStats) -> Iterator[Document]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        fname = file_label(path)
        try:
            pf = pq.ParquetFile(path)
        except (pa.ArrowException, OSError) as exc:
            log.warning("source %s: unreadable parquet %s: %s", self.source, path, exc)
            self.skip(stats, "corrupt_parquet", where=path)
            return
        names = pf.schema_arrow.names
        text_field = self.options["text_field"]
        if text_field not in names:
            raise DataError(
                f"source {self.source!r}: {path} has no column {text_field!r} (options.text_field); "
                f"its columns are {names}"
            )
        wanted = [text_field] + [c for c in [self.options["id_field"], *self.options["metadata_fields"]] if c in names]
        columns = list(dict.fromkeys(wanted))
        row = 0
        batches = pf.iter_batches(batch_size=int(self.options["batch_size"]), columns=columns)
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except (pa.ArrowException, OSError) as exc:
                log.warning("source %s: corrupt row group in %s after row %d: %s", self.source, path, row, exc)
                self.skip(stats, "corrupt_parquet", where=path)
                return
            for record in batch.to_pylist():
                row += 1
                text = record.get(text_field)
                nbytes = len(text.encode("utf-8", "surrogatepass")) if isinstance(text, str) else 0
                doc = self._document(record, fname, row, nbytes, stats)
                if doc is not None:
                    yield doc
