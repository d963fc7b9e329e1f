"""Stage ``read`` (per part): stream the part's input files through its source reader and filter blocks.

Output: ``work/read/<source>/part-N.parquet`` (id, text, metadata JSON), in input order. The marker holds the
reader's counts (records skipped by reason) and each filter block's (documents dropped or changed by reason).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from data_pipelines.document import Document
from data_pipelines.executor.local import Progress
from data_pipelines.executor.markers import fingerprint
from data_pipelines.executor.parts import Part
from data_pipelines.stages.base import PartStage, Task
from data_pipelines.stages.io import WorkWriter
from data_pipelines.stages.layout import Layout
from data_pipelines.stats import StageStats

if TYPE_CHECKING:
    from data_pipelines.run import Pipeline

_BLOCKS: dict[tuple[str, str], list] = {}  # per worker process: a language model loads once


def _blocks(filters: dict[str, Any], source: str, kind: str) -> list:
    """Filter blocks of a source, built once per worker process."""
    from data_pipelines.filters import filters_for_source

    key = (source, json.dumps(filters, sort_keys=True))
    if key not in _BLOCKS:
        _BLOCKS[key] = filters_for_source(filters, source, kind)
    return _BLOCKS[key]


def _blocks_for(task: Task) -> list:
    return _blocks(task.filters, task.part.source, task.part.kind)


class Read(PartStage):
    name = "read"
    folder = "work/read"
    intermediate = True
    unit = "B"

    def output(self, layout: Layout, part: Part) -> Path:
        return layout.read_data(part)

    def fingerprint(self, pipe: "Pipeline", part: Part) -> str:
        from data_pipelines.filters import filter_spec_for_source

        spec, _ = filter_spec_for_source(pipe.filters, part.source, part.kind)
        span = {} if part.span is None else {"span": [part.span.start, part.span.end, part.span.line]}
        return fingerprint({"source": pipe.sources[part.source], "filters": spec, "files": part.files,
                            "sizes": part.sizes, "index": part.index, **span})

    def measure(self, payload: dict[str, Any]) -> tuple[int, int]:
        return int(payload["read"]["docs_out"]), int(payload["read"]["bytes_in"])

    def warm(self, config: dict[str, Any]) -> None:
        """The filter blocks of every source (the language model loads here), the readers and Arrow's imports."""
        from data_pipelines.sources import make_reader
        from data_pipelines.stages.io import warm_arrow

        warm_arrow()
        for name in sorted(config["sources"]):
            source = config["sources"][name]
            _blocks(config["filters"], name, source["kind"])
            make_reader(name, source)

    def run(self, task: Task, progress: Progress) -> dict[str, Any]:
        from data_pipelines.filters import run_blocks
        from data_pipelines.sources import make_reader

        part = task.part
        reader = make_reader(part.source, task.source)
        blocks = _blocks_for(task)
        read_stats = StageStats()
        block_stats = [StageStats() for _ in blocks]

        def docs() -> Iterator[Document]:
            piece = {} if part.span is None else {"span": part.span}  # one piece of a split file
            for f, size in zip(part.files, part.sizes):
                for doc in reader.read(f, read_stats, **piece):
                    progress.update(docs=1)
                    yield doc
                progress.update(units=size)

        writer = WorkWriter(self.output(task.layout, part), task.batch_size)
        try:
            for doc in run_blocks(blocks, docs(), block_stats):
                writer.add(doc)
        except BaseException:
            writer.abort()
            raise
        writer.close()
        return {
            "read": read_stats.to_dict(),
            "filters": [{"name": b.name, "stats": s.to_dict()} for b, s in zip(blocks, block_stats)],
            "docs": writer.count,
        }


STAGE = Read()
