"""The Ray executor (``executor=ray``): the tasks of a stage as Ray tasks on a cluster.

    python -m data_pipelines.run output_dir=/shared/out executor=ray executor.address=head:6379

:class:`RayExecutor` has the local executor's interface (:meth:`map`, :meth:`record`, ``timings``), so the
runner (:class:`data_pipelines.run.Pipeline`) is the same for both: it decides on the driver what is left to
do (completion markers), submits one Ray task per unit, and runs the global stages on the driver (their
sub-steps, such as dedup buckets, become tasks too). Every task writes its own output and marker to the
shared ``output_dir``, exactly as a local worker does, so the bytes are the local executor's.

* A task whose worker process dies (killed, out of memory, its node lost) is retried by Ray up to
  ``executor.max_retries`` times, and so is one that raised an ``OSError`` (a flaky network file system);
  a retry starts the part from scratch (its stale temporary files are removed first).
* A driver that dies takes its running tasks with it (Ray ends a job's tasks with its driver); the next
  run skips every unit whose marker is there and redoes only the rest.
* Progress: each task sends its counts to a small actor about four times a second; the driver shows one
  bar per stage (documents/s, ETA) like the local executor, and the summary table at the end.

The cluster needs the project importable on every node (the same virtual environment, e.g. on a shared
file system) and ``output_dir`` plus the inputs on a file system every node sees. docs/ray.md has the
launch on a multi-node cluster and on SLURM.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from data_pipelines.executor.local import LocalExecutor, Progress, StageTiming

log = logging.getLogger(__name__)


def _ray() -> Any:
    import ray

    return ray


class _ProgressBox:
    """Counts the tasks send (fire and forget), tagged with the task and its attempt; the driver takes them ~5x
    a second (a Ray actor)."""

    def __init__(self) -> None:
        self.items: list[tuple[int, str, int, int]] = []

    def add(self, task: int, attempt: str, docs: int, units: int) -> None:
        if docs or units:
            self.items.append((task, attempt, docs, units))

    def take(self) -> list[tuple[int, str, int, int]]:
        items, self.items = self.items, []
        return items


class _AttemptCounts:
    """Progress per task from its latest attempt only. A task whose worker was killed is retried from its start,
    so the dead attempt's counts are taken back when a later attempt first reports (the bar would otherwise
    count those documents twice). Attempts are ordered by their start (``(time_ns, token)``, see
    :func:`_run_task`): reports of different processes reach the driver in no set order, so a late report of a
    killed attempt may come after its retry's first ones, and it is then ignored."""

    def __init__(self) -> None:
        self._latest: dict[int, list] = {}  # task -> [attempt, docs, units]

    def add(self, task: int, attempt: tuple[int, str], docs: int, units: int) -> tuple[int, int]:
        """The change to the stage's totals (documents, units) this report makes."""
        entry = self._latest.get(task)
        back_docs = back_units = 0
        if entry is None or entry[0] != attempt:
            if entry is not None:
                if tuple(attempt) < tuple(entry[0]):  # an earlier attempt than the one counted: superseded
                    return 0, 0
                back_docs, back_units = entry[1], entry[2]
            entry = self._latest[task] = [attempt, 0, 0]
        entry[1] += docs
        entry[2] += units
        return docs - back_docs, units - back_units


_WORKER_READY = False


def _run_task(fn: Callable[[Any, Progress], Any], task: Any, stage: str, box: Any, level: int,
              index: int) -> tuple[Any, float]:
    """A Ray task (task ``index`` of its stage): ``fn(task, progress)`` with progress sent to ``box`` under this
    attempt's id; returns the result and its wall time."""
    global _WORKER_READY
    if not _WORKER_READY:  # once per worker process, as the local executor's initializer does
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
        _WORKER_READY = True
    t0 = time.perf_counter()
    attempt = (time.time_ns(), uuid.uuid4().hex)  # a retry starts after the attempt it replaces
    progress = Progress(stage, lambda s, d, u: box.add.remote(index, attempt, d, u))
    result = fn(task, progress)
    progress.sink = lambda s, d, u: _ray_get(box.add.remote(index, attempt, d, u))
    progress.flush()
    _ray_get(box.add.remote(index, attempt, 0, 0))  # after the calls before it (one caller's calls run in order)
    return result, time.perf_counter() - t0


def _ray_get(ref: Any) -> Any:
    return _ray().get(ref)


@dataclass
class RayExecutor(LocalExecutor):
    """Runs the tasks of a stage as Ray tasks; see the module docstring. ``workers``: the CPUs of a local Ray
    instance started for this run (``address`` ``auto`` without a running cluster, or ``local``)."""

    address: str = "auto"
    max_retries: int = 3
    cpus_per_task: float = 1.0
    timings: list[StageTiming] = field(default_factory=list)

    @classmethod
    def from_config(cls, ex: Any) -> "RayExecutor":
        return cls(workers=int(ex.workers), progress=bool(ex.progress), address=str(ex.address),
                   max_retries=int(ex.max_retries), cpus_per_task=float(ex.cpus_per_task))

    def __post_init__(self) -> None:
        super().__post_init__()
        self._owns_ray = False
        self._box: Any = None
        self._remote: Any = None

    # ------------------------------------------------------------------------------------------ cluster
    def _connect(self) -> None:
        ray = _ray()
        if self._remote is not None:
            return
        if not ray.is_initialized():
            start = {"num_cpus": self.workers, "include_dashboard": False, "log_to_driver": True}
            if self.address == "local":
                ray.init(address="local", **start)
            elif self.address == "auto":
                try:
                    ray.init(address="auto", log_to_driver=True)
                except ConnectionError:
                    log.info("ray: no running cluster found; starting a local one with %d CPUs", self.workers)
                    ray.init(**start)
            else:
                ray.init(address=self.address, log_to_driver=True)
            self._owns_ray = True
        cpus = ray.cluster_resources().get("CPU", 0)
        try:
            where = ray.get_runtime_context().gcs_address
            nodes = len([n for n in ray.nodes() if n.get("Alive")])
        except Exception:  # noqa: BLE001 - Ray Client (ray://) has no GCS address here; only a log line
            where, nodes = self.address, 0
        log.info("ray: %s, %d node(s), %g CPUs; tasks ask for %g CPU each, retried up to %d times",
                 where, nodes, cpus, self.cpus_per_task, self.max_retries)
        self._box = ray.remote(num_cpus=0)(_ProgressBox).remote()
        self._remote = ray.remote(_run_task).options(
            num_cpus=self.cpus_per_task, max_retries=self.max_retries, retry_exceptions=[OSError],
        )

    def start(self, warm: Callable[[], None] | None = None) -> None:
        """Nothing to start ahead: Ray starts (and reuses) its own worker processes."""

    def close(self) -> None:
        if self._owns_ray:
            _ray().shutdown()
            self._owns_ray = False
        self._remote = self._box = None

    def _slots(self) -> int:
        cpus = _ray().cluster_resources().get("CPU", 1)
        return max(1, int(cpus // self.cpus_per_task))

    # --------------------------------------------------------------------------------------------- map
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
        """Run ``fn(task, progress)`` for every task as Ray tasks; results in task order (see
        :meth:`LocalExecutor.map`). The first task that fails for good cancels the rest; its error is raised
        as it was raised in the task (a :class:`~pretrain.core.errors.DataError` stays one)."""
        ray = _ray()
        results: list[Any] = [None] * len(tasks)
        if not tasks:
            if record:
                self.timings.append(StageTiming(stage, tasks_skipped=skipped, workers=self.workers))
            return results
        self._connect()
        timing = StageTiming(stage, tasks_skipped=skipped, workers=self._slots())
        t0 = time.perf_counter()
        bar = self._bar(stage, total, unit)
        state = {"docs": 0}
        attempts = _AttemptCounts()

        def on_progress(task: int, attempt: str, docs: int, units: int) -> None:
            docs, units = attempts.add(task, attempt, docs, units)
            state["docs"] += docs
            if units:
                bar.update(units)
            elapsed = max(time.perf_counter() - t0, 1e-9)
            bar.set_postfix_str(f"{state['docs']:,} docs, {state['docs'] / elapsed:,.0f} docs/s", refresh=False)

        level = logging.getLogger().getEffectiveLevel()
        fn_ref = ray.put(fn)
        refs = {self._remote.remote(fn_ref, task, stage, self._box, level, i): i for i, task in enumerate(tasks)}
        pending = list(refs)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=len(pending), timeout=0.2, fetch_local=True)
                self._drain(on_progress)
                for ref in done:
                    res, secs = self._get(ref, stage, tasks[refs[ref]])
                    results[refs[ref]] = res
                    timing.task_s += secs
                    timing.tasks_run += 1
            self._drain(on_progress)  # every task's last counts reached the box before it returned
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
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

    def _get(self, ref: Any, stage: str, task: Any) -> Any:
        ray = _ray()
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as e:  # the task's own exception, raised as it was
            cause = e.cause if isinstance(getattr(e, "cause", None), BaseException) else None
            if cause is not None:
                raise cause from None
            raise
        except ray.exceptions.RayError as e:  # the worker or its node died on every try, or the object was lost
            what = getattr(getattr(task, "part", None), "label", None) or stage
            raise RuntimeError(f"stage {stage}: the task of {what} failed {self.max_retries + 1} time(s) "
                               f"(executor.max_retries={self.max_retries}): {type(e).__name__}: {e}") from None

    def _drain(self, on_progress: Callable[[int, str, int, int], None]) -> None:
        if self._box is None:
            return
        for task, attempt, docs, units in _ray().get(self._box.take.remote()):
            on_progress(task, attempt, docs, units)
