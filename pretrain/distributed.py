"""Process-group set-up: one entry point for `python -m`, torchrun (and later SLURM), CUDA+nccl or CPU+gloo."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import timedelta

import torch


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def first_slurm_host(nodelist: str) -> str:
    """The first host of a SLURM node list ("gpu[03-05,9],cpu1" -> "gpu03"): ``scontrol show hostnames`` when
    it is there, else a parse of the compact form."""
    import re
    import shutil
    import subprocess

    if shutil.which("scontrol"):
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, timeout=30)
        if out.returncode == 0 and out.stdout.split():
            return out.stdout.split()[0]
    m = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist)
    if not m:
        return nodelist
    prefix, ranges = m.group(1), m.group(2)
    return prefix + ranges.split(",")[0].split("-")[0] if ranges else prefix


def slurm_task_env(env: dict[str, str]) -> dict[str, str]:
    """torchrun's variables for the one-task-per-GPU pattern (``srun --ntasks-per-node=<gpus> python -m
    pretrain.train``, or the Hydra SLURM launcher): ranks from ``SLURM_PROCID``/``SLURM_LOCALID``, the world
    from ``SLURM_NTASKS``, the rendezvous on the first host of the allocation at a port every task derives
    from the job id (``MASTER_PORT`` wins when set)."""
    job = int(env.get("SLURM_JOB_ID", "0") or 0)
    return {
        "RANK": env["SLURM_PROCID"],
        "LOCAL_RANK": env.get("SLURM_LOCALID", "0"),
        "WORLD_SIZE": env.get("SLURM_NTASKS", "1"),
        "LOCAL_WORLD_SIZE": env.get("SLURM_NTASKS_PER_NODE", env.get("SLURM_TASKS_PER_NODE", "1")).split("(")[0],
        "MASTER_ADDR": env.get("MASTER_ADDR") or first_slurm_host(env.get("SLURM_JOB_NODELIST", "127.0.0.1")),
        "MASTER_PORT": env.get("MASTER_PORT") or str(20000 + job % 20000),
    }


def ensure_launcher_env() -> None:
    """A plain ``python -m pretrain.train`` is a world of one: give it the variables torchrun would set. Under
    ``srun`` (a SLURM task, no torchrun) the ranks come from SLURM instead (:func:`slurm_task_env`)."""
    if "RANK" not in os.environ and "SLURM_PROCID" in os.environ and "SLURM_JOB_ID" in os.environ:
        os.environ.update(slurm_task_env(dict(os.environ)))
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))


def env_rank() -> int:
    return int(os.environ.get("RANK", "0"))


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def pick_device(setting: str) -> torch.device:
    """``auto`` takes this rank's GPU when there is one; ``cpu``/``cuda`` force it."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if setting == "auto":
        setting = "cuda" if torch.cuda.is_available() else "cpu"
    if setting == "cuda":
        if not torch.cuda.is_available():
            from pretrain.core.errors import ConfigError

            raise ConfigError("trainer.device=cuda but no CUDA device is visible; use trainer.device=auto or cpu")
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        return torch.device("cuda", torch.cuda.current_device())
    if setting != "cpu":
        from pretrain.core.errors import ConfigError

        raise ConfigError(f"trainer.device={setting!r}; expected auto, cuda or cpu")
    # DeepSpeed picks its accelerator when first imported: make it the CPU one before that happens.
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    return torch.device("cpu")


@dataclass
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device, backend: str | None, timeout_s: int) -> DistInfo:
    import deepspeed

    backend = backend or ("nccl" if device.type == "cuda" else "gloo")
    # The timeout given here covers only the world group; the data-parallel groups DeepSpeed creates later
    # with new_group() take torch's module default (30 min for gloo, 10 for nccl). Make that default ours, so a
    # hung rank ends every collective after parallel.timeout_s, not only the world group's.
    from torch.distributed import distributed_c10d

    distributed_c10d.default_pg_timeout = distributed_c10d.default_pg_nccl_timeout = timedelta(seconds=timeout_s)
    restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)
    if restart > 0 and not torch.distributed.is_initialized():
        # After a torchrun restart (--max-restarts) the rendezvous store can still hold the first attempt's
        # keys, and gloo would connect to the dead workers' addresses: keep each attempt's keys apart.
        rank, world = env_rank(), env_world_size()
        agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
        store = torch.distributed.TCPStore(
            os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, is_master=not agent_store and rank == 0,
            timeout=timedelta(seconds=timeout_s), multi_tenant=True,
        )
        torch.distributed.init_process_group(
            backend, store=torch.distributed.PrefixStore(f"/pretrain/attempt_{restart}", store), rank=rank,
            world_size=world, timeout=timedelta(seconds=timeout_s),
        )
    if env_world_size() == 1 and not torch.distributed.is_initialized():
        # A world of one needs no rendezvous: an in-memory store instead of a TCP store on MASTER_PORT, so a
        # single-process run never binds a port (nor loses a race for one to another program on the machine).
        torch.distributed.init_process_group(backend, store=torch.distributed.HashStore(), rank=0, world_size=1,
                                             timeout=timedelta(seconds=timeout_s))
    if device.type == "cpu":
        skip_shm_inference_op()
    deepspeed.init_distributed(dist_backend=backend, timeout=timedelta(seconds=timeout_s), verbose=False)
    return DistInfo(
        rank=torch.distributed.get_rank(),
        world_size=torch.distributed.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        device=device,
        backend=backend,
    )


def skip_shm_inference_op() -> None:
    """DeepSpeed's CPU comm backend JIT-compiles its shared-memory op (``deepspeed_shm_comm``: half a minute on
    two cores, on the first run in every environment) as it starts, but only ``inference_all_reduce`` ever uses
    it, and that falls back to torch.distributed without it. Training never calls it, so it is not built."""
    import importlib

    # the module itself: ``import deepspeed.comm.torch as m`` gives the torch package, re-exported by that name
    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None


def barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def all_reduce_mean(values: list[float], device: torch.device, group=None) -> list[float]:
    """Mean over ``group`` (default: every rank) of one float per rank, for each of ``values``."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t, group=group)
    return (t / torch.distributed.get_world_size(group)).tolist()
