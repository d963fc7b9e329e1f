"""Stage 4 of dedup: read a shard's removal list and drop those documents from the shard's stream."""

from __future__ import annotations

import json
import os
from typing import Iterable, Iterator

import numpy as np

from data_pipelines.blocks import Block
from data_pipelines.dedup.cluster import REASONS, STATS_FILE, reason_path, removal_path
from data_pipelines.dedup.io import load_npy
from data_pipelines.document import Document
from data_pipelines.stats import StageStats
from pretrain.core.errors import DataError


def _shard_sizes(out_dir: str) -> dict[int, int]:
    path = os.path.join(out_dir, STATS_FILE)
    if not os.path.isfile(path):
        raise DataError(f"dedup: {path} does not exist; the cluster stage has not completed in {out_dir}")
    try:
        with open(path) as f:
            return {int(s): int(n) for s, n in json.load(f)["shards"].items()}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"dedup: {path} is unreadable ({exc}); rerun the cluster stage") from None


def load_removals(out_dir: str, shard_index: int) -> np.ndarray:
    """Sorted uint32 row indices of shard ``shard_index`` that dedup removes (rows as in the signature stage)."""
    if int(shard_index) not in _shard_sizes(out_dir):
        raise DataError(f"dedup: shard {shard_index} was not part of the cluster stage in {out_dir}")
    return load_npy(removal_path(out_dir, int(shard_index)), "dedup removal file")


def load_removal_reasons(out_dir: str, shard_index: int) -> dict[int, str]:
    """``{row: reason}`` for every removed row of the shard (reasons from :data:`REASONS`)."""
    rows = load_removals(out_dir, shard_index)
    codes = load_npy(reason_path(out_dir, int(shard_index)), "dedup reason file")
    if codes.shape != rows.shape or (len(codes) and (codes.min() < 1 or codes.max() > len(REASONS))):
        raise DataError(f"dedup: {reason_path(out_dir, int(shard_index))} does not match its removal list")
    return {int(r): REASONS[int(c) - 1] for r, c in zip(rows, codes)}


class DedupFilter(Block):
    """Drops the removed rows of one shard, counting each under its reason (``exact_duplicate``,
    ``near_duplicate``) so per-source reports get dedup removals by reason. The document stream must be
    the one the signature stage saw for this shard, in the same order; a length mismatch raises
    :class:`DataError` (the shard changed between stages, so the removal list no longer applies)."""

    name = "dedup"

    def __init__(self, out_dir: str, shard_index: int):
        self.out_dir = out_dir
        self.shard_index = int(shard_index)
        self.expected = _shard_sizes(out_dir).get(self.shard_index)
        self.reasons = load_removal_reasons(out_dir, shard_index)

    def __call__(self, docs: Iterable[Document], stats: StageStats) -> Iterator[Document]:
        count = 0
        for row, doc in enumerate(docs):
            count += 1
            stats.seen(doc.text)
            reason = self.reasons.get(row)
            if reason is not None:
                stats.drop(reason)
                continue
            stats.kept(doc.text)
            yield doc
        if count != self.expected:
            raise DataError(
                f"dedup shard {self.shard_index}: {count} documents now, {self.expected} when signatures were "
                f"computed; rerun dedup for this shard's input"
            )
