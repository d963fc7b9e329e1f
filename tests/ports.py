"""Rendezvous ports for the launches of the test suite that no other process can be handed in the meantime.

A port picked by ``bind(("127.0.0.1", 0))`` and released comes from the kernel's ephemeral range, from which
every other ``bind(0)`` and outgoing connection on the machine also draws; in the seconds before torchrun's store
binds it, another process (the other pytest-xdist worker's launches, say) can take it, and the launch fails with
EADDRINUSE. The ports here lie below that range, where the kernel assigns nothing by itself, and each xdist worker
draws from its own slice, so two workers never pick the same one.
"""

from __future__ import annotations

import itertools
import os
import socket
from pathlib import Path

LOWEST = 20000


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def _slice() -> range:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    count = max(int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1), index + 1)
    top = max(_ephemeral_start(), LOWEST + 1000)
    width = (top - LOWEST) // count
    start = LOWEST + index * width
    return range(start, start + width)


# this process's next candidates: its slice, from an offset of its pid (a test's subprocesses pick apart too)
_SLICE = _slice()
_NEXT = itertools.cycle(list(_SLICE[os.getpid() % len(_SLICE):]) + list(_SLICE[:os.getpid() % len(_SLICE)]))


def free_port() -> int:
    """The next port of this worker's slice that nothing listens on now."""
    for _ in range(len(_SLICE)):
        port = next(_NEXT)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {_SLICE.start}-{_SLICE.stop - 1}")
