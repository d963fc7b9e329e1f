"""The two interfaces pipeline stages implement.

* A :class:`Reader` turns one input file into a stream of :class:`Document` (it must stream, never load a
  whole dump; corrupt records are skipped and counted with ``stats.skip(reason)``, good records around them
  are kept).
* A :class:`Block` (filter, normaliser, redactor) maps a stream of documents to a stream of documents;
  every document it removes is counted with ``stats.drop(reason)``, every in-place change with
  ``stats.modify(reason)``. ``stats.seen``/``stats.kept`` are called by the block itself.

Both are plain classes built from their config section (keyword arguments), so Hydra configs map 1:1 to
constructor arguments and tests can build them directly.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Iterable, Iterator

from data_pipelines.document import Document
from data_pipelines.stats import StageStats


class Reader(ABC):
    kind: str = ""

    def __init__(self, source: str, **options):
        self.source = source
        self.options = options

    @abstractmethod
    def read(self, path: str, stats: StageStats) -> Iterator[Document]:
        """Stream the documents of one input file (a whole dump never sits in memory)."""


class Block(ABC):
    name: str = ""

    @abstractmethod
    def __call__(self, docs: Iterable[Document], stats: StageStats) -> Iterator[Document]:
        """Yield the documents that pass, counting every drop and change in ``stats``."""
