"""The filter blocks by config name: THE list the ``filters`` config (and its error messages) derives from.

A block is a :class:`~data_pipelines.filters.base.DocumentFilter` subclass with a ``name`` and keyword-only
constructor parameters (their annotations are the config types checked by :mod:`.config`). Adding one =
a file in this folder plus an entry below; ``{name: <its name>, ...}`` then works in any filter list.
"""

from __future__ import annotations

from data_pipelines.filters.base import DocumentFilter
from data_pipelines.filters.c4 import C4Filter
from data_pipelines.filters.code import CodeFilter
from data_pipelines.filters.fineweb import FineWebFilter
from data_pipelines.filters.gopher import GopherQuality, GopherRepetition
from data_pipelines.filters.language import LanguageFilter
from data_pipelines.filters.normalize import Normalize
from data_pipelines.filters.pii import PIIRedactor

BLOCK_CLASSES: tuple[type[DocumentFilter], ...] = (
    Normalize,
    LanguageFilter,
    GopherQuality,
    GopherRepetition,
    C4Filter,
    FineWebFilter,
    CodeFilter,
    PIIRedactor,
)


def _by_name(classes: tuple[type[DocumentFilter], ...]) -> dict[str, type[DocumentFilter]]:
    out: dict[str, type[DocumentFilter]] = {}
    for cls in classes:
        if not cls.name or cls.name in out:
            raise ValueError(f"{cls.__name__}.name = {cls.name!r}: every filter block needs its own, non-empty name")
        out[cls.name] = cls
    return out


BLOCKS: dict[str, type[DocumentFilter]] = _by_name(BLOCK_CLASSES)
