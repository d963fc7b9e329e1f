"""The MinHash benchmark harness runs both implementations on the same documents and scores them alike.

Timings are printed by ``python -m data_pipelines.dedup.bench`` (ratios measured in the same run), never
asserted here: this test checks that the figures exist and that both sides reach the same quality.
"""

from __future__ import annotations

import pytest

from data_pipelines.dedup import DedupConfig
from data_pipelines.dedup.bench import bench_corpus, compare_with_datasketch

pytest.importorskip("datasketch", reason="the comparison needs datasketch (dev extra)")


def test_compare_with_datasketch_reports_both_sides():
    cfg = DedupConfig()
    texts = bench_corpus(num_base=120, per_doc=3, cfg=cfg)
    result = compare_with_datasketch(texts, cfg, "web")
    assert result["documents"] == len(texts) and (result["bands"], result["rows"]) == (14, 8)
    for side in ("ours", "datasketch"):
        assert result[side]["positives"] >= 30
        assert result[side]["recall"] >= 0.95 and result[side]["precision"] >= 0.95, result
        assert result[f"{side}_s"] > 0
    assert result["speedup"] == pytest.approx(result["datasketch_s"] / result["ours_s"], rel=0.02)
