"""Benchmark: throughput per worker of every pipeline stage, and our MinHash LSH against ``datasketch``.

    python -m data_pipelines.bench [--copies 40] [--workers 2] [--dedup-docs 600] [--keep DIR]

1. The bundled samples of all four kinds (``data_pipelines/samples``) are replicated ``--copies`` times into a
   temporary folder and run through the whole pipeline with ``--workers`` processes; the table gives, per
   stage, the documents and megabytes it consumed and the documents/s and MB/s per worker (totals divided
   by the summed task times of the workers). Replicas are exact duplicates, so the stages after dedup are
   timed in a run without dedup (see :func:`pipeline_bench`).
2. The MinHash stage against ``datasketch`` (``MinHash`` + ``MinHashLSH``) on the same documents in the same
   process (``data_pipelines.dedup.bench.compare_with_datasketch``): time for signatures + clustering, the
   speed-up ratio (target >= 5x) and precision/recall of both against brute-force Jaccard.

Figures go to stdout as plain tables (``docs/benchmarks.md`` records them); nothing is asserted on timings.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
from pathlib import Path

from data_pipelines.executor import MiB

SAMPLE_KINDS = ("web", "wiki", "books", "code")


def replicate_samples(dest: Path, copies: int) -> dict[str, Path]:
    """``copies`` copies of every bundled sample file (code: of every repository folder), per kind."""
    from data_pipelines.sources import package_path

    out = {}
    for kind in SAMPLE_KINDS:
        src = Path(package_path(f"data_pipelines/samples/{kind}"))
        target = dest / kind
        target.mkdir(parents=True, exist_ok=True)
        for item in sorted(src.iterdir()):
            if item.name.startswith((".", "__")):
                continue
            for i in range(copies):
                name = f"c{i:04d}-{item.name}"
                if item.is_dir():
                    shutil.copytree(item, target / name)
                else:
                    shutil.copyfile(item, target / name)
        out[kind] = target
    return out


def pipeline_bench(root: Path, copies: int, workers: int) -> list:
    """Timings of every stage on the replicated samples.

    Replicas are exact duplicates, so a deduplicated run would hand only the originals to the stages after
    dedup. Hence two runs in one output folder: every stage with ``dedup=none`` (the later stages see all
    documents), then only ``signatures`` and ``cluster`` with the default dedup (the read parts are reused).
    """
    from hydra import compose, initialize_config_dir

    from data_pipelines.run import run_pipeline

    inputs = replicate_samples(root / "inputs", copies)
    conf = Path(__file__).resolve().parents[1] / "conf"
    paths = {k: (f"{v}/*" if k == "code" else str(v)) for k, v in inputs.items()}
    overrides = [
        f"output_dir={root / 'out'}", "sources=none",
        *(f"+sources.{k}={{kind: {k}, paths: ['{p}']}}" for k, p in paths.items()),
        f"executor.workers={workers}", "executor.part_size_mb=0.25", "executor.progress=false",
        "tokenizer.vocab_size=8192",
    ]
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        all_stages = compose("pipeline", overrides=[*overrides, "dedup=none"])
        dedup_only = compose("pipeline", overrides=[*overrides, "executor.stages=[signatures,cluster]"])
    timings = run_pipeline(all_stages).timings
    dedup = [t for t in run_pipeline(dedup_only).timings if t.stage in ("signatures", "cluster")]
    read = [i for i, t in enumerate(timings) if t.stage == "read"]
    at = read[0] + 1 if read else 0
    return timings[:at] + dedup + timings[at:]


def stage_table(timings) -> str:
    rows = [("stage", "workers", "documents", "MB", "worker-s", "docs/s/worker", "MB/s/worker")]
    for t in timings:
        if t.tasks_run == 0:
            continue
        dps, mbps = t.per_worker()
        rows.append((t.stage, str(t.workers if t.tasks_run > 1 else 1), f"{t.docs:,}", f"{t.bytes / MiB:,.2f}",
                     f"{t.task_s:.2f}", f"{dps:,.0f}", f"{mbps:,.2f}"))
    return _table(rows)


def minhash_table(result: dict) -> str:
    rows = [("implementation", "seconds", "docs/s", "precision", "recall")]
    for name, key in (("ours (signatures + clusters)", "ours"), ("datasketch (MinHash + MinHashLSH)", "datasketch")):
        m = result[key]
        rows.append((name, f"{result[f'{key}_s']:.3f}", f"{result[f'{key}_docs_per_s']:,.0f}",
                     f"{m.get('precision', float('nan')):.3f}", f"{m.get('recall', float('nan')):.3f}"))
    return _table(rows)


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m data_pipelines.bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--copies", type=int, default=40, help="replicas of the bundled samples (default 40)")
    ap.add_argument("--workers", type=int, default=2, help="executor worker processes (default 2)")
    ap.add_argument("--dedup-docs", type=int, default=600, help="base documents of the MinHash comparison corpus")
    ap.add_argument("--keep", type=Path, default=None, help="run in this folder and keep it (default: a temp dir)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    from data_pipelines.dedup.bench import bench_corpus, compare_with_datasketch

    root = args.keep or Path(tempfile.mkdtemp(prefix="pipeline-bench-"))
    try:
        timings = pipeline_bench(root, args.copies, args.workers)
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    print(f"## Pipeline stages: bundled samples x {args.copies}, {args.workers} workers\n")
    print(stage_table(timings))
    texts = bench_corpus(num_base=args.dedup_docs)
    result = compare_with_datasketch(texts)
    print(f"\n## MinHash LSH vs datasketch: {result['documents']:,} documents ({result['megabytes']} MB), "
          f"{result['num_perm']} permutations, {result['bands']}x{result['rows']} bands (threshold {result['threshold']})\n")
    print(minhash_table(result))
    print(f"\nspeed-up over datasketch: {result['speedup']:.1f}x (target >= 5x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
