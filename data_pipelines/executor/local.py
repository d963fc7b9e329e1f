"""The local executor: the tasks of a stage in ``executor.workers`` processes on this machine.

:class:`LocalExecutor` runs tasks in a ``concurrent.futures`` process pool with the chosen start method (in
this process when ``workers == 1``), shows a tqdm bar per stage (documents/s, ETA) fed by the workers through
a queue, and collects per-task timings for the summary and the benchmark. Its workers exit when the main
process dies, even by ``kill -9`` (:mod:`data_pipelines.executor.parent`).

Worker start-up is paid once per worker process, and as little as possible: the pipeline starts the pool
before its first stage (:meth:`LocalExecutor.start`), so a spawned worker's imports and language-model load
(about 1.5 s of CPU each) overlap the driver's own work, and with ``start_method: auto`` (the default) on Linux
the workers are *forked* at that point and inherit what the driver has loaded while validating the config
(imports, the language model, the filter blocks): no set-up at all. Fork is chosen only while it is safe:
on Linux, from the main thread, with no other Python thread running and ``torch`` not imported (its OpenMP
pool does not survive a fork). Threads of native libraries are not counted (``/proc/self/task`` cannot tell
whose they are): numpy's OpenBLAS pool exists from its import, Arrow's jemalloc thread from the warm-up's
first table, and a driver that ran pipelines before (the benchmark) holds Arrow's and tokenizers' pools.
Each of those libraries re-initialises its pool in a forked child (``pthread_atfork``; tokenizers turns its
parallelism off there), which is what fork relies on here. Anything else gets ``spawn``: portable, and the
only choice on macOS, where forked children of a process that used system frameworks can crash;
``executor.start_method=spawn`` chooses it anywhere.
"""

from __future__ import annotations

import functools
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


def _init_worker(q: Any, level: int, parent: int | None, arm_signal: bool,
                 warm: Callable[[], None] | None = None) -> None:
    global _QUEUE
    exit_with_parent(parent, arm_signal)
    _QUEUE = q
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if warm is not None:
        _warm_up(warm)


def _warm_up(warm: Callable[[], None]) -> None:
    """Run the set-up ahead of the tasks, in a spawned worker or in the driver before a fork: only a head start,
    so a failure (a source only some nodes can open) is left to the first task that needs it."""
    try:
        warm()
    except Exception:  # noqa: BLE001 - the first task that needs the set-up fails with the error itself
        logging.getLogger(__name__).debug("warm-up failed; the tasks do the set-up", exc_info=True)


def _started() -> None:
    """A no-op task: submitting one per worker makes the pool start its processes now."""


def resolve_start_method(method: str) -> str:
    """``auto`` -> ``fork`` where forking this process now is safe (see the module docstring), else ``spawn``;
    any other method as it is."""
    if method != "auto":
        return method
    safe = (sys.platform.startswith("linux") and threading.current_thread() is threading.main_thread()
            and threading.active_count() == 1 and "torch" not in sys.modules)
    return "fork" if safe else "spawn"


def _call(fn: Callable, task: Any, stage: str) -> tuple[Any, float]:
    """Worker entry point: run ``fn(task, progress)``, return its result and its wall time."""
    t0 = time.perf_counter()
    progress = Progress(stage, _queue_sink)
    result = fn(task, progress)
    progress.flush()
    return result, time.perf_counter() - t0


@functools.lru_cache(maxsize=1)
def _bar_class() -> type:
    """tqdm without its monitor thread: the thread outlives every bar (even disabled ones), and a pool made while
    it runs is no longer safe to fork (it takes tqdm's locks); our bars refresh on their own updates anyway."""
    from tqdm.auto import tqdm

    class Bar(tqdm):  # type: ignore[misc, valid-type]
        monitor_interval = 0

    return Bar


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
    start_method: str = "auto"  # spawn | fork | forkserver | auto (fork where safe, else spawn)
    progress: bool = True
    timings: list[StageTiming] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._pool: ProcessPoolExecutor | None = None
        self._queue: Any = None
        self.method: str | None = None  # the start method the pool was made with

    def start(self, warm: Callable[[], None] | None = None) -> None:
        """Start the worker processes now, before the first stage needs them (nothing when ``workers == 1``).

        ``warm`` (a picklable module-level callable) does the set-up the tasks would do on first use: forked
        workers inherit it (it runs here, before the fork), spawned ones run it once each while this process
        goes on with its own work. Outputs never depend on it."""
        if self.workers <= 1 or self._pool is not None:
            return
        method = resolve_start_method(self.start_method)
        if method == "fork" and warm is not None:
            _warm_up(warm)
            warm = None
        pool = self._ensure_pool(method, warm)
        for _ in range(self.workers):  # fork: every worker starts at the first submit; spawn: one per submit
            pool.submit(_started)

    def __enter__(self) -> "LocalExecutor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def _ensure_pool(self, method: str | None = None, warm: Callable[[], None] | None = None) -> ProcessPoolExecutor:
        if self._pool is None:
            self.method = method or resolve_start_method(self.start_method)
            ctx = mp.get_context(self.method)
            self._queue = ctx.Queue()
            # spawn and fork workers are children of this process; forkserver ones of the forkserver
            parent = None if self.method == "forkserver" else os.getpid()
            on_main_thread = threading.current_thread() is threading.main_thread()
            self._pool = ProcessPoolExecutor(
                max_workers=self.workers, mp_context=ctx, initializer=_init_worker,
                initargs=(self._queue, logging.getLogger().getEffectiveLevel(), parent, on_main_thread, warm),
            )
            log.debug("executor: %d worker processes (%s)", self.workers, self.method)
        return self._pool

    def _bar(self, stage: str, total: int | None, unit: str):
        tty = sys.stderr.isatty()
        return _bar_class()(
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
