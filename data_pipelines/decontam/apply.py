"""Applying the decontaminate stage's hit list in the ``documents`` stage, after dedup.

The hit list is keyed by row of the part's ``read`` output (the stage matched every row, in parallel with the
dedup signatures); ``rows`` gives the row of each document that reaches this block (all rows, or those dedup
kept), so the two position-keyed removals compose.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Iterator

from data_pipelines.blocks import Block
from data_pipelines.decontam.ngrams import cut, has_words
from data_pipelines.document import Document
from data_pipelines.stats import StageStats
from pretrain.core.errors import DataError

DROPPED = "contaminated"  # drop mode: the document overlapped an eval example
EMPTY = "contaminated_empty"  # cut mode: nothing but the overlap (no word left after the cut)
CUT = "contamination_cut"  # cut mode: the overlapping spans were removed


def load_hits(path: Path) -> dict[int, dict[str, Any]]:
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))["rows"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"decontaminate: {path} is unreadable ({e}); rerun the decontaminate stage") from None
    return {int(r["row"]): r for r in rows}


class DecontamFilter(Block):
    """Drops (``mode=drop``) or cuts (``mode=cut``) the documents of the hit list; ``applied`` lists what it
    did per document (id, eval sets and examples hit, characters cut) for the report."""

    name = "decontaminate"

    def __init__(self, hits_path: Path, mode: str, rows: Iterator[int]):
        self.hits = load_hits(hits_path)
        self.mode, self.rows, self.path = mode, rows, hits_path
        self.applied: list[dict[str, Any]] = []

    def __call__(self, docs: Iterable[Document], stats: StageStats) -> Iterator[Document]:
        for doc in docs:
            row = next(self.rows)
            stats.seen(doc.text)
            hit = self.hits.get(row)
            if hit is None:
                stats.kept(doc.text)
                yield doc
                continue
            if hit["id"] != doc.id:
                raise DataError(f"decontaminate: {self.path} row {row} is document {hit['id']!r}, the read output "
                                f"has {doc.id!r} there; rerun the decontaminate stage")
            entry = {"id": doc.id, "eval": hit["eval"]}
            if self.mode == "drop":
                stats.drop(DROPPED)
                self.applied.append({**entry, "action": "dropped"})
                continue
            text = cut(doc.text, hit["spans"])
            entry["cut_chars"] = len(doc.text) - len(text)
            if not has_words(text):
                stats.drop(EMPTY)
                self.applied.append({**entry, "action": "dropped"})
                continue
            stats.modify(CUT)
            stats.kept(text)
            self.applied.append({**entry, "action": "cut"})
            yield Document(doc.id, text, doc.source, doc.metadata)

    def payload(self, stats: StageStats) -> dict[str, Any]:
        return {"stats": stats.to_dict(), "hits": self.applied}
