"""Work parts: the unit of per-part work, and how a run's inputs are cut into them and spread over shards.

A **part** is a group of input files of one source, about ``executor.part_size_mb`` in size, or one piece
(:class:`Span`) of a file larger than that which can be cut at record boundaries: a Wikipedia multistream
dump at the bz2 streams of its index, JSON Lines at line ends (plain) or at members/frames (gzip, bz2, zstd);
see :mod:`data_pipelines.sources.split`. The pieces of a file, read in order, give exactly the records of
the whole file, so the output does not depend on how files were split. Parts are numbered per source
(``part-00003``) and globally (the dedup key space); the plan is sorted, so the same inputs always give the
same parts whatever the machine. ``executor.shard`` / ``executor.num_shards`` select the parts with
``global_index % num_shards == shard``, so a SLURM job array of ``num_shards`` tasks covers every part
exactly once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence

MiB = 1 << 20


@dataclass(frozen=True)
class Span:
    """Bytes ``[start, end)`` of one input file that a reader can start at: whole compressed streams or
    lines; ``line``: the lines of the file before ``start`` (JSON Lines keep their line numbers)."""

    start: int
    end: int
    line: int = 0


@dataclass(frozen=True)
class Part:
    """One unit of per-part work: some input files of one source."""

    source: str
    kind: str
    index: int  # within the source: part-00003
    global_index: int  # across all sources (dedup keys, shard assignment)
    files: tuple[str, ...]
    sizes: tuple[int, ...]  # input bytes of each file
    span: Span | None = None  # one piece of files[0] (a split file); None: the whole files

    @property
    def size(self) -> int:
        return sum(self.sizes)

    @property
    def name(self) -> str:
        return f"part-{self.index:05d}"

    @property
    def label(self) -> str:
        return f"{self.source}/{self.name}"


def input_size(path: str) -> int:
    """Bytes of a file, or of every file below a directory (a code repository unit)."""
    if os.path.isdir(path):
        total = 0
        for dirpath, _, files in os.walk(path):
            for f in files:
                fp = os.path.join(dirpath, f)
                if not os.path.islink(fp):
                    try:
                        total += os.path.getsize(fp)
                    except OSError:
                        pass
        return total
    return os.path.getsize(path)


Splitter = Callable[[str, str, int], "Sequence[Span] | None"]  # (kind, path, piece bytes) -> pieces or None


def plan_parts(
    sources: Sequence[tuple[str, str, Sequence[str]]], part_size_bytes: int, split: Splitter | None = None,
    split_min_bytes: int = MiB,
) -> list[Part]:
    """Group each source's (sorted) inputs into consecutive parts of about ``part_size_bytes``.

    ``sources`` is ``[(name, kind, files)]``; sources are taken in name order and files in path order, so
    the plan depends only on the inputs. A part closes once it holds at least ``part_size_bytes``. With
    ``split``, a file larger than ``max(part_size_bytes, split_min_bytes)`` is offered to it and, when it
    returns two or more pieces, becomes one part per piece (in file order, after the part before it closed).
    """
    parts: list[Part] = []
    piece = max(part_size_bytes, split_min_bytes)
    for name, kind, files in sorted(sources, key=lambda s: s[0]):
        group: list[str] = []
        sizes: list[int] = []
        index = 0
        for f in sorted(files):
            spans = split(kind, f, piece) if split is not None and not os.path.isdir(f) else None
            if spans and len(spans) > 1:
                if group:
                    parts.append(Part(name, kind, index, len(parts), tuple(group), tuple(sizes)))
                    index, group, sizes = index + 1, [], []
                for sp in spans:
                    parts.append(Part(name, kind, index, len(parts), (f,), (sp.end - sp.start,), sp))
                    index += 1
                continue
            group.append(f)
            sizes.append(input_size(f))
            if sum(sizes) >= part_size_bytes:
                parts.append(Part(name, kind, index, len(parts), tuple(group), tuple(sizes)))
                index, group, sizes = index + 1, [], []
        if group:
            parts.append(Part(name, kind, index, len(parts), tuple(group), tuple(sizes)))
    return parts


def plan_to_json(parts: Sequence[Part]) -> dict[str, Any]:
    return {"format": "pipeline-plan/1", "parts": [
        {"source": p.source, "kind": p.kind, "index": p.index, "global_index": p.global_index,
         "files": list(p.files), "sizes": list(p.sizes),
         **({"span": [p.span.start, p.span.end, p.span.line]} if p.span is not None else {})} for p in parts
    ]}


def parts_for_shard(parts: Sequence[Part], shard: int | None, num_shards: int) -> list[Part]:
    if shard is None:
        return list(parts)
    return [p for p in parts if p.global_index % num_shards == shard]
