"""Counters every stage keeps: documents/bytes in and out, and each removal by reason.

A stage never drops or skips anything without calling :meth:`StageStats.drop` (for documents a filter
rejects) or :meth:`StageStats.skip` (for input records a reader could not use: corrupt gzip, cut WARC
record, malformed XML...). Stats from shards and workers merge by addition, so the report is the same
whatever the sharding.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from data_pipelines.native import compiled as _native


def utf8_len(text: str) -> int:
    """Bytes of ``text`` in UTF-8 (lone surrogates as 3 bytes each). An ASCII string (``isascii`` reads a flag
    CPython keeps) has one byte per character; any other is counted by the compiled loop where it is built,
    else encoded."""
    if text.isascii():
        return len(text)
    return _native.utf8_len(text) if _native is not None else len(text.encode("utf-8", "surrogatepass"))


@dataclass
class StageStats:
    docs_in: int = 0
    docs_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    dropped: Counter = field(default_factory=Counter)  # reason -> documents removed
    skipped: Counter = field(default_factory=Counter)  # reason -> input records that could not be read
    modified: Counter = field(default_factory=Counter)  # reason -> documents changed in place (e.g. pii_email)
    extra: dict[str, Any] = field(default_factory=dict)  # stage-specific figures (e.g. cluster sizes)

    def seen(self, text: str) -> None:
        self.docs_in += 1
        self.bytes_in += utf8_len(text)

    def kept(self, text: str) -> None:
        self.docs_out += 1
        self.bytes_out += utf8_len(text)

    def drop(self, reason: str, n: int = 1) -> None:
        self.dropped[reason] += n

    def skip(self, reason: str, n: int = 1) -> None:
        self.skipped[reason] += n

    def modify(self, reason: str, n: int = 1) -> None:
        self.modified[reason] += n

    def merge(self, other: "StageStats") -> "StageStats":
        self.docs_in += other.docs_in
        self.docs_out += other.docs_out
        self.bytes_in += other.bytes_in
        self.bytes_out += other.bytes_out
        self.dropped.update(other.dropped)
        self.skipped.update(other.skipped)
        self.modified.update(other.modified)
        for k, v in other.extra.items():
            if k not in self.extra:
                self.extra[k] = v
            elif isinstance(v, (int, float)):
                self.extra[k] += v
            elif isinstance(v, dict):
                merged = Counter(self.extra[k])
                merged.update(v)
                self.extra[k] = dict(merged)
            elif isinstance(v, list):
                self.extra[k] = list(self.extra[k]) + list(v)
        return self

    def to_dict(self) -> dict[str, Any]:
        return {
            "docs_in": self.docs_in,
            "docs_out": self.docs_out,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "dropped": dict(sorted(self.dropped.items())),
            "skipped": dict(sorted(self.skipped.items())),
            "modified": dict(sorted(self.modified.items())),
            "extra": self.extra,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "StageStats":
        return cls(
            d["docs_in"], d["docs_out"], d["bytes_in"], d["bytes_out"],
            Counter(d.get("dropped", {})), Counter(d.get("skipped", {})), Counter(d.get("modified", {})),
            dict(d.get("extra", {})),
        )
