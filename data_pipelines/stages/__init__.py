"""The pipeline's stages, in the order they run: THE list every other place derives from.

=============  ========  ====================================================================================
stage          scope     output (under ``output_dir``)
=============  ========  ====================================================================================
read           per part  ``work/read/<source>/part-N.parquet``: reader + filters (id, text, metadata JSON)
signatures     per part  ``work/signatures/<source>/part-N.npz``: dedup hashes (dedup helper's format)
decontaminate  per part  ``work/decontam/<source>/part-N.json``: rows overlapping eval sets (only with
                         ``decontamination.eval_paths``; applied by ``documents``)
cluster        global    ``work/dedup/``: removal lists per part, ``dedup.json`` (cluster sizes)
documents      per part  ``documents/<source>/part-N.parquet`` through ``datasets``: the final documents
tokenizer      global    ``tokenizer/tokenizer.json``: trained on the documents, or the given file
tokenize       per part  ``tokens/<source>/part-N.{bin,idx}``: indexed token shards, EOD after each document
report         global    ``manifest.json``, ``report.json``, ``report.md``, ``report/*.png``
=============  ========  ====================================================================================

A stage is an object with a name, a scope, upstream stages, outputs, a fingerprint and a run
(:mod:`data_pipelines.stages.base`), one file each. Adding one = a file here plus an entry in
:data:`STAGES` after its upstream stages; ``executor.stages``, the runner (:mod:`data_pipelines.run`) and the
SLURM launcher (:mod:`data_pipelines.executor.slurm`) take it from this list.
"""

from __future__ import annotations

from typing import Sequence

from data_pipelines.stages import cluster, decontaminate, documents, read, report, signatures, tokenize, tokenizer
from data_pipelines.stages.base import GLOBAL, PART, GlobalStage, PartStage, Stage, Task
from data_pipelines.stages.layout import Layout

STAGES: tuple[Stage, ...] = (
    read.STAGE,
    signatures.STAGE,
    decontaminate.STAGE,
    cluster.STAGE,
    documents.STAGE,
    tokenizer.STAGE,
    tokenize.STAGE,
    report.STAGE,
)


def check_order(stages: Sequence[Stage]) -> None:
    """Names are unique and every upstream stage comes earlier in the list (a programming error otherwise)."""
    seen: set[str] = set()
    for s in stages:
        if s.name in seen:
            raise ValueError(f"stage {s.name!r} is listed twice")
        if s.scope not in (PART, GLOBAL):
            raise ValueError(f"stage {s.name!r}: scope {s.scope!r} is neither {PART!r} nor {GLOBAL!r}")
        late = [u for u in s.upstream if u not in seen]
        if late:
            raise ValueError(f"stage {s.name!r}: upstream {late} must come earlier in the stage list")
        seen.add(s.name)


check_order(STAGES)
STAGE_NAMES: tuple[str, ...] = tuple(s.name for s in STAGES)
PER_PART_STAGES: tuple[str, ...] = tuple(s.name for s in STAGES if s.scope == PART)
GLOBAL_STAGES: tuple[str, ...] = tuple(s.name for s in STAGES if s.scope == GLOBAL)

__all__ = [
    "GLOBAL", "GLOBAL_STAGES", "PART", "PER_PART_STAGES", "STAGES", "STAGE_NAMES", "GlobalStage", "Layout",
    "PartStage", "Stage", "Task", "check_order",
]
