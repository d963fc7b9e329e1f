"""The filter example of docs/extending.md (``url_ratio_filter.py``), registered for the test only: it drops what
it should and counts why, its parameters are checked from config naming the block, and it runs in the
pipeline's read stage, its counts in the stage's completion marker."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from data_pipelines.document import Document
from data_pipelines.stats import StageStats
from pretrain.core.errors import ConfigError
from tests.extending.url_ratio_filter import UrlRatio
from tests.pipeline.fixtures import WebRecord, sample_wet_records, write_warc

CONF = Path(__file__).resolve().parents[2] / "conf"
PROSE = "The heap invariant holds for every parent and child, see https://docs.python.org/3/library/heapq.html today."
FARM = "Cheap deals " + " ".join(f"https://shop{i}.example.com/offer?id={i}" for i in range(12))


@pytest.fixture
def registered(monkeypatch):
    """The block registered as its entry in BLOCK_CLASSES would register it (the product's registry unchanged)."""
    from data_pipelines.filters.registry import BLOCKS

    monkeypatch.setitem(BLOCKS, UrlRatio.name, UrlRatio)


def test_it_drops_link_farms_and_counts_every_drop_and_change_by_reason():
    docs = [Document("prose", PROSE, "web"), Document("farm", FARM, "web"), Document("blank", "  \n ", "web")]
    stats = StageStats()
    kept = list(UrlRatio(max_ratio=0.3, remove_urls=True)(docs, stats))
    assert [d.id for d in kept] == ["prose"] and "https://" not in kept[0].text
    assert stats.docs_in == 3 and stats.docs_out == 1
    assert stats.dropped == {"url_ratio_too_high": 1, "url_ratio_empty": 1}
    assert stats.modified == {"url_ratio_removed": 1} and stats.extra == {"url_ratio_urls": {"removed": 1}}
    assert [d.id for d in UrlRatio(max_ratio=1.0)([Document("farm", FARM, "web")], StageStats())] == ["farm"]


def test_its_parameters_are_checked_from_config(registered):
    from data_pipelines.filters import build_blocks

    (block,) = build_blocks([{"name": "url_ratio", "max_ratio": 0.5}], "filters.web")
    assert isinstance(block, UrlRatio) and block.max_ratio == 0.5
    with pytest.raises(ConfigError, match=r"filters.web\[0\] \(url_ratio\): parameter 'max_ratio' = 'high' has the "
                                          r"wrong type: expected float"):
        build_blocks([{"name": "url_ratio", "max_ratio": "high"}], "filters.web")
    with pytest.raises(ConfigError, match=r"filters.web\[0\] \(url_ratio\): parameter 'max_ratio' = 2 is invalid"):
        build_blocks([{"name": "url_ratio", "max_ratio": 2}], "filters.web")


def test_unregistered_it_is_an_unknown_block():
    from data_pipelines.filters import build_blocks

    with pytest.raises(ConfigError, match="unknown filter block 'url_ratio'; accepted blocks: c4, code"):
        build_blocks([{"name": "url_ratio"}], "filters.web")


def test_it_runs_in_the_read_stage_and_its_counts_reach_the_marker(registered, tmp_path):
    from data_pipelines.run import run_pipeline

    wet = write_warc(str(tmp_path / "crawl.warc.wet.gz"), [*sample_wet_records(), WebRecord(
        "https://spam.example.com/deals.html", FARM.encode(), rec_type="conversion")], first_id=1)
    out = tmp_path / "out"
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("pipeline", overrides=[
            f"output_dir={out}", "sources=none", f"+sources.crawl={{kind: web, paths: [{wet}]}}", "filters=none",
            "filters.web=[{name: url_ratio, max_ratio: 0.3}]", "dedup=none", "executor.stages=[read]",
            "executor.progress=false"])
    run_pipeline(cfg)
    marker = json.loads((out / "work" / "markers" / "read" / "crawl" / "part-00000.done.json").read_text())
    (block,) = marker["filters"]
    assert block["name"] == "url_ratio" and block["stats"]["dropped"] == {"url_ratio_too_high": 1}
    assert block["stats"]["docs_in"] == 4 and marker["docs"] == 3
