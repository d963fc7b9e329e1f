"""Stage ``signatures`` (per part, with dedup on): the dedup hashes of the part's documents.

Output: ``work/signatures/<source>/part-N.npz`` (the dedup package's format), keyed by the part's global index
and row, so the cluster stage can name every document across all sources.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from data_pipelines.executor.local import Progress
from data_pipelines.executor.markers import fingerprint
from data_pipelines.executor.parts import Part
from data_pipelines.stages.base import PartStage, Task
from data_pipelines.stages.io import iter_texts
from data_pipelines.stages.layout import Layout

if TYPE_CHECKING:
    from data_pipelines.run import Pipeline


# dedup keys that only the clustering reads (its fingerprint holds them): changing one re-clusters without
# re-hashing the corpus. ``verify`` is one of them except that ``exact`` makes the signature files hold shingles.
CLUSTER_ONLY_KEYS = ("bucket_parts", "threshold", "verify_window", "memory_mb")


def signature_keys(dedup: dict[str, Any]) -> dict[str, Any]:
    """The part of the ``dedup`` config a signature file depends on."""
    out = {k: v for k, v in dedup.items() if k not in CLUSTER_ONLY_KEYS and k != "verify"}
    out["shingles_kept"] = dedup.get("verify") == "exact"
    return out


def cluster_keys(dedup: dict[str, Any]) -> dict[str, Any]:
    """The part of the ``dedup`` config the clustering reads beyond the signature files."""
    return {k: dedup.get(k) for k in (*CLUSTER_ONLY_KEYS, "verify")}


class Signatures(PartStage):
    name = "signatures"
    upstream = ("read",)
    folder = "work/signatures"
    intermediate = True

    def enabled(self, pipe: "Pipeline") -> bool:
        return pipe.dedup_on

    def output(self, layout: Layout, part: Part) -> Path:
        return layout.signatures(part)

    def fingerprint(self, pipe: "Pipeline", part: Part) -> str:
        # the global index is the part's dedup key space: a shifted index needs new signatures
        return fingerprint({"read": pipe.fp("read", part), "dedup": signature_keys(pipe.dedup),
                            "key": part.global_index})

    def measure(self, payload: dict[str, Any]) -> tuple[int, int]:
        return int(payload["stats"]["docs_in"]), int(payload["stats"]["bytes_in"])

    def run(self, task: Task, progress: Progress) -> dict[str, Any]:
        from data_pipelines.dedup import signature_stage

        part, lay = task.part, task.layout

        def texts() -> Iterator[str]:
            for t in iter_texts(lay.read_data(part), task.batch_size):
                progress.update(docs=1, units=1)
                yield t

        stats = signature_stage(part.global_index, texts(), str(self.output(lay, part)), task.dedup, kind=part.kind)
        return {"stats": stats.to_dict()}


STAGE = Signatures()
