"""pretrain.jit_ops: one extensions folder per environment, and stale build locks cleared (live ones kept)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from pretrain import jit_ops

# creates the lock as torch's FileBaton does (O_CREAT | O_EXCL, kept open), says so, and holds it until killed
HOLDER = ("import os, sys, time; os.open(sys.argv[1], os.O_CREAT | os.O_EXCL); print('held', flush=True); "
          "time.sleep(300)")


def _lock(folder: Path, op: str = "cpu_adam") -> Path:
    (folder / op).mkdir(parents=True)
    return folder / op / "lock"


def test_a_lock_left_by_a_killed_build_is_removed_with_a_warning(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    lock = _lock(tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    holder.kill()  # kill -9 halfway through the "build": the file stays, nobody holds it
    holder.wait()
    assert lock.exists()
    with caplog.at_level(logging.WARNING, logger="pretrain.jit_ops"):
        assert jit_ops.prepare_extensions_dir() == tmp_path
    assert not lock.exists()
    assert f"removed the stale build lock {lock}" in caplog.text and "cpu_adam is rebuilt" in caplog.text


def test_a_lock_held_by_a_live_build_is_kept_and_the_wait_is_explained(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    lock = _lock(tmp_path, "deepspeed_shm_comm")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        old = time.time() - 7200
        os.utime(lock, (old, old))  # however old: a live holder is never overruled
        assert jit_ops.lock_holders(lock) == ([holder.pid], False)
        with caplog.at_level(logging.WARNING, logger="pretrain.jit_ops"):
            jit_ops.prepare_extensions_dir()
            assert jit_ops.clear_stale_lock(lock) is False
        assert lock.exists()
        assert f"deepspeed_shm_comm is being built by process {holder.pid}" in caplog.text
        assert "this run waits until it finishes" in caplog.text
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_this_process_holds_is_kept(tmp_path):
    lock = _lock(tmp_path)
    fd = os.open(lock, os.O_CREAT | os.O_EXCL)
    try:
        assert jit_ops.lock_holders(lock) == ([os.getpid()], False)
        assert jit_ops.clear_stale_lock(lock) is False and lock.exists()
    finally:
        os.close(fd)
    assert jit_ops.clear_stale_lock(lock) is True and not lock.exists()  # closed: stale now


def test_on_a_network_file_system_only_an_old_lock_is_removed(tmp_path, monkeypatch, caplog):
    """The builder may run on another host there, invisible in /proc: a young lock is kept, with the command
    that removes it; one older than network_stale_after_s goes."""
    monkeypatch.setattr(jit_ops, "filesystem_type", lambda path: "nfs4")
    lock = _lock(tmp_path)
    lock.touch()
    with caplog.at_level(logging.WARNING, logger="pretrain.jit_ops"):
        assert jit_ops.clear_stale_lock(lock, network_stale_after_s=600) is False
    assert lock.exists() and "network file system (nfs4)" in caplog.text and f"rm {lock}" in caplog.text
    old = time.time() - 601
    os.utime(lock, (old, old))
    assert jit_ops.clear_stale_lock(lock, network_stale_after_s=600) is True and not lock.exists()


def test_a_lock_replaced_while_checking_is_kept(tmp_path, monkeypatch):
    """Between the check and the removal another process cleared the stale lock and began its own build: the
    new lock is a different file, and stays."""
    lock = _lock(tmp_path)
    lock.touch()
    real_sleep = time.sleep

    def replace_during_pause(seconds):
        lock.unlink()
        real_sleep(0.01)  # a different ctime even where the inode number is reused
        lock.touch()

    monkeypatch.setattr(jit_ops.time, "sleep", replace_during_pause)
    assert jit_ops.clear_stale_lock(lock) is False and lock.exists()


def test_each_environment_gets_its_own_folder_unless_the_user_chose_one(tmp_path, monkeypatch):
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "venv"))
    (tmp_path / "venv").mkdir()
    tag = jit_ops.environment_tag()
    torch_version = jit_ops.importlib.metadata.version("torch")
    assert tag == f"py{sys.version_info.major}{sys.version_info.minor}_torch{torch_version}"
    folder = jit_ops.prepare_extensions_dir()
    assert folder == tmp_path / "venv" / "torch_extensions" / tag and folder.is_dir()
    assert os.environ["TORCH_EXTENSIONS_DIR"] == str(folder)  # what torch's cpp_extension reads

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "mine"))
    assert jit_ops.prepare_extensions_dir() == tmp_path / "mine"


def test_a_read_only_environment_gets_a_folder_of_its_own_in_the_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(jit_ops.os, "access", lambda path, mode: False)
    monkeypatch.setattr(Path, "home", lambda: tmp_path / "home")
    monkeypatch.setattr(sys, "prefix", "/usr")
    a = jit_ops.default_extensions_dir()
    monkeypatch.setattr(sys, "prefix", "/opt/conda/envs/other")
    b = jit_ops.default_extensions_dir()
    assert a.parent == b.parent == tmp_path / "home" / ".cache" / "torch_extensions"
    assert a != b and a.name.startswith(jit_ops.environment_tag())


def test_filesystem_type_reads_the_mount_above_the_path(tmp_path):
    assert jit_ops.filesystem_type(Path("/proc/self")) == "proc"
    assert jit_ops.filesystem_type(tmp_path) != ""


def test_a_lock_of_another_user_is_kept_when_their_processes_cannot_be_inspected(tmp_path, monkeypatch, caplog):
    """Not root: another user's open files are not ours to read, so their build cannot be ruled out."""
    lock = _lock(tmp_path)
    lock.touch()
    monkeypatch.setattr(jit_ops.os, "getuid", lambda: lock.stat().st_uid + 1)

    def unreadable(proc):
        raise PermissionError(proc)

    monkeypatch.setattr(jit_ops, "_open_files", unreadable)
    with caplog.at_level(logging.WARNING, logger="pretrain.jit_ops"):
        assert jit_ops.clear_stale_lock(lock) is False
    assert lock.exists() and "of another user" in caplog.text and f"rm {lock}" in caplog.text


def test_is_built_looks_for_the_library_of_the_op(tmp_path):
    assert not jit_ops.is_built("cpu_adam", tmp_path)
    (tmp_path / "cpu_adam").mkdir()
    (tmp_path / "cpu_adam" / "cpu_adam.so").write_bytes(b"")
    assert jit_ops.is_built("cpu_adam", tmp_path)


def test_the_command_line_refuses_an_unknown_op(capsys):
    with pytest.raises(SystemExit) as e:
        jit_ops.main(["cpu_adamw"])
    assert e.value.code == 2
    assert "unknown op(s) cpu_adamw; known: cpu_adam, deepspeed_shm_comm" in capsys.readouterr().err


def test_the_suite_starts_building_the_ops_its_tests_mark_and_only_those_missing(tmp_path, monkeypatch):
    import conftest

    started = []
    monkeypatch.setattr(conftest.subprocess, "Popen", lambda cmd, **kw: started.append((cmd, kw)))
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw0")  # the first xdist worker builds (every worker collects)

    def session(*markers):
        items = [SimpleNamespace(iter_markers=lambda name, m=m: [SimpleNamespace(args=(m,))] if m else [])
                 for m in markers]
        return SimpleNamespace(items=items, config=SimpleNamespace(option=SimpleNamespace(collectonly=False)))

    conftest.pytest_collection_finish(session(None, "cpu_adam", "cpu_adam"))
    [(cmd, kw)] = started
    assert cmd[1:] == ["-m", "pretrain.jit_ops", "cpu_adam"] and kw["start_new_session"]
    assert kw["env"]["DS_ACCELERATOR"] == "cpu"
    (tmp_path / "cpu_adam").mkdir()
    (tmp_path / "cpu_adam" / "cpu_adam.so").write_bytes(b"")
    conftest.pytest_collection_finish(session("cpu_adam"))  # built: nothing started
    conftest.pytest_collection_finish(session(None))  # no test needs it
    assert len(started) == 1
    (tmp_path / "cpu_adam" / "cpu_adam.so").unlink()
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw1")
    conftest.pytest_collection_finish(session("cpu_adam"))  # the second worker leaves it to the first
    assert len(started) == 1


def test_training_on_cpu_does_not_build_the_shared_memory_comm_op(tmp_path):
    """DeepSpeed would compile deepspeed_shm_comm (used only by its inference all-reduce) when its comm backend
    starts: a world of one started by pretrain.distributed builds nothing, and its collectives still work."""
    code = ("import torch; from pretrain.distributed import ensure_launcher_env, init_distributed, all_reduce_mean; "
            "ensure_launcher_env(); init_distributed(torch.device('cpu'), None, 60); "
            "print(all_reduce_mean([2.5], torch.device('cpu'))); torch.distributed.destroy_process_group()")
    env = dict(os.environ, TORCH_EXTENSIONS_DIR=str(tmp_path), DS_ACCELERATOR="cpu")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("[2.5]")
    assert not (tmp_path / "deepspeed_shm_comm").exists(), sorted(p.name for p in tmp_path.iterdir())
