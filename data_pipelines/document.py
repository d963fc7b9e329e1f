"""The record every pipeline block reads and writes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Document:
    """One document flowing through the pipeline.

    ``id`` is stable across runs (derived from where the document came from, or the input record's own id);
    ``source`` is the configured source name (e.g. ``enwiki``); ``metadata`` holds provenance: ``file`` always,
    plus ``url``/``date`` (web), ``title`` (wiki), ``book_id`` (books), ``path``/``language``/``license``
    (code), and what filters add (``lang``, ``lang_score``, ...).
    """

    id: str
    text: str
    source: str
    metadata: dict[str, Any] = field(default_factory=dict)
