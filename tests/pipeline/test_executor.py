"""Parts, shard assignment, completion markers and the local multi-process executor."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from data_pipelines.executor import (
    LocalExecutor,
    Progress,
    fingerprint,
    parts_for_shard,
    plan_parts,
    read_marker,
    remove_stale_tmp,
    summary_table,
    write_marker,
)
from pretrain.core.atomic import atomic_write
from pretrain.core.errors import DataError


def _files(tmp_path, name: str, sizes: list[int]) -> list[str]:
    d = tmp_path / name
    d.mkdir()
    out = []
    for i, n in enumerate(sizes):
        p = d / f"f{i:02d}.txt"
        p.write_bytes(b"x" * n)
        out.append(str(p))
    return out


def test_parts_group_files_of_a_source_by_size_in_a_fixed_order(tmp_path):
    web = _files(tmp_path, "web", [60, 50, 10, 200, 5])
    code = _files(tmp_path, "code", [30])
    parts = plan_parts([("web", "web", list(reversed(web))), ("code", "code", code)], part_size_bytes=100)
    assert [(p.source, p.name, len(p.files), p.size) for p in parts] == [
        ("code", "part-00000", 1, 30),
        ("web", "part-00000", 2, 110), ("web", "part-00001", 2, 210), ("web", "part-00002", 1, 5),
    ]
    assert [p.global_index for p in parts] == [0, 1, 2, 3]
    assert parts == plan_parts([("code", "code", code), ("web", "web", web)], part_size_bytes=100)
    # a directory unit (a code repository) counts every file below it
    repo = tmp_path / "repo" / "src"
    repo.mkdir(parents=True)
    (repo / "a.py").write_bytes(b"y" * 7)
    assert plan_parts([("c", "code", [str(tmp_path / "repo")])], 1)[0].size == 7


def test_every_part_belongs_to_exactly_one_shard(tmp_path):
    parts = plan_parts([("web", "web", _files(tmp_path, "web", [1] * 11))], part_size_bytes=1)
    shards = [parts_for_shard(parts, s, 4) for s in range(4)]
    assert sorted(p.global_index for s in shards for p in s) == list(range(11))
    assert parts_for_shard(parts, None, 4) == parts


def test_markers_are_atomic_and_tied_to_the_config(tmp_path):
    path = tmp_path / "m" / "part-00000.done.json"
    fp = fingerprint({"a": 1})
    assert read_marker(path, fp) is None
    write_marker(path, fp, {"docs": 3})
    assert read_marker(path, fp)["docs"] == 3
    assert read_marker(path, fingerprint({"a": 2})) is None  # other config: not complete
    assert not [f for f in os.listdir(path.parent) if ".tmp" in f]
    path.write_text("{truncated")
    assert read_marker(path, fp) is None  # unreadable: redone, never trusted
    assert fingerprint({"b": [1, 2], "a": 1}) == fingerprint({"a": 1, "b": [1, 2]})


def test_stale_temporary_files_of_one_part_are_removed(tmp_path):
    for name in ("part-00001.parquet.tmp-123", "part-00001.bin.tmp", "part-00002.parquet.tmp-9", "part-00001.parquet"):
        (tmp_path / name).write_text("x")
    assert remove_stale_tmp(tmp_path, "part-00001") == 2
    assert sorted(os.listdir(tmp_path)) == ["part-00001.parquet", "part-00002.parquet.tmp-9"]
    atomic_write(tmp_path / "f.json", b"{}")
    assert (tmp_path / "f.json").read_bytes() == b"{}"


# Module-level so spawned workers can import them.
def square_task(task: int, progress: Progress) -> dict:
    progress.update(docs=task, units=1)
    return {"value": task * task, "pid": os.getpid(), "docs": task, "bytes": 10 * task}


def failing_task(task: int, progress: Progress) -> int:
    if task == 3:
        raise DataError(f"part {task} is corrupt")
    return task


@pytest.mark.parametrize("workers", [1, 2])
def test_local_executor_runs_tasks_in_workers_and_keeps_order(workers):
    with LocalExecutor(workers=workers, start_method="spawn", progress=True) as ex:
        results = ex.map("square", square_task, list(range(6)), total=6, unit="part",
                         measure=lambda r: (r["docs"], r["bytes"]))
    assert [r["value"] for r in results] == [i * i for i in range(6)]
    if workers == 2:
        assert os.getpid() not in {r["pid"] for r in results}
    (timing,) = ex.timings
    assert timing.tasks_run == 6 and timing.docs == 15 and timing.bytes == 150 and timing.task_s > 0
    table = summary_table(ex.timings)
    assert "square" in table and "docs/s/worker" in table


def test_a_failing_task_stops_the_stage_with_its_error():
    with LocalExecutor(workers=2, start_method="spawn", progress=False) as ex:
        with pytest.raises(DataError, match="part 3 is corrupt"):
            ex.map("fail", failing_task, list(range(8)))


_WARMED: list[int] = []  # pids of the processes that ran warm_up (module state, as a stage's caches are)


def warm_up() -> None:
    _WARMED.append(os.getpid())


def warmed_task(task: int, progress: Progress) -> tuple[int, list[int]]:
    return os.getpid(), list(_WARMED)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="auto forks on Linux only")
def test_forked_workers_inherit_the_warm_up_done_before_the_fork(monkeypatch):
    """start() with fork: warm_up runs once, here, and the workers inherit its state (no set-up of their own)."""
    monkeypatch.setattr(sys.modules[__name__], "_WARMED", [])
    with LocalExecutor(workers=2, start_method="fork", progress=True) as ex:
        ex.start(warm_up)
        assert ex.method == "fork" and _WARMED == [os.getpid()]
        results = ex.map("warm", warmed_task, list(range(4)))
    assert all(pid != os.getpid() and warmed == [os.getpid()] for pid, warmed in results)


def failing_warm_up() -> None:
    raise OSError("a source only some nodes can open")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork on Linux only")
def test_a_failed_warm_up_is_only_a_lost_head_start_under_fork_too():
    """The set-up ahead of the tasks may fail (a source only some nodes open): under fork as under spawn the pool
    starts and the tasks run; the first one that needs the set-up would meet the error itself."""
    with LocalExecutor(workers=2, start_method="fork", progress=False) as ex:
        ex.start(failing_warm_up)
        assert [r["value"] for r in ex.map("warm", square_task, [1, 2, 3])] == [1, 4, 9]


def test_spawned_workers_each_run_the_warm_up_before_their_tasks():
    with LocalExecutor(workers=2, start_method="spawn", progress=False) as ex:
        ex.start(warm_up)
        assert ex.method == "spawn" and _WARMED == []  # not here: in each worker
        results = ex.map("warm", warmed_task, list(range(4)))
    assert all(warmed == [pid] for pid, warmed in results)


def test_auto_forks_only_where_it_is_safe(monkeypatch):
    from data_pipelines.executor import local
    from data_pipelines.executor.local import resolve_start_method

    assert resolve_start_method("spawn") == "spawn" and resolve_start_method("forkserver") == "forkserver"
    stop = threading.Event()
    t = threading.Thread(target=stop.wait, daemon=True)  # another thread running (it may hold a lock)
    t.start()
    try:
        assert resolve_start_method("auto") == "spawn"
    finally:
        stop.set()
        t.join()
    # A driver that has only validated and planned runs no other thread (earlier tests here may have left
    # tqdm's monitor, which ``datasets`` starts, so the count is that of such a driver)
    monkeypatch.setattr(local.threading, "active_count", lambda: 1)
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    expected = "fork" if sys.platform.startswith("linux") else "spawn"
    assert resolve_start_method("auto") == expected
    monkeypatch.setitem(sys.modules, "torch", sys.modules["os"])  # torch imported: its OpenMP pool
    assert resolve_start_method("auto") == "spawn"
    monkeypatch.delitem(sys.modules, "torch")
    out: list[str] = []
    t = threading.Thread(target=lambda: out.append(resolve_start_method("auto")))  # not the main thread
    t.start()
    t.join()
    assert out == ["spawn"]


def test_progress_bars_start_no_monitor_thread():
    """tqdm's monitor thread outlives its bars (disabled ones too) and would make every later pool spawn."""
    before = threading.active_count()
    for progress in (False, True):
        with LocalExecutor(workers=1, progress=progress) as ex:
            ex.map("one", square_task, [1, 2], total=2, unit="part")
    assert threading.active_count() == before


def test_progress_flushes_to_its_sink():
    seen = []
    p = Progress("read", lambda stage, docs, units: seen.append((stage, docs, units)), interval=3600)
    p.update(docs=2)
    p.update(docs=1, units=5)
    assert seen == []  # buffered
    p.flush()
    assert seen == [("read", 3, 5)]
    json.dumps(seen)


# A worker-like process (the grandchild) started by a parent (the child) that is then killed with SIGKILL.
_GRANDCHILD = """
import sys, time
from data_pipelines.executor.parent import exit_with_parent
import os
exit_with_parent(os.getppid(), arm_signal=sys.argv[1] == "1", poll_s=float(sys.argv[2]))
print(os.getpid(), flush=True)
time.sleep(120)
"""
_CHILD = """
import subprocess, sys
subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2], sys.argv[3]]).wait()
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's prctl")
@pytest.mark.parametrize("arm_signal, poll_s", [(True, 3600.0), (False, 0.1)], ids=["pdeathsig", "watchdog"])
def test_a_worker_exits_when_its_parent_is_killed(arm_signal, poll_s):
    """Each mechanism alone: the kernel signal (the watchdog would wait an hour), and the getppid() watchdog."""
    child = subprocess.Popen([sys.executable, "-c", _CHILD, _GRANDCHILD, "1" if arm_signal else "0", str(poll_s)],
                             stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    grandchild = None
    try:
        grandchild = int(child.stdout.readline())
        child.kill()
        child.wait()
        deadline = time.monotonic() + 5
        while _running(grandchild):
            assert time.monotonic() < deadline, "the worker outlived its parent by 5 s"
            time.sleep(0.05)
    finally:
        if grandchild is not None and _running(grandchild):
            os.kill(grandchild, signal.SIGKILL)
        if child.poll() is None:
            child.kill()
            child.wait()


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
