"""The source kinds: THE list every other place (config validation, the ``filters`` schema, errors) derives from.

A source kind is a :class:`~data_pipelines.blocks.Reader` subclass with a ``kind`` name (and optionally
``extensions`` / ``directory_units`` for how its ``paths`` expand). Adding one = a reader file in this folder
plus an entry below. The ``filters`` group gets a list for the new kind automatically (empty unless
``conf/filters/*.yaml`` fills it).
"""

from __future__ import annotations

from data_pipelines.blocks import Reader
from data_pipelines.sources.books import BooksReader
from data_pipelines.sources.code import CodeReader
from data_pipelines.sources.records import JsonlReader, ParquetReader
from data_pipelines.sources.web import WebReader
from data_pipelines.sources.wiki import WikiReader

READER_CLASSES: tuple[type[Reader], ...] = (
    WebReader,
    WikiReader,
    BooksReader,
    CodeReader,
    JsonlReader,
    ParquetReader,
)


def _by_kind(classes: tuple[type[Reader], ...]) -> dict[str, type[Reader]]:
    out: dict[str, type[Reader]] = {}
    for cls in classes:
        if not cls.kind or cls.kind in out:
            raise ValueError(f"{cls.__name__}.kind = {cls.kind!r}: every reader needs its own, non-empty kind")
        out[cls.kind] = cls
    return out


READERS: dict[str, type[Reader]] = _by_kind(READER_CLASSES)
SOURCE_KINDS: tuple[str, ...] = tuple(READERS)
