"""The stage example of docs/extending.md (``stats_stage.py``), added through ``Pipeline(cfg, stages=...)`` so the
product's list stays unchanged: it runs in a real pipeline run over the wiki fixture after its upstream stage,
writes its output, is skipped on a rerun and redone when its upstream's config changes."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from hydra import compose, initialize_config_dir

from data_pipelines.run import Pipeline, run_pipeline
from pretrain.core.errors import ConfigError
from tests.extending.stats_stage import STAGE
from tests.pipeline.fixtures import build_wiki_dump

CONF = Path(__file__).resolve().parents[2] / "conf"


def _stages():
    """The product's stages with ``stats`` right after its upstream stage (where its STAGES entry would go)."""
    from data_pipelines.stages import STAGE_NAMES, STAGES

    at = STAGE_NAMES.index("documents") + 1
    return [*STAGES[:at], STAGE, *STAGES[at:]]


def _run(out: Path, dump: str, *extra: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("pipeline", overrides=[
            f"output_dir={out}", "sources=none", f"+sources.wiki={{kind: wiki, paths: [{dump}]}}", "filters=none",
            "dedup=none", "executor.stages=[read,documents,stats]", "executor.progress=false", *extra])
    summary = run_pipeline(cfg, Pipeline(cfg, _stages()))
    return cfg, {t.stage: (t.tasks_run, t.tasks_skipped) for t in summary.timings}


def test_the_stage_runs_after_its_upstream_and_reruns_only_when_that_changes(tmp_path):
    dump = build_wiki_dump(str(tmp_path / "pages-articles.xml.bz2"))
    out = tmp_path / "out"
    cfg, ran = _run(out, dump)
    assert ran == {"read": (1, 0), "documents": (1, 0), "stats": (1, 0)}
    texts = pq.read_table(out / "documents" / "wiki" / "part-00000.parquet").column("text").to_pylist()
    stats = json.loads((out / "stats" / "stats.json").read_text())
    assert stats == {"wiki": {"documents": len(texts), "words": sum(len(t.split()) for t in texts),
                              "bytes": sum(len(t.encode()) for t in texts),
                              "longest_words": max(len(t.split()) for t in texts)}}
    marker = out / "work" / "markers" / "stats.done.json"
    assert json.loads(marker.read_text())["sources"] == stats
    mtime = marker.stat().st_mtime_ns

    _, ran = _run(out, dump)  # same config: every unit is complete with its fingerprint
    assert ran == {"read": (0, 1), "documents": (0, 1), "stats": (0, 1)} and marker.stat().st_mtime_ns == mtime

    # a filter on the source changes read's fingerprint, hence documents' and stats': all three are redone
    _, ran = _run(out, dump, "filters.wiki=[{name: gopher_quality, min_doc_words: 120}]")
    assert ran == {"read": (1, 0), "documents": (1, 0), "stats": (1, 0)}
    fewer = json.loads((out / "stats" / "stats.json").read_text())["wiki"]
    assert 0 < fewer["documents"] < len(texts) and fewer["documents"] == pq.read_metadata(
        out / "documents" / "wiki" / "part-00000.parquet").num_rows

    with pytest.raises(ConfigError, match="executor.stages: unknown stage 'stats'"):
        Pipeline(cfg)  # the product's list does not know it
