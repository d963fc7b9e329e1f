"""Benchmark of the decontamination look-up against the obvious baseline, measured in the same run.

    python -m data_pipelines.decontam.bench [--examples 10000] [--docs 1000] [--words 400]

The baseline is a Python set of 13-word tuples (what a first implementation would write). Printed: the index
memory of both, documents per second of both (best of 5) and the ratio. Synthetic text: random words of a
20,000-word vocabulary, so no document matches and every window is looked up (the worst case).
"""

from __future__ import annotations

import argparse
import random
import time
import tracemalloc

from data_pipelines.decontam.evalsets import EvalSet
from data_pipelines.decontam.ngrams import EvalIndex, words


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m data_pipelines.decontam.bench")
    p.add_argument("--examples", type=int, default=10000)
    p.add_argument("--docs", type=int, default=1000)
    p.add_argument("--words", type=int, default=400)
    p.add_argument("--ngram", type=int, default=13)
    a = p.parse_args(argv)
    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(20000)]
    sets = [EvalSet("bench", "bench.jsonl", [(i, [" ".join(rng.choice(vocab) for _ in range(60))])
                                             for i in range(a.examples)])]
    docs = [" ".join(rng.choice(vocab) for _ in range(a.words)) for _ in range(a.docs)]
    n = a.ngram

    tracemalloc.start()
    t = time.perf_counter()
    idx = EvalIndex.build(sets, n, min(5, n))
    build_ours = time.perf_counter() - t
    mem_ours = tracemalloc.get_traced_memory()[0]
    t = time.perf_counter()
    base: set[tuple[str, ...]] = set()
    for _, texts in sets[0].examples:
        for text in texts:
            w = [m.group().casefold() for m in words(text)]
            base.update(tuple(w[i:i + n]) for i in range(len(w) - n + 1))
    build_base = time.perf_counter() - t
    mem_base = tracemalloc.get_traced_memory()[0] - mem_ours
    tracemalloc.stop()

    ours, theirs = [], []
    for _ in range(5):
        t = time.perf_counter()
        for d in docs:
            idx.match(d)
        ours.append(time.perf_counter() - t)
        t = time.perf_counter()
        for d in docs:
            w = [m.group().casefold() for m in words(d)]
            any(tuple(w[i:i + n]) in base for i in range(len(w) - n + 1))
        theirs.append(time.perf_counter() - t)
    grams = sum(len(h) for h in idx.hashes.values())
    print(f"eval index: {grams:,} distinct {n}-grams of {a.examples:,} examples")
    print(f"  hashed arrays  : {mem_ours / 1e6:8.1f} MB, built in {build_ours:.2f} s, "
          f"{a.docs / min(ours):9,.0f} docs/s ({a.docs * a.words / min(ours) / 1e6:.2f} M words/s)")
    print(f"  tuple set      : {mem_base / 1e6:8.1f} MB, built in {build_base:.2f} s, "
          f"{a.docs / min(theirs):9,.0f} docs/s")
    print(f"look-up speed-up over the tuple set: {min(theirs) / min(ours):.2f}x; "
          f"memory {mem_base / mem_ours:.1f}x less")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
