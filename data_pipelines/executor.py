"""Work parts, completion markers and the local multi-process executor.

* A **part** is a group of input files of one source, about ``executor.part_size_mb`` in size (a file is
  never split: compressed dumps cannot be entered in the middle). Parts are numbered per source
  (``part-00003``) and globally (the dedup key space); the plan is sorted, so the same inputs always give the
  same parts whatever the machine.
* Every per-part stage writes its output under a temporary name, renames it, and only then writes its
  **completion marker** (``<name>.done.json``, atomic rename as well) holding the part's statistics and the
  fingerprint of the config it was made with. A rerun skips parts whose marker exists with the current
  fingerprint and redoes the rest, so after ``kill -9`` only unfinished parts are redone and the output is
  byte-identical to an uninterrupted run.
* ``executor.shard`` / ``executor.num_shards`` select the parts with ``global_index % num_shards == shard``,
  so a SLURM job array of ``num_shards`` tasks covers every part exactly once.
* :class:`LocalExecutor` runs tasks in ``workers`` processes (a ``concurrent.futures`` pool with the chosen
  start method), shows a tqdm bar per stage (documents/s, ETA) fed by the workers through a queue, and
  collects per-task timings for the summary and the benchmark.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing as mp
import os
import queue as queue_mod
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

from pretrain.core.atomic import atomic_write
from pretrain.core.errors import DataError

log = logging.getLogger(__name__)

MiB = 1 << 20


# ----------------------------------------------------------------------------------------------- parts
@dataclass(frozen=True)
class Part:
    """One unit of per-part work: some input files of one source."""

    source: str
    kind: str
    index: int  # within the source: part-00003
    global_index: int  # across all sources (dedup keys, shard assignment)
    files: tuple[str, ...]
    sizes: tuple[int, ...]  # input bytes of each file

    @property
    def size(self) -> int:
        return sum(self.sizes)

    @property
    def name(self) -> str:
        return f"part-{self.index:05d}"

    @property
    def label(self) -> str:
        return f"{self.source}/{self.name}"


def input_size(path: str) -> int:
    """Bytes of a file, or of every file below a directory (a code repository unit)."""
    if os.path.isdir(path):
        total = 0
        for dirpath, _, files in os.walk(path):
            for f in files:
                fp = os.path.join(dirpath, f)
                if not os.path.islink(fp):
                    try:
                        total += os.path.getsize(fp)
                    except OSError:
                        pass
        return total
    return os.path.getsize(path)


def plan_parts(sources: Sequence[tuple[str, str, Sequence[str]]], part_size_bytes: int) -> list[Part]:
    """Group each source's (sorted) inputs into consecutive parts of about ``part_size_bytes``.

    ``sources`` is ``[(name, kind, files)]``; sources are taken in name order and files in path order, so
    the plan depends only on the inputs. A part closes once it holds at least ``part_size_bytes``.
    """
    parts: list[Part] = []
    for name, kind, files in sorted(sources, key=lambda s: s[0]):
        group: list[str] = []
        sizes: list[int] = []
        index = 0
        for f in sorted(files):
            group.append(f)
            sizes.append(input_size(f))
            if sum(sizes) >= part_size_bytes:
                parts.append(Part(name, kind, index, len(parts), tuple(group), tuple(sizes)))
                index, group, sizes = index + 1, [], []
        if group:
            parts.append(Part(name, kind, index, len(parts), tuple(group), tuple(sizes)))
    return parts


def plan_to_json(parts: Sequence[Part]) -> dict[str, Any]:
    return {"format": "pipeline-plan/1", "parts": [
        {"source": p.source, "kind": p.kind, "index": p.index, "global_index": p.global_index,
         "files": list(p.files), "sizes": list(p.sizes)} for p in parts
    ]}


def parts_for_shard(parts: Sequence[Part], shard: int | None, num_shards: int) -> list[Part]:
    if shard is None:
        return list(parts)
    return [p for p in parts if p.global_index % num_shards == shard]


# ----------------------------------------------------------------------------------------------- files
def dump_json(obj: Any) -> bytes:
    """Canonical JSON bytes (sorted keys, fixed indentation) so equal content gives equal files."""
    return (json.dumps(obj, indent=1, sort_keys=True, ensure_ascii=False, default=str) + "\n").encode("utf-8")


def fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def write_marker(path: str | os.PathLike, fp: str, payload: dict[str, Any]) -> None:
    """The completion marker of a unit of work: written last, atomically."""
    atomic_write(path, dump_json({"fingerprint": fp, **payload}))


def read_marker(path: str | os.PathLike, fp: str) -> dict[str, Any] | None:
    """The marker's payload if the unit is complete with config fingerprint ``fp``; None otherwise."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        log.warning("ignoring unreadable completion marker %s (%s); the unit will be redone", path, e)
        return None
    if data.get("fingerprint") != fp:
        return None
    return data


def remove_stale_tmp(directory: str | os.PathLike, stem: str = "") -> int:
    """Delete temporary files a killed run left in ``directory`` whose names start with ``stem``.

    Called for one part (``stem="part-00003"``) just before that part is redone, or for a global stage's own
    folder, so concurrent shard tasks never touch each other's files. Returns how many were removed.
    """
    n = 0
    if not os.path.isdir(directory):
        return 0
    for f in os.listdir(directory):
        if f.startswith(stem) and ".tmp" in f:
            try:
                os.unlink(os.path.join(directory, f))
                n += 1
            except OSError:
                pass
    return n


# -------------------------------------------------------------------------------------------- progress
_QUEUE: Any = None  # set in worker processes by _init_worker


class Progress:
    """Counts documents and bar units inside a task; flushes to the bar (or the worker queue) ~4x a second."""

    def __init__(self, stage: str, sink: Callable[[str, int, int], None] | None, interval: float = 0.25):
        self.stage, self.sink, self.interval = stage, sink, interval
        self.docs = self.units = 0
        self._last = time.monotonic()

    def update(self, docs: int = 0, units: int = 0) -> None:
        self.docs += docs
        self.units += units
        now = time.monotonic()
        if now - self._last >= self.interval:
            self.flush()
            self._last = now

    def flush(self) -> None:
        if self.sink is not None and (self.docs or self.units):
            self.sink(self.stage, self.docs, self.units)
        self.docs = self.units = 0


def _queue_sink(stage: str, docs: int, units: int) -> None:
    if _QUEUE is not None:
        _QUEUE.put((stage, docs, units))


def _init_worker(q: Any, level: int) -> None:
    global _QUEUE
    _QUEUE = q
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def _call(fn: Callable, task: Any, stage: str) -> tuple[Any, float]:
    """Worker entry point: run ``fn(task, progress)``, return its result and its wall time."""
    t0 = time.perf_counter()
    progress = Progress(stage, _queue_sink)
    result = fn(task, progress)
    progress.flush()
    return result, time.perf_counter() - t0


# -------------------------------------------------------------------------------------------- executor
@dataclass
class StageTiming:
    """What the summary and the benchmark report for a stage (wall time is not part of any data file)."""

    stage: str
    tasks_run: int = 0
    tasks_skipped: int = 0
    docs: int = 0
    bytes: int = 0
    wall_s: float = 0.0
    task_s: float = 0.0  # sum of the tasks' own times = worker-seconds
    workers: int = 1

    def per_worker(self) -> tuple[float, float]:
        """(documents/s, MB/s) per worker: totals over worker-seconds."""
        if self.task_s <= 0:
            return 0.0, 0.0
        return self.docs / self.task_s, self.bytes / MiB / self.task_s


@dataclass
class LocalExecutor:
    """Runs tasks of a stage in ``workers`` processes (in this process when ``workers == 1``)."""

    workers: int = 1
    start_method: str = "spawn"
    progress: bool = True
    timings: list[StageTiming] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._pool: ProcessPoolExecutor | None = None
        self._queue: Any = None

    def __enter__(self) -> "LocalExecutor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def _ensure_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            ctx = mp.get_context(self.start_method)
            self._queue = ctx.Queue()
            self._pool = ProcessPoolExecutor(
                max_workers=self.workers, mp_context=ctx, initializer=_init_worker,
                initargs=(self._queue, logging.getLogger().getEffectiveLevel()),
            )
        return self._pool

    def _bar(self, stage: str, total: int | None, unit: str):
        from tqdm.auto import tqdm

        tty = sys.stderr.isatty()
        return tqdm(
            total=total, desc=f"{stage:>10}", unit=unit, unit_scale=unit == "B", unit_divisor=1024 if unit == "B" else 1000,
            disable=not self.progress, mininterval=0.5 if tty else 30.0, dynamic_ncols=True, leave=True, file=sys.stderr,
        )

    def map(
        self,
        stage: str,
        fn: Callable[[Any, Progress], Any],
        tasks: Sequence[Any],
        *,
        total: int | None = None,
        unit: str = "doc",
        skipped: int = 0,
        measure: Callable[[Any], tuple[int, int]] | None = None,
        record: bool = True,
    ) -> list[Any]:
        """Run ``fn(task, progress)`` for every task; results in task order.

        ``fn`` must be a module-level function (it is pickled into the workers). ``total``/``unit`` size the
        progress bar (``progress.update(docs, units)`` advances it); ``measure(result) -> (docs, bytes)``
        feeds the stage timing (``record=False``: not listed in the summary, e.g. a sub-step of a global
        stage). The first task that raises cancels the rest and the error propagates.
        """
        timing = StageTiming(stage, tasks_skipped=skipped, workers=self.workers)
        t0 = time.perf_counter()
        results: list[Any] = [None] * len(tasks)
        bar = self._bar(stage, total, unit)
        state = {"docs": 0}

        def on_progress(_stage: str, docs: int, units: int) -> None:
            state["docs"] += docs
            if units:
                bar.update(units)
            elapsed = max(time.perf_counter() - t0, 1e-9)
            bar.set_postfix_str(f"{state['docs']:,} docs, {state['docs'] / elapsed:,.0f} docs/s", refresh=False)

        try:
            if self.workers == 1 or len(tasks) <= 1:
                for i, task in enumerate(tasks):
                    t1 = time.perf_counter()
                    progress = Progress(stage, on_progress)
                    results[i] = fn(task, progress)
                    progress.flush()
                    timing.task_s += time.perf_counter() - t1
                    timing.tasks_run += 1
            else:
                pool = self._ensure_pool()
                futures = {pool.submit(_call, fn, task, stage): i for i, task in enumerate(tasks)}
                pending = set(futures)
                try:
                    while pending:
                        done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                        self._drain(on_progress)
                        for fut in done:
                            res, secs = fut.result()
                            results[futures[fut]] = res
                            timing.task_s += secs
                            timing.tasks_run += 1
                    self._drain(on_progress)
                except BaseException:
                    for fut in pending:
                        fut.cancel()
                    raise
        finally:
            bar.close()
        timing.wall_s = time.perf_counter() - t0
        if measure is not None:
            for r in results:
                d, b = measure(r)
                timing.docs += d
                timing.bytes += b
        if record:
            self.timings.append(timing)
        return results

    def _drain(self, on_progress: Callable[[str, int, int], None]) -> None:
        if self._queue is None:
            return
        while True:
            try:
                stage, docs, units = self._queue.get_nowait()
            except queue_mod.Empty:
                return
            on_progress(stage, docs, units)

    def record(self, timing: StageTiming) -> None:
        """Add the timing of work done outside :meth:`map` (a global stage run in this process)."""
        self.timings.append(timing)


def summary_table(timings: Iterable[StageTiming]) -> str:
    """A plain-text table of the stages: tasks, documents, time, throughput per worker."""
    rows = [("stage", "tasks run", "skipped", "documents", "MB", "wall s", "docs/s/worker", "MB/s/worker")]
    for t in timings:
        dps, mbps = t.per_worker()
        rows.append((
            t.stage, str(t.tasks_run), str(t.tasks_skipped), f"{t.docs:,}", f"{t.bytes / MiB:,.1f}",
            f"{t.wall_s:.2f}", f"{dps:,.0f}", f"{mbps:,.2f}",
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def require(condition: bool, message: str) -> None:
    """A missing prerequisite (a stage that has not run) is a :class:`DataError` with what to run."""
    if not condition:
        raise DataError(message)
