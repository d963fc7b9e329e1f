"""Cleaning blocks: normalisation, language id, Gopher/C4/FineWeb quality rules, code rules, PII redaction.

The blocks by config name are :data:`BLOCKS` (``registry.py``: one file per block plus a registry entry).
Build them from config with :func:`build_blocks` / :func:`filters_for_source` (see ``config.py`` for the
shape of the ``filters`` group); each block is a :class:`data_pipelines.blocks.Block`.
"""

from __future__ import annotations

from data_pipelines.filters.base import DocumentFilter
from data_pipelines.filters.config import (
    FiltersConfig,
    build_block,
    build_blocks,
    filter_spec_for_source,
    filters_for_source,
    run_blocks,
)
from data_pipelines.filters.registry import BLOCKS
from data_pipelines.sources.registry import SOURCE_KINDS

__all__ = [
    "BLOCKS",
    "SOURCE_KINDS",
    "DocumentFilter",
    "FiltersConfig",
    "build_block",
    "build_blocks",
    "filter_spec_for_source",
    "filters_for_source",
    "run_blocks",
]
