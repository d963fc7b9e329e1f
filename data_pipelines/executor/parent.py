"""Worker processes die with the process that started them.

Without this, ``kill -9`` of a pipeline run leaves its pool workers behind: they wait on the task queue
forever (each holds both ends of its pipes, so no EOF ever comes) and keep their memory. Two mechanisms:

* Linux: ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` via ctypes, so the kernel kills the worker the moment its
  parent exits. The kernel ties this to the parent *thread* that forked the worker, so it is armed only
  for pools created on the main thread (a pool made on a short-lived thread would otherwise lose its
  workers when that thread ends).
* Everywhere: a daemon watchdog thread that polls ``os.getppid()`` and exits once the worker has been
  re-parented (the parent is gone). It also covers the race where the parent dies before the signal is
  armed.

The expected parent is the main process for ``spawn``/``fork``, the forkserver for ``forkserver`` (it exits
when the main process dies, and its workers follow).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def set_parent_death_signal(sig: int = signal.SIGKILL) -> bool:
    """Ask the Linux kernel to send ``sig`` to this process when its parent exits; False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch(parent: int, poll_s: float) -> None:
    while True:
        time.sleep(poll_s)
        if os.getppid() != parent:
            os._exit(1)  # the parent is gone: nothing will read our results


def exit_with_parent(parent: int | None, arm_signal: bool = True, poll_s: float = 1.0) -> None:
    """Make this (worker) process exit when ``parent`` dies (``None``: whatever the parent is now)."""
    if arm_signal:
        set_parent_death_signal()
    expected = os.getppid() if parent is None else parent
    if os.getppid() != expected:  # the parent died before the signal was armed
        os._exit(1)
    threading.Thread(target=_watch, args=(expected, poll_s), name="parent-watchdog", daemon=True).start()
