"""Our MinHash LSH against ``datasketch`` on the same documents in the same run.

``compare_with_datasketch`` times

* ours: the real file-based stages (``signature_stage`` on one shard + ``cluster_stage``) in a temporary
  directory, so file writing and the union-find are included;
* datasketch: ``MinHash.update_batch`` over the same shingles (built the same way, encoded to bytes, as a
  datasketch user must) + ``MinHashLSH.insert`` + ``query`` for every document, with the same
  ``num_perm`` and ``(bands, rows)``;

and scores both against brute-force Jaccard with :func:`data_pipelines.dedup.synthetic.pair_metrics`
(pairs inside a cluster; datasketch's query results are joined into clusters with the same union-find,
untimed). ``python -m data_pipelines.dedup.bench`` runs it on a planted corpus of stdlib docstrings and
prints the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from typing import Any, Sequence

import numpy as np

from data_pipelines.dedup.cluster import cluster_stage, load_clusters
from data_pipelines.dedup.config import DedupConfig, as_dedup_config
from data_pipelines.dedup.signatures import signature_stage, split_keys
from data_pipelines.dedup.synthetic import (
    brute_force_jaccard,
    cluster_pairs,
    pair_metrics,
    planted_corpus,
    shingle_set,
    stdlib_docstrings,
)
from data_pipelines.dedup.unionfind import connected_components


def _ours(texts: Sequence[str], cfg: DedupConfig, kind: str) -> tuple[list[int], float, float]:
    with tempfile.TemporaryDirectory(prefix="dedup-bench-") as tmp:
        sig = os.path.join(tmp, "sig-0.npz")
        t0 = time.perf_counter()
        signature_stage(0, texts, sig, cfg, kind=kind)
        t1 = time.perf_counter()
        cluster_stage([sig], os.path.join(tmp, "out"), cfg)
        t2 = time.perf_counter()
        clusters = load_clusters(os.path.join(tmp, "out"))
    labels = list(range(len(texts)))
    _, rows = split_keys(clusters[:, 0])
    _, roots = split_keys(clusters[:, 1])
    for r, root in zip(rows.tolist(), roots.tolist()):
        labels[r] = root
    return labels, t1 - t0, t2 - t1


def _datasketch(texts: Sequence[str], cfg: DedupConfig, kind: str) -> tuple[list[int], float, float]:
    from datasketch import MinHash, MinHashLSH  # dev extra: only the benchmark needs it

    params = cfg.params_for(kind)
    t0 = time.perf_counter()
    sketches = []
    for text in texts:
        m = MinHash(num_perm=params.num_perm, seed=params.seed)
        m.update_batch([s.encode("utf-8", "surrogatepass") for s in shingle_set(text, params)])
        sketches.append(m)
    t1 = time.perf_counter()
    lsh = MinHashLSH(num_perm=params.num_perm, params=(params.bands, params.rows))
    for i, m in enumerate(sketches):
        lsh.insert(i, m)
    edges = [(i, j) for i, m in enumerate(sketches) for j in lsh.query(m) if j != i]
    t2 = time.perf_counter()
    e = np.array(edges, dtype=np.int64).reshape(-1, 2)
    labels = connected_components(len(texts), e[:, 0], e[:, 1]).tolist()
    return labels, t1 - t0, t2 - t1


def compare_with_datasketch(texts: Sequence[str], cfg: Any = None, kind: str = "web") -> dict[str, Any]:
    """Timings and precision/recall of our MinHash LSH and datasketch's on ``texts`` (see module doc)."""
    dcfg = as_dedup_config(cfg if cfg is not None else DedupConfig())
    dcfg = DedupConfig(**{**dcfg.__dict__, "exact": False, "minhash": True})  # near-dedup only, like datasketch
    params = dcfg.params_for(kind)
    texts = list(texts)
    truth = brute_force_jaccard(texts, params, min_jaccard=0.05)
    ours_labels, ours_sig, ours_cluster = _ours(texts, dcfg, kind)
    ds_labels, ds_sig, ds_lsh = _datasketch(texts, dcfg, kind)
    ours_total, ds_total = ours_sig + ours_cluster, ds_sig + ds_lsh
    mb = sum(len(t.encode("utf-8", "surrogatepass")) for t in texts) / 1e6
    return {
        "documents": len(texts),
        "megabytes": round(mb, 3),
        "kind": kind,
        "num_perm": params.num_perm,
        "bands": params.bands,
        "rows": params.rows,
        "threshold": round(params.threshold, 4),
        "ours_signature_s": round(ours_sig, 4),
        "ours_cluster_s": round(ours_cluster, 4),
        "ours_s": round(ours_total, 4),
        "ours_docs_per_s": round(len(texts) / ours_total, 1),
        "datasketch_minhash_s": round(ds_sig, 4),
        "datasketch_lsh_s": round(ds_lsh, 4),
        "datasketch_s": round(ds_total, 4),
        "datasketch_docs_per_s": round(len(texts) / ds_total, 1),
        "speedup": round(ds_total / ours_total, 2),
        "ours": pair_metrics(cluster_pairs(ours_labels), truth, params.threshold),
        "datasketch": pair_metrics(cluster_pairs(ds_labels), truth, params.threshold),
    }


def bench_corpus(num_base: int = 600, per_doc: int = 3, seed: int = 0, cfg: DedupConfig | None = None) -> list[str]:
    """Stdlib docstrings joined ``per_doc`` to a document, plus planted near copies (1/4 of ``num_base``)
    and hard negatives (1/8)."""
    params = (cfg or DedupConfig()).params_for("web")
    docs = stdlib_docstrings(min_words=30, limit=num_base * per_doc)
    base = [" ".join(docs[i : i + per_doc]) for i in range(0, len(docs) - per_doc + 1, per_doc)]
    t = params.threshold
    return planted_corpus(base, params, len(base) // 4, len(base) // 8, (t + 0.12, 0.98), (0.3, t - 0.18), seed).texts


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description="MinHash LSH: ours vs datasketch on a planted stdlib corpus")
    parser.add_argument("--base-docs", type=int, default=600, help="base documents before planting copies")
    parser.add_argument("--per-doc", type=int, default=3, help="docstrings joined into one document")
    args = parser.parse_args(argv)
    cfg = DedupConfig()
    result = compare_with_datasketch(bench_corpus(args.base_docs, args.per_doc, cfg=cfg), cfg, "web")
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
