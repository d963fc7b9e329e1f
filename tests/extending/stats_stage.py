"""Example pipeline stage (docs/extending.md): ``stats``, corpus figures per source from the final documents.

A global stage (once, in the main process, over every part); a per-part one subclasses ``PartStage`` and
implements ``run(task, progress)`` instead (see ``WordCount`` in ``tests/pipeline/test_run.py``). In the product
this file would be ``data_pipelines/stages/stats.py`` and its entry ``stats.STAGE,`` in ``STAGES``
(``data_pipelines/stages/__init__.py``) after ``documents.STAGE``; then ``executor.stages`` runs it by default.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from data_pipelines.executor.markers import dump_json, fingerprint
from data_pipelines.stages.base import GlobalStage
from data_pipelines.stages.io import iter_texts, text_bytes
from data_pipelines.stages.layout import Layout
from pretrain.core.atomic import atomic_write

if TYPE_CHECKING:
    from data_pipelines.executor.local import LocalExecutor
    from data_pipelines.run import Pipeline


class CorpusStats(GlobalStage):
    name = "stats"
    upstream = ("documents",)  # the runner checks every part's documents are complete first
    folder = "stats"

    def output(self, layout: Layout, part: None = None) -> Path:
        return layout.root / self.folder / "stats.json"

    def fingerprint(self, pipe: "Pipeline", part: None = None) -> str:
        # the output depends on the documents only: their fingerprints chain everything before them
        return fingerprint({"documents": [pipe.fp("documents", p) for p in pipe.parts]})

    def measure(self, payload: dict[str, Any]) -> tuple[int, int]:
        return sum(s["documents"] for s in payload["sources"].values()), sum(
            s["bytes"] for s in payload["sources"].values())

    def run(self, pipe: "Pipeline", executor: "LocalExecutor") -> dict[str, Any]:
        sources: dict[str, dict[str, int]] = {}
        for part in pipe.parts:  # plan order: the same file whatever the sharding of the per-part stages
            s = sources.setdefault(part.source, {"documents": 0, "words": 0, "bytes": 0, "longest_words": 0})
            for text in iter_texts(pipe.layout.documents(part), int(pipe.ex.batch_size)):
                words = len(text.split())
                s["documents"] += 1
                s["words"] += words
                s["bytes"] += text_bytes(text)
                s["longest_words"] = max(s["longest_words"], words)
        atomic_write(self.output(pipe.layout), dump_json(sources))  # temporary name, fsync, rename
        return {"sources": sources}  # the marker's payload (written by the runner, after the output)


STAGE = CorpusStats()
