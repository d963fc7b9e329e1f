"""Benchmark: throughput per worker of every pipeline stage, and our MinHash LSH against ``datasketch``.

    python -m data_pipelines.bench [--copies 40] [--workers 2] [--dedup-docs 600] [--keep DIR] [--scaling 4]
    python -m data_pipelines.bench --filters     (only: each block of the web filter chain, MB/s, one process)
    python -m data_pipelines.bench --readers [--copies 20]   (only: each reader beside its floor, one process)

1. The bundled samples of all four kinds (``data_pipelines/samples``) are replicated ``--copies`` times into a
   temporary folder and run through the whole pipeline with ``--workers`` processes; the table gives, per
   stage, the documents and megabytes it consumed and the documents/s and MB/s per worker (totals divided
   by the summed task times of the workers). Replicas are exact duplicates, so the stages after dedup are
   timed in a run without dedup (see :func:`pipeline_bench`). Beside each rate, the stage's *floor*
   (:func:`floor_seconds`): the same bytes through only what the stage cannot avoid, in one process.
   ``--scaling N`` adds whole runs at N, 4N and 16N replicas with 1 and 2 workers (:func:`scaling_table`).
   Then each reader alone beside its floor (:func:`reader_table`: what any reader of the format cannot avoid,
   with the library we use for the format's own parse, e.g. one mwparserfromhell parse of every wiki page).
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
from data_pipelines.stats import StageStats

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


def _bench_overrides(root: Path, inputs: dict[str, Path], workers: int) -> list[str]:
    """The pipeline config of a bench run: the replicated samples as one source per kind, output under ``root``."""
    paths = {k: (f"{v}/*" if k == "code" else str(v)) for k, v in inputs.items()}
    return [
        f"output_dir={root / 'out'}", "sources=none",
        *(f"+sources.{k}={{kind: {k}, paths: ['{p}']}}" for k, p in paths.items()),
        f"executor.workers={workers}", "executor.part_size_mb=0.25", "executor.progress=false",
        "tokenizer.vocab_size=8192",
    ]


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
    overrides = _bench_overrides(root, inputs, workers)
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        all_stages = compose("pipeline", overrides=[*overrides, "dedup=none"])
        dedup_only = compose("pipeline", overrides=[*overrides, "executor.stages=[signatures,cluster]"])
    timings = run_pipeline(all_stages).timings
    dedup = [t for t in run_pipeline(dedup_only).timings if t.stage in ("signatures", "cluster")]
    read = [i for i, t in enumerate(timings) if t.stage == "read"]
    at = read[0] + 1 if read else 0
    return timings[:at] + dedup + timings[at:]


FLOORS = {
    "read": "decompress + parse (fastwarc / lxml)",
    "signatures": "xxh3 over the texts",
    "documents": "pyarrow Parquet write",
    "tokenize": "encode_batch_fast",
}


def floor_seconds(root: Path, inputs: dict[str, Path]) -> dict[str, float]:
    """One-process times of what each stage cannot beat, on the same inputs and documents as the run:
    reading and decompressing every input file (with the WARC records iterated by fastwarc and wiki XML
    parsed by lxml), hashing every document text, writing them to Parquet, and encoding them with the
    trained tokenizer."""
    import io
    import time

    import pyarrow as pa
    import pyarrow.parquet as pq
    import xxhash
    from lxml import etree

    from data_pipelines.sources.base import open_binary

    files = sorted(p for d in inputs.values() for p in d.rglob("*") if p.is_file())
    t0 = time.perf_counter()
    for path in files:
        stream, _ = open_binary(str(path))
        with stream:
            if ".warc" in path.name:
                from fastwarc.warc import ArchiveIterator

                for record in ArchiveIterator(stream, parse_http=True):
                    record.reader.read()
            elif ".xml" in path.name:
                for _, elem in etree.iterparse(stream, events=("end",), huge_tree=True):
                    elem.clear()
            else:
                stream.read()
    out = {"read": time.perf_counter() - t0}
    texts = [t for f in sorted((root / "out" / "documents").rglob("*.parquet"))
             for t in pq.read_table(f, columns=["text"]).column(0).to_pylist()]
    t0 = time.perf_counter()
    for text in texts:
        xxhash.xxh3_64_intdigest(text.encode("utf-8", "surrogatepass"))
    out["signatures"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    pq.write_table(pa.table({"id": [str(i) for i in range(len(texts))], "text": texts}), io.BytesIO())
    out["documents"] = time.perf_counter() - t0
    tok_file = root / "out" / "tokenizer" / "tokenizer.json"
    if tok_file.is_file():
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(tok_file))
        t0 = time.perf_counter()
        for i in range(0, len(texts), 1000):
            tok.encode_batch_fast(texts[i : i + 1000])
        out["tokenize"] = time.perf_counter() - t0
    return out


def stage_table(timings, floors: dict[str, float] | None = None) -> str:
    """Per stage: totals, per-worker rates and, where a floor was measured, its MB/s on the same bytes and
    how many times slower the stage is (worker-seconds over floor seconds)."""
    floors = floors or {}
    rows = [("stage", "workers", "documents", "MB", "worker-s", "docs/s/worker", "MB/s/worker", "floor MB/s",
             "x floor", "floor")]
    for t in timings:
        if t.tasks_run == 0:
            continue
        dps, mbps = t.per_worker()
        f = floors.get(t.stage)
        floor_cols = (f"{t.bytes / MiB / f:,.2f}", f"{t.task_s / f:,.1f}", FLOORS[t.stage]) if f else ("-", "-", "-")
        rows.append((t.stage, str(t.workers if t.tasks_run > 1 else 1), f"{t.docs:,}", f"{t.bytes / MiB:,.2f}",
                     f"{t.task_s:.2f}", f"{dps:,.0f}", f"{mbps:,.2f}", *floor_cols))
    return _table(rows)


def _cpu_s() -> float:
    """CPU seconds (user + system) of this process and of its reaped children (the pool workers) so far."""
    import resource

    return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                 resource.getrusage(resource.RUSAGE_CHILDREN)))


def scaling_run(copies: int, workers: int) -> tuple[int, float, float]:
    """One whole run (every stage, dedup on) over ``copies`` replicas: (documents read, wall s, CPU s of this
    process and its workers)."""
    import time

    from hydra import compose, initialize_config_dir

    from data_pipelines.run import run_pipeline

    conf = Path(__file__).resolve().parents[1] / "conf"
    with tempfile.TemporaryDirectory(prefix="pipeline-scaling-") as tmp:
        root = Path(tmp)
        inputs = replicate_samples(root / "inputs", copies)
        overrides = _bench_overrides(root, inputs, workers)
        with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
            cfg = compose("pipeline", overrides=overrides)
        t0, c0 = time.perf_counter(), _cpu_s()
        timings = run_pipeline(cfg).timings
        wall, cpu = time.perf_counter() - t0, _cpu_s() - c0
    return max((t.docs for t in timings if t.stage == "read"), default=0), wall, cpu


def scaling_table(base_copies: int, multipliers=(1, 4, 16), workers=(1, 2)) -> str:
    """Wall time, CPU time, documents/s and peak RSS of whole runs (every stage, dedup on) at ``multipliers`` x
    the bench corpus with each worker count; the peak RSS is the largest of the main process and its workers.

    CPU s counts the main process and its workers together: on a shared machine it is the steadier figure, and
    workers that cost no set-up keep it where one worker has it. An untimed run at the smallest size comes
    first, so that every row finds this process in the same state (a process's first run pays its imports,
    the language model and matplotlib; forked workers inherit them, see :mod:`data_pipelines.executor.local`).
    """
    import resource

    scaling_run(base_copies * multipliers[0], workers[0])  # warm-up, not shown
    rows = [("corpus", "workers", "documents", "wall s", "CPU s", "docs/s", "speed-up", "peak RSS MB")]
    for m in multipliers:
        base_wall = None
        for w in workers:
            docs, wall, cpu = scaling_run(base_copies * m, w)
            rss = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                      resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024
            base_wall = base_wall or wall
            rows.append((f"{m}x ({base_copies * m} copies)", str(w), f"{docs:,}", f"{wall:.1f}", f"{cpu:.1f}",
                         f"{docs / wall:,.0f}", f"{base_wall / wall:.2f}x", f"{rss:,.0f}"))
    return _table(rows)


def book_sized(src: Path, dest: Path, min_bytes: int = 300_000) -> list[str]:
    """The bundled sample books with their bodies (between the licence header and footer) repeated to
    ``min_bytes`` or more: a Project Gutenberg book is typically 0.3-1 MB, the samples 7-9 KB, and a reader's
    cost per book (opening the file, the header) weighs on the small ones."""
    from data_pipelines.sources import gutenberg

    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for path in sorted(p for p in src.rglob("*.txt") if p.is_file()):
        text = path.read_bytes().decode("latin-1")  # one character per byte: the bytes are written back as read
        k = gutenberg._header_marker(text, 800)
        nl = len(text) if k is None else gutenberg._line_end(text, k)
        end = gutenberg._footer_line(text, nl + 1) if nl < len(text) else None
        if end is None or end <= nl + 1:
            raise ValueError(f"{path}: a book-sized copy needs a Project Gutenberg START marker, a body and a footer")
        body = text[nl + 1:end - 1]
        repeat = -(-min_bytes // max(1, len(body)))
        target = dest / "-".join(path.relative_to(src).parts)  # books of the same name in two folders stay two
        target.write_bytes("\n".join([text[:nl]] + [body] * repeat + [text[end:]]).encode("latin-1"))
        out.append(str(target))
    return out


def reader_table(inputs: dict[str, Path], repeats: int = 3) -> str:
    """Per source kind, one process, CPU time (best of ``repeats``): the reader alone (no filters) against its
    floor on the same files. Code is left out (its reader walks trees).

    The *floor* is what any reader of that format into text cannot avoid, with the library we use for the part
    that is the format's own work (as tokenize's floor is ``encode_batch_fast``):

    * web: fastwarc records with resiliparse's extraction of every HTML response;
    * wiki: bz2 + ``lxml.iterparse`` of the pages + one ``mwparserfromhell`` parse (our settings) of the
      wikitext of every article (namespace 0, not a redirect): turning wikitext into text starts from that parse;
    * books: decompress + decode (UTF-8, invalid bytes replaced) + splitting the text into lines: the book
      clean-up is line work.

    ``x old floor`` is against the floors this table had before (2026-12-01): wiki bz2 + ``iterparse`` alone,
    books the bytes alone; they leave out the work the wiki and books readers exist for, so no reader of those
    formats could come near them.

    The books are also read at the size of real ones (:func:`book_sized`, the samples' bodies repeated to 0.3 MB),
    where the per-file cost of the 8 KB samples no longer hides the per-byte one.

    2026-12-01, ``--readers --copies 20``, 2 shared cores (``docs/benchmarks.md``), x floor before -> after the
    readers were made fast: web 0.9 -> 0.9, wiki 2.6 -> 1.2 (old floor 16.6 -> 9.6), books 11.9 -> 6.8 (old
    floor 19.9 -> 11.1); later, books at 0.3 MB+ 8.5-9.5 -> 5.9-6.4 (the 8 KB samples 9 -> 12), then with the
    compiled book passes 5.4-6.4 -> 1.8-1.9 (the 8 KB samples 11 -> 7)."""
    import time

    from fastwarc.warc import ArchiveIterator, WarcRecordType
    from lxml import etree

    from data_pipelines.sources import make_reader
    from data_pipelines.sources.base import open_binary
    from data_pipelines.sources.html import _resiliparse, detect_charset, looks_like_html
    from data_pipelines.sources.wikitext import parse as parse_wikitext

    def old_floor(path: str) -> None:
        stream, _ = open_binary(path)
        with stream:
            if ".xml" in path:
                for _, elem in etree.iterparse(stream, events=("end",), huge_tree=True):
                    elem.clear()
            elif ".warc" not in path:
                stream.read()

    def floor(path: str) -> None:
        stream, _ = open_binary(path)
        with stream:
            if ".warc" in path:
                for record in ArchiveIterator(stream, record_types=WarcRecordType.response, parse_http=True):
                    body = record.reader.read()
                    if looks_like_html(body):
                        _resiliparse(body.decode(detect_charset(body), "replace"), None)
            elif ".xml" in path:
                for _, page in etree.iterparse(stream, events=("end",), tag="{*}page", huge_tree=True):
                    found = {etree.QName(e).localname: e.text for e in page.iter("{*}ns", "{*}text", "{*}redirect")}
                    if "redirect" not in found and (found.get("ns") or "0").strip() == "0":
                        parse_wikitext(found.get("text") or "")
                    page.clear()
            else:
                stream.read().decode("utf-8", "replace").split("\n")

    def best(fn, files: list[str]) -> float:
        out = float("inf")
        for _ in range(repeats):
            t0 = time.process_time()
            for f in files:
                fn(f)
            out = min(out, time.process_time() - t0)
        return out

    rows = [("reader", "files", "documents", "MB on disk", "reader s", "floor s", "x floor", "floor", "old floor s",
             "x old floor")]
    what = {"web": "fastwarc + resiliparse", "wiki": "bz2 + lxml iterparse + mwparserfromhell parse",
            "books": "decompress + decode + split lines"}
    runs = [(kind, kind, sorted(str(p) for p in inputs[kind].rglob("*") if p.is_file())) for kind in ("web", "wiki", "books")]
    samples = Path(__file__).resolve().parent / "samples" / "books"
    runs.append(("books, 0.3 MB+", "books", book_sized(samples, inputs["books"].parent / "books-book-sized")))
    for label, kind, files in runs:
        reader = make_reader(kind, {"kind": kind, "paths": files})
        docs = sum(1 for f in files for _ in reader.read(f, StageStats()))
        best_r = best(lambda f: sum(1 for _ in reader.read(f, StageStats())), files)
        best_f = best(floor, files)
        old = ("-", "-") if kind == "web" else (f"{(o := best(old_floor, files)):.4f}", f"{best_r / o:.1f}")
        mb = sum(Path(f).stat().st_size for f in files) / MiB
        rows.append((label, f"{len(files):,}", f"{docs:,}", f"{mb:.2f}", f"{best_r:.4f}", f"{best_f:.4f}",
                     f"{best_r / best_f:.1f}", what[kind], *old))
    return _table(rows)


def filter_corpus(min_words: int = 120) -> list[str]:
    """English prose every Python installation has: the stdlib's docstrings of ``min_words`` words or more,
    each paragraph reflowed onto one line (the layout of extracted web text)."""
    import re

    from data_pipelines.dedup.synthetic import stdlib_docstrings

    return ["\n\n".join(" ".join(p.split()) for p in re.split(r"\n\s*\n", t)) for t in stdlib_docstrings(min_words)]


def filter_table(texts: list[str], kind: str = "web", repeats: int = 5) -> str:
    """CPU time (``time.process_time``, the best of ``repeats`` runs: the machine may be shared) of each block of
    the default ``filters.<kind>`` chain, each on the documents the previous one kept, and of the whole chain."""
    import time

    import yaml

    from data_pipelines.document import Document
    from data_pipelines.filters.config import filters_for_source

    cfg = yaml.safe_load((Path(__file__).resolve().parents[1] / "conf/filters/default.yaml").read_text())
    blocks = filters_for_source(cfg, kind, kind)
    best: dict[str, tuple[float, float, int, int]] = {}
    for _ in range(repeats):
        docs = [Document(str(i), t, "bench", {}) for i, t in enumerate(texts)]
        for block in blocks:
            mb = sum(len(d.text.encode("utf-8", "surrogatepass")) for d in docs) / MiB
            n_in = len(docs)
            t0 = time.process_time()
            docs = list(block(docs, StageStats()))
            dt = time.process_time() - t0
            if block.name not in best or dt < best[block.name][0]:
                best[block.name] = (dt, mb, n_in, len(docs))
    rows = [("block", "documents in", "kept", "MB in", "CPU s", "MB/s")]
    for name, (dt, mb, n_in, kept) in best.items():
        rows.append((name, f"{n_in:,}", f"{kept:,}", f"{mb:.3f}", f"{dt:.4f}", f"{mb / dt:,.1f}"))
    total_s = sum(v[0] for v in best.values())
    total_mb = sum(len(t.encode("utf-8", "surrogatepass")) for t in texts) / MiB
    rows.append(("whole chain", f"{len(texts):,}", rows[-1][2], f"{total_mb:.3f}", f"{total_s:.4f}",
                 f"{total_mb / total_s:,.2f}"))
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
    ap.add_argument("--scaling", type=int, default=0, metavar="COPIES",
                    help="also print the scaling table at 1x, 4x, 16x COPIES replicas with 1 and 2 workers")
    ap.add_argument("--filters", action="store_true",
                    help="only the per-block table of the default web filter chain on stdlib docstrings")
    ap.add_argument("--readers", action="store_true",
                    help="only the table of the readers beside their floors, on the samples x --copies")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if args.readers:
        with tempfile.TemporaryDirectory(prefix="pipeline-readers-") as tmp:
            inputs = replicate_samples(Path(tmp), args.copies)
            print(f"## Readers alone (no filters): bundled samples x {args.copies}, one process, CPU time\n")
            print(reader_table(inputs))
        return 0
    if args.filters:
        texts = filter_corpus()
        print(f"## Filter chain filters.web: {len(texts):,} stdlib docstrings, one process, best of 5 (CPU time)\n")
        print(filter_table(texts))
        return 0

    from data_pipelines.dedup.bench import bench_corpus, compare_with_datasketch

    root = args.keep or Path(tempfile.mkdtemp(prefix="pipeline-bench-"))
    try:
        timings = pipeline_bench(root, args.copies, args.workers)
        floors = floor_seconds(root, {k: root / "inputs" / k for k in SAMPLE_KINDS})
        readers = reader_table({k: root / "inputs" / k for k in SAMPLE_KINDS})
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    print(f"## Pipeline stages: bundled samples x {args.copies}, {args.workers} workers\n")
    print(stage_table(timings, floors))
    print("\n## Readers alone (no filters), one process, CPU time\n")
    print(readers)
    if args.scaling:
        print(f"\n## Scaling: whole runs at 1x, 4x and 16x {args.scaling} replicas, 1 and 2 workers\n")
        print(scaling_table(args.scaling))
    texts = bench_corpus(num_base=args.dedup_docs)
    result = compare_with_datasketch(texts)
    print(f"\n## MinHash LSH vs datasketch: {result['documents']:,} documents ({result['megabytes']} MB), "
          f"{result['num_perm']} permutations, {result['bands']}x{result['rows']} bands (threshold {result['threshold']})\n")
    print(minhash_table(result))
    print(f"\nspeed-up over datasketch: {result['speedup']:.1f}x (target >= 5x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
