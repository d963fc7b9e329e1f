"""Stage ``decontaminate`` (per part): find the documents that overlap the user's eval sets.

Runs on the part's ``read`` output, beside ``signatures`` (so on SLURM in the same job array), when
``decontamination.eval_paths`` names eval sets; otherwise it is disabled and nothing in the outputs changes.
Output: ``work/decontam/<source>/part-N.json``, the rows that share an ``ngram``-word sequence (or a whole short
eval text) with an eval example: the document id, the character spans of the overlap and the examples hit per
eval set. The ``documents`` stage then drops those documents or cuts the spans (``decontamination.mode``) after
dedup, and the report lists every hit by eval set and source.

The eval index (hashed n-grams, :class:`~data_pipelines.decontam.ngrams.EvalIndex`) is built once per worker
process, not per part or document. The fingerprint holds the eval files' sha256, so an edited eval set redoes
this stage and everything after it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from data_pipelines.executor.local import Progress
from data_pipelines.executor.markers import fingerprint
from data_pipelines.executor.parts import Part
from data_pipelines.stages.base import PartStage, Task
from data_pipelines.stages.io import iter_work_docs
from data_pipelines.stages.layout import Layout
from pretrain.core.atomic import atomic_write

if TYPE_CHECKING:
    from data_pipelines.decontam import EvalIndex
    from data_pipelines.run import Pipeline

_INDEX: dict[str, "EvalIndex"] = {}  # per worker process: the eval index is built once


def settings(config: dict[str, Any]) -> dict[str, Any]:
    """What the hits depend on: the eval files' contents and the matching parameters (not the mode)."""
    from data_pipelines.decontam import as_decontamination_config, file_digest

    c = as_decontamination_config(config.get("decontamination"))
    return {"eval": [[str(p), file_digest(str(p))] for p in c.eval_paths], "ngram": c.ngram,
            "min_words": c.min_words, "fields": c.fields}


def enabled_in(config: dict[str, Any]) -> bool:
    return bool((config.get("decontamination") or {}).get("eval_paths"))


def eval_index(config: dict[str, Any]) -> "EvalIndex":
    from data_pipelines.decontam import EvalIndex, as_decontamination_config, read_eval_sets

    key = fingerprint(settings(config))
    if key not in _INDEX:
        c = as_decontamination_config(config.get("decontamination"))
        _INDEX.clear()
        _INDEX[key] = EvalIndex.build(read_eval_sets(list(c.eval_paths), c.fields), c.ngram, c.min_words)
    return _INDEX[key]


class Decontaminate(PartStage):
    name = "decontaminate"
    upstream = ("read",)
    folder = "work/decontam"
    intermediate = True

    def enabled(self, pipe: "Pipeline") -> bool:
        return enabled_in(pipe.config)

    def output(self, layout: Layout, part: Part) -> Path:
        return layout.part_file(self.folder, part, ".json")

    def fingerprint(self, pipe: "Pipeline", part: Part) -> str:
        if not self.enabled(pipe):
            return fingerprint({"read": pipe.fp("read", part), "decontamination": None})
        return fingerprint({"read": pipe.fp("read", part), "decontamination": settings(pipe.config)})

    def measure(self, payload: dict[str, Any]) -> tuple[int, int]:
        return int(payload["docs"]), int(payload["bytes"])

    def run(self, task: Task, progress: Progress) -> dict[str, Any]:
        from data_pipelines.stages.io import text_bytes

        index = eval_index(task.config)
        rows: list[dict[str, Any]] = []
        docs = nbytes = 0
        for row, doc in enumerate(iter_work_docs(task.layout.read_data(task.part), task.part.source,
                                                 task.batch_size, columns=("id", "text"))):
            spans, hits = index.match(doc.text)
            if hits:
                rows.append({"row": row, "id": doc.id, "spans": [list(s) for s in spans], "eval": hits})
            docs += 1
            nbytes += text_bytes(doc.text)
            progress.update(docs=1, units=1)
        atomic_write(self.output(task.layout, task.part),
                     (json.dumps({"rows": rows}, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8"))
        return {"docs": docs, "bytes": nbytes, "hit_docs": len(rows), "eval_sets": index.summary()}


STAGE = Decontaminate()
