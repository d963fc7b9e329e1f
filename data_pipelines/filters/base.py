"""The base of every filter block: one document at a time, every drop and change counted.

A filter either keeps a document (possibly rewritten in place), or drops it with a *reason*. The reasons are
short, specific names prefixed with the block family (``gopher_short_doc``, ``c4_lorem_ipsum``...) so that
the report can say exactly why each document went away.
"""

from __future__ import annotations

import itertools
from abc import abstractmethod
from typing import Any, Iterable, Iterator

from data_pipelines.blocks import Block
from data_pipelines.document import Document
from data_pipelines.stats import StageStats
from pretrain.core.errors import ConfigError


class DocumentFilter(Block):
    """A :class:`Block` that judges each document on its own.

    Subclasses implement :meth:`apply`, which returns ``None`` to keep the document (after changing
    ``doc.text`` if it wants to, counted with ``stats.modify``) or the reason for dropping it. Documents that
    are empty or only whitespace are dropped as ``<name>_empty`` before :meth:`apply` sees them, so no rule has
    to guard against dividing by zero lines or words.
    """

    name: str = ""

    @abstractmethod
    def apply(self, doc: Document, stats: StageStats) -> str | None:
        """Return ``None`` to keep ``doc`` (possibly modified in place), or the reason to drop it."""

    #: documents judged together by :meth:`apply_batch` (1: one at a time, through :meth:`apply`)
    batch_size: int = 1

    def apply_batch(self, docs: list[Document], stats: StageStats) -> list[str | None]:
        """:meth:`apply` of each document, in order; a block whose work vectorises across documents overrides
        this (and sets :attr:`batch_size`) to pay per-call overhead once per batch."""
        return [self.apply(doc, stats) for doc in docs]

    def __call__(self, docs: Iterable[Document], stats: StageStats) -> Iterator[Document]:
        if self.batch_size == 1:
            for doc in docs:
                stats.seen(doc.text)
                if not doc.text or doc.text.isspace():
                    stats.drop(f"{self.name}_empty")
                    continue
                reason = self.apply(doc, stats)
                if reason is None:
                    stats.kept(doc.text)
                    yield doc
                else:
                    stats.drop(reason)
            return
        docs = iter(docs)
        while batch := list(itertools.islice(docs, self.batch_size)):
            alive = []
            for doc in batch:  # seen and judged empty before apply_batch, which may rewrite texts (as apply may)
                stats.seen(doc.text)
                alive.append(bool(doc.text) and not doc.text.isspace())
            reasons = iter(self.apply_batch([doc for doc, ok in zip(batch, alive) if ok], stats))
            for doc, ok in zip(batch, alive):  # the same counts as one at a time
                if not ok:
                    stats.drop(f"{self.name}_empty")
                    continue
                reason = next(reasons)
                if reason is None:
                    stats.kept(doc.text)
                    yield doc
                else:
                    stats.drop(reason)

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in sorted(vars(self).items()) if not k.startswith("_"))
        return f"{type(self).__name__}({params})"


def add_extra(stats: StageStats, key: str, counts: dict[str, int]) -> None:
    """Add per-reason counts (e.g. lines removed, secrets found) into ``stats.extra[key]``.

    ``StageStats.merge`` adds dicts of numbers, so these figures sum correctly across shards and workers.
    """
    if not counts:
        return
    bucket = stats.extra.setdefault(key, {})
    for k, v in counts.items():
        bucket[k] = bucket.get(k, 0) + v


def invalid(param: str, value: Any, expected: str) -> ConfigError:
    """The error a block constructor raises for a parameter value out of range.

    ``build_blocks`` prefixes it with where in the config the block sits (e.g. ``filters.web[2] (c4)``).
    """
    return ConfigError(f"parameter '{param}' = {value!r} is invalid: expected {expected}")
