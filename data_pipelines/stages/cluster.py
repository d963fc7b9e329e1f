"""Stage ``cluster`` (global, with dedup on): band buckets and exact groups of all parts -> clusters.

Output: ``work/dedup/`` (removal lists per part, ``dedup.json`` with cluster sizes). The bucket parts run in
executor workers; the merge runs here (:mod:`data_pipelines.dedup.cluster`).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from data_pipelines.executor.local import Progress
from data_pipelines.executor.markers import fingerprint
from data_pipelines.stages.base import GlobalStage
from data_pipelines.stages.layout import Layout
from data_pipelines.stages.signatures import cluster_keys

if TYPE_CHECKING:
    from data_pipelines.executor.local import LocalExecutor
    from data_pipelines.run import Pipeline


def bucket_task(task: tuple[list[str], str, dict[str, Any], int, int], progress: Progress) -> str:
    """One bucket part of the cluster stage (run in a worker)."""
    from data_pipelines.dedup import bucket_stage

    paths, out_dir, dedup, index, num_parts = task
    out = bucket_stage(paths, out_dir, dedup, index, num_parts)
    progress.update(units=1)
    return out


class Cluster(GlobalStage):
    name = "cluster"
    upstream = ("signatures",)
    folder = "work/dedup"
    intermediate = True

    def enabled(self, pipe: "Pipeline") -> bool:
        return pipe.dedup_on

    def output(self, layout: Layout, part: None = None) -> Path:
        return layout.dedup_dir / "dedup.json"

    def fingerprint(self, pipe: "Pipeline", part: None = None) -> str:
        return fingerprint({"sig": [pipe.fp("signatures", p) for p in pipe.parts],
                            "keys": [p.global_index for p in pipe.parts], "dedup": cluster_keys(pipe.dedup)})

    def measure(self, payload: dict[str, Any]) -> tuple[int, int]:
        return int(payload["stats"]["docs_in"]), 0

    def run(self, pipe: "Pipeline", executor: "LocalExecutor") -> dict[str, Any]:
        from data_pipelines.dedup import merge_stage

        out = pipe.layout.dedup_dir
        shutil.rmtree(out, ignore_errors=True)  # the folder is this stage's alone: no stale shard files
        out.mkdir(parents=True)
        n = int(pipe.dedup.get("bucket_parts", 1))
        paths = [str(pipe.layout.signatures(p)) for p in pipe.parts]
        executor.map("buckets", bucket_task, [(paths, str(out), pipe.dedup, i, n) for i in range(n)], total=n,
                     unit="part", record=False)
        return {"stats": merge_stage(str(out), pipe.dedup, n).to_dict()}


STAGE = Cluster()
