"""Clustering at scale on synthetic signatures: time and peak RSS of the cluster stage within a memory budget.

    python -m data_pipelines.dedup.simbench --docs 20000000 --shards 80 --memory-mb 1024 [--dup-fraction 0.1]
        [--hot-fraction 0] [--verify signature] [--dir DIR]

Writes the signature files (:mod:`data_pipelines.dedup.simulate`, ``--dup-fraction`` planted duplicates), then runs
``cluster_stage`` with ``dedup.memory_mb`` in a fresh child process, so the peak RSS reported is the
clustering's own, and prints one JSON line: documents, seconds, peak RSS, removed duplicates. With
``--verify signature`` the files also carry the full signatures (448 bytes per document) and the candidate
pairs are verified within the same budget (:mod:`data_pipelines.dedup.verify_external`); the default
``verify=none`` writes smaller files. Progress of the clustering goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time


def _cluster_child(sig_dir: str, out_dir: str, memory_mb: int, verify: str) -> None:
    from data_pipelines.dedup import DedupConfig, cluster_stage

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)

    paths = sorted(os.path.join(sig_dir, f) for f in os.listdir(sig_dir))
    t0 = time.perf_counter()
    stats = cluster_stage(paths, out_dir, DedupConfig(memory_mb=memory_mb, verify=verify))
    with open("/proc/self/status") as f:  # the high-water mark of this process's own memory (reset by exec)
        hwm_kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    print(json.dumps({"cluster_s": round(time.perf_counter() - t0, 1), "dropped": dict(stats.dropped),
                      "docs": stats.docs_in, "peak_rss_mb": round(hwm_kb / 1024)}))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--docs", type=int, default=20_000_000)
    ap.add_argument("--shards", type=int, default=80)
    ap.add_argument("--memory-mb", type=int, default=1024)
    ap.add_argument("--verify", default="none", choices=["none", "signature"])
    ap.add_argument("--dup-fraction", type=float, default=0.1, help="planted duplicates, half exact (default 0.1)")
    ap.add_argument("--hot-fraction", type=float, default=0.0,
                    help="near copies of document 0: one huge cluster (default 0)")
    ap.add_argument("--dir", default=None, help="work folder (default: a temporary one, removed afterwards)")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        _cluster_child(args.child[0], args.child[1], args.memory_mb, args.verify)
        return {}
    from data_pipelines.dedup import DedupConfig
    from data_pipelines.dedup.simulate import write_signatures

    root = args.dir or tempfile.mkdtemp(prefix="dedup-sim-")
    try:
        t0 = time.perf_counter()
        write_signatures(os.path.join(root, "sig"), args.docs, args.shards, DedupConfig(),
                         dup_fraction=args.dup_fraction, with_signatures=args.verify != "none",
                         hot_fraction=args.hot_fraction)
        gen_s = time.perf_counter() - t0
        cmd = [sys.executable, "-m", "data_pipelines.dedup.simbench", "--memory-mb", str(args.memory_mb),
               "--verify", args.verify, "--child", os.path.join(root, "sig"), os.path.join(root, "out")]
        t0 = time.perf_counter()
        out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
        wall = time.perf_counter() - t0
        result = {"documents": args.docs, "shards": args.shards, "memory_mb": args.memory_mb, "verify": args.verify,
                  "dup_fraction": args.dup_fraction, "hot_fraction": args.hot_fraction,
                  "generate_s": round(gen_s, 1), "cluster_wall_s": round(wall, 1),
                  **json.loads(out.strip().splitlines()[-1])}
        print(json.dumps(result))
        return result
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
