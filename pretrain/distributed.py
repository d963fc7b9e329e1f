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


def ensure_launcher_env() -> None:
    """A plain ``python -m pretrain.train`` is a world of one: give it the variables torchrun would set."""
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
            from pretrain.errors import ConfigError

            raise ConfigError("trainer.device=cuda but no CUDA device is visible; use trainer.device=auto or cpu")
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        return torch.device("cuda", torch.cuda.current_device())
    if setting != "cpu":
        from pretrain.errors import ConfigError

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
    deepspeed.init_distributed(dist_backend=backend, timeout=timedelta(seconds=timeout_s), verbose=False)
    return DistInfo(
        rank=torch.distributed.get_rank(),
        world_size=torch.distributed.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        device=device,
        backend=backend,
    )


def barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def all_reduce_mean(values: list[float], device: torch.device) -> list[float]:
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return (t / torch.distributed.get_world_size()).tolist()
