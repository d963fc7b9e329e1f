"""JIT-built DeepSpeed ops (CPU Adam for optimizer offload; the shared-memory comm op, which training no longer
builds: see ``pretrain.distributed``): one build folder per environment, and no silent wait on a build lock that
nobody holds.

``torch.utils.cpp_extension`` builds each op under ``TORCH_EXTENSIONS_DIR`` (by default
``~/.cache/torch_extensions/py<ver>_<cpu|cu>/``, one folder shared by every environment of the user). Two things
go wrong there:

- A build serialises on ``<folder>/<op>/lock``, a file that the builder creates with ``O_EXCL`` and keeps open
  for the whole build (``torch.utils.file_baton.FileBaton``); every other process polls, silently and forever,
  until the file is gone. A builder killed halfway leaves the file behind, and every later run hangs.
- Environments with different torch builds load each other's ``.so`` files from the shared folder (the build
  is keyed on the op's sources, not on torch), which fails with an ImportError.

:func:`prepare_extensions_dir` gives each environment its own folder (unless the user chose one) and clears a
lock that is provably stale. The criterion: a live builder holds its lock open, so a lock that no process on
this machine has open, still the same file a moment later, belongs to a killed build. Two cases cannot be seen
from here, and there the lock is kept and the message says how to remove it: a lock owned by another user while
we are not root (their processes' open files are not ours to read), and a folder on a network file system
(the builder may be on another host) unless the lock is older than ``network_stale_after_s``.

``python -m pretrain.jit_ops [op ...]`` builds the ops ahead of a run (e.g. once per environment before a job
whose ranks would all wait on the first build); the test suite starts it in the background.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)

ENV = "TORCH_EXTENSIONS_DIR"
# the ops our runs JIT-build on CPU -> their DeepSpeed op builder (deepspeed.accelerator's create_op_builder)
BUILDERS = {"cpu_adam": "CPUAdamBuilder", "deepspeed_shm_comm": "ShareMemCommBuilder"}
NETWORK_FS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "gpfs", "beegfs", "ceph", "glusterfs", "9p",
              "fuse.sshfs", "fuse.glusterfs", "fuse.ceph", "afs", "panfs", "wekafs")


def environment_tag() -> str:
    """The folder name of this environment's builds: the Python and torch versions they are built against (read
    from the package metadata, so that importing this module does not import torch)."""
    try:
        torch_version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        torch_version = "none"
    return f"py{sys.version_info.major}{sys.version_info.minor}_torch{torch_version}"


def default_extensions_dir() -> Path:
    """``<sys.prefix>/torch_extensions/<tag>`` (inside the virtual environment) when that is writable, otherwise
    a folder under ``~/.cache/torch_extensions`` keyed on the environment's path, so still one per environment."""
    prefix = Path(sys.prefix)
    if os.access(prefix, os.W_OK):
        return prefix / "torch_extensions" / environment_tag()
    key = hashlib.sha256(str(prefix.resolve()).encode()).hexdigest()[:10]
    return Path.home() / ".cache" / "torch_extensions" / f"{environment_tag()}_{key}"


def prepare_extensions_dir(network_stale_after_s: float = 3600.0) -> Path:
    """Point ``TORCH_EXTENSIONS_DIR`` at this environment's folder (kept if the user set it), create it, and clear
    the stale build locks in it (see the module docstring). Call it before the first DeepSpeed op is loaded, in
    every process; concurrent calls are safe. Returns the folder."""
    folder = Path(os.environ.get(ENV) or default_extensions_dir())
    os.environ[ENV] = str(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for lock in sorted(folder.glob("*/lock")):
        clear_stale_lock(lock, network_stale_after_s=network_stale_after_s)
    return folder


def is_built(op: str, folder: Path | None = None) -> bool:
    """Whether ``op``'s library is in the folder (torch's load still checks that it is up to date)."""
    folder = Path(folder or os.environ.get(ENV) or default_extensions_dir())
    return (folder / op / f"{op}.so").is_file()


def build(ops: list[str]) -> Path:
    """JIT-build ``ops`` (names of :data:`BUILDERS`) into this environment's folder now; returns the folder."""
    unknown = sorted(set(ops) - set(BUILDERS))
    if unknown:
        raise ValueError(f"unknown op(s) {', '.join(unknown)}; known: {', '.join(sorted(BUILDERS))}")
    folder = prepare_extensions_dir()
    from deepspeed.accelerator import get_accelerator

    for op in ops:
        get_accelerator().create_op_builder(BUILDERS[op]).load()
        log.info("%s is built in %s", op, folder)
    return folder


def clear_stale_lock(lock: Path, network_stale_after_s: float = 3600.0, settle_s: float = 0.2) -> bool:
    """Remove ``lock`` if no live build holds it; True if removed. Logs what it found either way."""
    op = lock.parent.name
    st = _stat(lock)
    if st is None:
        return False
    holders, unknown = lock_holders(lock)
    if holders:
        log.warning("%s is being built by process %s (%s): this run waits until it finishes (lock %s)", op,
                    holders[0], _cmdline(holders[0]), lock)
        return False
    how = f"if no build of {op} is running anywhere, remove it: rm {lock}"
    if unknown:
        log.warning("found the build lock %s of another user, whose processes cannot be inspected: this run waits "
                    "until it is gone; %s", lock, how)
        return False
    age = time.time() - st.st_mtime
    fs = filesystem_type(lock)
    if fs in NETWORK_FS and age < network_stale_after_s:
        log.warning("found the build lock %s (%.0f s old) on a network file system (%s), where a build on another "
                    "host cannot be seen: this run waits until it is gone; %s", lock, age, fs, how)
        return False
    time.sleep(settle_s)  # a builder that is just releasing closes the file before removing it
    again = _stat(lock)
    if again is None or (again.st_ino, again.st_ctime_ns) != (st.st_ino, st.st_ctime_ns) or lock_holders(lock)[0]:
        return False
    try:
        lock.unlink()
    except FileNotFoundError:  # another process of this run cleared it first
        return False
    log.warning("removed the stale build lock %s (%.0f s old, held by no process: its build was killed); %s "
                "is rebuilt", lock, age, op)
    return True


def lock_holders(path: Path) -> tuple[list[int], bool]:
    """The pids of the processes that have ``path`` open, and whether some process that could hold it (ours, or
    anyone's when the lock is another user's and we are not root) could not be inspected."""
    st = _stat(path)
    if st is None:
        return [], False
    me, root = os.getuid(), os.getuid() == 0
    foreign = st.st_uid != me and not root
    holders, unknown = [], False
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fds = _open_files(proc)
        except FileNotFoundError:  # the process ended
            continue
        except PermissionError:
            unknown = unknown or foreign or _owner(proc) == me
            continue
        for fd in fds:
            try:
                target = os.stat(fd)
            except OSError:
                continue
            if (target.st_dev, target.st_ino) == (st.st_dev, st.st_ino):
                holders.append(int(proc.name))
                break
    return holders, unknown


def filesystem_type(path: Path) -> str:
    """The type of the file system holding ``path`` (``/proc/mounts``, the longest mount point above it)."""
    real, best, kind = os.path.realpath(path), "", ""
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return ""
    for line in lines:
        parts = line.split()
        if len(parts) < 3:
            continue
        mount = parts[1].replace("\\040", " ")
        if (real == mount or real.startswith(mount.rstrip("/") + "/")) and len(mount) >= len(best):
            best, kind = mount, parts[2]
    return kind


def _open_files(proc: Path) -> list[Path]:
    return list((proc / "fd").iterdir())


def _stat(path: Path) -> os.stat_result | None:
    try:
        return path.stat()
    except FileNotFoundError:
        return None


def _owner(proc: Path) -> int | None:
    try:
        return proc.stat().st_uid
    except OSError:
        return None


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()[:200]
    except OSError:
        return "?"


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    ops = (sys.argv[1:] if argv is None else argv) or sorted(BUILDERS)
    try:
        print(build(ops))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
