"""Stage ``report`` (global): ``manifest.json`` (what the trainer reads), ``report.json``, ``report.md``, plots.

The counts come from the completion markers of every stage (:mod:`data_pipelines.report`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from data_pipelines.executor.markers import fingerprint, remove_stale_tmp
from data_pipelines.stages.base import GlobalStage
from data_pipelines.stages.layout import Layout

if TYPE_CHECKING:
    from data_pipelines.executor.local import LocalExecutor
    from data_pipelines.run import Pipeline


class Report(GlobalStage):
    name = "report"
    upstream = ("tokenize",)

    def output(self, layout: Layout, part: None = None) -> Path:
        return layout.root / "report.json"

    def fingerprint(self, pipe: "Pipeline", part: None = None) -> str:
        return fingerprint({"tok": [pipe.fp("tokenize", p) for p in pipe.parts], "cluster": pipe.fp("cluster"),
                            "dedup_on": pipe.dedup_on})

    def run(self, pipe: "Pipeline", executor: "LocalExecutor") -> dict[str, Any]:
        from data_pipelines.report import build_report, write_manifest_for, write_report

        lay = pipe.layout
        for d, stem in ((lay.root, "report"), (lay.root, "manifest"), (lay.root / "report", "")):
            remove_stale_tmp(d, stem)
        per_part = {p.global_index: {s: pipe.marker(s, p) for s in ("read", "documents", "tokenize")} for p in pipe.parts}
        cluster = pipe.marker("cluster") if pipe.dedup_on else None
        tokenizer = pipe.marker("tokenizer")
        decon = None
        if pipe.by_name["decontaminate"].enabled(pipe):
            decon = {"config": pipe.config["decontamination"],
                     "eval_sets": (pipe.marker("decontaminate", pipe.parts[0]) or {}).get("eval_sets", {})}
        report = build_report(pipe.parts, per_part, cluster, tokenizer, pipe.dedup_on, decon)
        write_manifest_for(lay, pipe.parts, per_part, tokenizer)
        write_report(lay.root, report)
        return {"sources": sorted(pipe.sources)}


STAGE = Report()
