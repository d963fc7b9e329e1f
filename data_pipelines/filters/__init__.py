"""Cleaning blocks: normalisation, language id, Gopher/C4/FineWeb quality rules, code rules, PII redaction.

Build them from config with :func:`build_blocks` / :func:`filters_for_source` (see ``config.py`` for the
shape of the ``filters`` group); each block is a :class:`data_pipelines.blocks.Block`.
"""

from __future__ import annotations

from data_pipelines.filters.base import DocumentFilter
from data_pipelines.filters.c4 import C4Filter
from data_pipelines.filters.code import CodeFilter
from data_pipelines.filters.config import (
    BLOCKS,
    SOURCE_KINDS,
    FiltersConfig,
    build_block,
    build_blocks,
    filter_spec_for_source,
    filters_for_source,
    run_blocks,
)
from data_pipelines.filters.fineweb import FineWebFilter
from data_pipelines.filters.gopher import GopherQuality, GopherRepetition
from data_pipelines.filters.language import LanguageFilter
from data_pipelines.filters.normalize import Normalize
from data_pipelines.filters.pii import PIIRedactor

__all__ = [
    "BLOCKS",
    "SOURCE_KINDS",
    "C4Filter",
    "CodeFilter",
    "DocumentFilter",
    "FiltersConfig",
    "FineWebFilter",
    "GopherQuality",
    "GopherRepetition",
    "LanguageFilter",
    "Normalize",
    "PIIRedactor",
    "build_block",
    "build_blocks",
    "filter_spec_for_source",
    "filters_for_source",
    "run_blocks",
]
