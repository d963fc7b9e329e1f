"""The local executor: the tasks of a stage in ``executor.workers`` processes on this machine.

:class:`LocalExecutor` runs tasks in a ``concurrent.futures`` process pool with the chosen start method (in
this process when ``workers == 1``), shows a tqdm bar per stage (documents/s, ETA) fed by the workers through
a queue, and collects per-task timings for the summary and the benchmark. Its workers exit when the main
process dies, even by ``kill -9`` (:mod:`data_pipelines.executor.parent`).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import queue as queue_mod
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

from data_pipelines.executor.parent import exit_with_parent
from data_pipelines.executor.parts import MiB

log = logging.getLogger(__name__)


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


def _init_worker(q: Any, level: int, parent: int | None, arm_signal: bool) -> None:
    global _QUEUE
    exit_with_parent(parent, arm_signal)
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
            # spawn and fork workers are children of this process; forkserver ones of the forkserver
            parent = None if self.start_method == "forkserver" else os.getpid()
            on_main_thread = threading.current_thread() is threading.main_thread()
            self._pool = ProcessPoolExecutor(
                max_workers=self.workers, mp_context=ctx, initializer=_init_worker,
                initargs=(self._queue, logging.getLogger().getEffectiveLevel(), parent, on_main_thread),
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
