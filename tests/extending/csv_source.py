"""Example source kind (docs/extending.md): ``kind: csv``, one document per row of a CSV file with a header.

In the product this file would be ``data_pipelines/sources/csv.py`` and its registry entry ``CsvReader,`` in
``READER_CLASSES`` (``data_pipelines/sources/registry.py``); then ``{kind: csv, paths: [...], options: {...}}``
is a source, and ``filters.csv`` a filter list of the ``filters`` group.
"""

from __future__ import annotations

import csv
import io
import os
from typing import Any, ClassVar, Iterator

from data_pipelines.document import Document
from data_pipelines.sources.base import SourceReader, decode_utf8, file_label, open_binary
from data_pipelines.stats import StageStats
from pretrain.core.errors import DataError


class CsvReader(SourceReader):
    """``kind: csv``. Options: ``text_column``, ``id_column`` (a row without one gets ``<source>:<file>:<row>``),
    ``metadata_columns`` (copied into the metadata), ``delimiter``. Skips ``missing_text_field`` (a short row),
    ``record_too_large``, ``invalid_utf8`` (with ``invalid_utf8: skip``) and ``corrupt_csv`` (the rest of a file
    the csv module cannot parse, rows before it kept); drops ``empty``."""

    kind: ClassVar[str] = "csv"
    extensions: ClassVar[tuple[str, ...]] = (".csv", ".csv.gz")
    OPTIONS: ClassVar[dict[str, Any]] = {"text_column": "text", "id_column": "id", "metadata_columns": [],
                                         "delimiter": ","}

    def read(self, path: str, stats: StageStats) -> Iterator[Document]:
        fname, text_col = file_label(path), self.options["text_column"]
        stream, _ = open_binary(path)  # .gz read transparently; streamed, never the whole file in memory
        # invalid bytes survive as surrogates, so each row's text goes through the invalid_utf8 policy alone
        with io.TextIOWrapper(stream, encoding="utf-8", errors="surrogateescape", newline="") as text:
            rows = csv.DictReader(text, delimiter=self.options["delimiter"])
            if rows.fieldnames is not None and text_col not in rows.fieldnames:
                raise DataError(f"source {self.source!r}: {path} has no column {text_col!r} (options.text_column); "
                                f"its columns are {rows.fieldnames}")
            row = 0
            while True:
                try:
                    record = next(rows)
                except StopIteration:
                    return
                except csv.Error as exc:  # e.g. a NUL byte or a field over csv.field_size_limit()
                    self.skip(stats, "corrupt_csv", where=f"{fname}:{row + 1} ({exc})")
                    return
                row += 1
                doc = self._document(record, fname, row, stats)
                if doc is not None:
                    yield doc

    def _document(self, record: dict[str, Any], fname: str, row: int, stats: StageStats) -> Document | None:
        where, raw = f"{fname}:{row}", record.get(self.options["text_column"])
        if raw is None:
            self.skip(stats, "missing_text_field", where=where)
            return None
        data = raw.encode("utf-8", "surrogateescape")
        if len(data) > self.max_record_bytes:
            self.skip(stats, "record_too_large", len(data), where)
            return None
        text = decode_utf8(data, stats, self.invalid_utf8)
        if text is None:
            self.skip(stats, "invalid_utf8", len(data), where)
            return None
        doc_id = _plain(record.get(self.options["id_column"])) or f"{self.source}:{os.path.basename(fname)}:{row}"
        meta = {"file": fname, **{k: _plain(record[k]) for k in self.options["metadata_columns"] if record.get(k)}}
        return self.emit(stats, doc_id, text, len(data), meta)


def _plain(value: str | None) -> str | None:
    """A cell other than the text with any invalid bytes replaced (the text itself follows ``invalid_utf8``)."""
    return None if value is None else value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
