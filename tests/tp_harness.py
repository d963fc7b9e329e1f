"""Run a function on N spawned CPU processes joined by gloo, and hand each rank's result back to the test.

One spawn per test module (a module-scoped fixture runs every check of the module in the same processes):
starting Python + torch + DeepSpeed costs seconds per process, the checks themselves milliseconds.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
import torch.multiprocessing as mp

from ports import free_port


def _entry(rank: int, world: int, port: int, out_dir: str, fn: Callable, args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world), DS_ACCELERATOR="cpu")
    torch.set_num_threads(1)
    import torch.distributed as dist

    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        result = fn(rank, world, *args)
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def run_ranks(fn: Callable[..., Any], world: int = 2, *args: Any) -> list[Any]:
    """``fn(rank, world, *args)`` on ``world`` processes (``fn`` at module level: it is pickled by name);
    returns the ranks' return values. An exception on any rank fails the call with that rank's traceback."""
    with tempfile.TemporaryDirectory() as d:
        mp.spawn(_entry, args=(world, free_port(), d, fn, args), nprocs=world, join=True)
        return [torch.load(Path(d) / f"rank{r}.pt", weights_only=False) for r in range(world)]
