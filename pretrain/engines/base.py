"""The engine interface: what the Trainer needs of a training backend, and the batch arithmetic all share.

An engine wraps one backend (DeepSpeed today; an accelerate/FSDP2 engine is the next implementation) and
offers forward / backward / step, a whole training step over the step's micro-batches, evaluation, the
gradient norm, the LR, the loss scale and checkpoint save/load. The Trainer and its components only talk
to this interface, so a second engine is one more file in ``pretrain/engines/`` plus one registry line.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch
from omegaconf import DictConfig

from pretrain.core.errors import ConfigError

Batch = dict[str, torch.Tensor]


@dataclass
class BatchPlan:
    micro_batch_size: int
    global_batch_size: int
    data_parallel_size: int
    grad_accum_steps: int
    # The ZeRO stage DeepSpeed runs with: parallel.zero_stage, except that one data-parallel rank without
    # offload has nothing to partition and runs stage 0 (same numerics, no flattening copies: ZeRO-1 at one
    # rank costs ~25% of a step of a 30M model on CPU).
    zero_stage: int = 0
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1


def batch_plan(cfg: DictConfig, world_size: int) -> BatchPlan:
    """Check the parallel layout and batch arithmetic before any process group exists."""
    from pretrain.parallel.validate import validate_parallel

    p = cfg.parallel
    layout = validate_parallel(cfg, world_size)  # every layout problem at once, each with what to change
    tp, pp, dp, micro, gbs = layout.tp, layout.pp, layout.dp, layout.micro_batch_size, layout.global_batch_size
    if p.zero_stage not in (0, 1, 2, 3):
        raise ConfigError(f"parallel.zero_stage={p.zero_stage}; expected 0, 1, 2 or 3")
    if p.offload_param and p.zero_stage != 3:
        raise ConfigError("parallel.offload_param=true needs parallel.zero_stage=3")
    if p.offload_optimizer and p.zero_stage == 0:
        raise ConfigError("parallel.offload_optimizer=true needs parallel.zero_stage >= 1")
    stage = p.zero_stage
    if dp == 1 and not (p.offload_optimizer or p.offload_param):
        stage = 0
    return BatchPlan(micro, gbs, dp, gbs // (micro * dp), stage, tp, pp)


def check_precision(precision: str, device: torch.device) -> None:
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("trainer.precision=fp16 needs CUDA (DeepSpeed's CPU accelerator has no fp16); use bf16 or fp32")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("trainer.precision=bf16 but this GPU has no bf16; use fp16 or fp32")


class Engine(ABC):
    """One training backend. ``forward(batch)`` returns the mean loss of a micro-batch."""

    name = ""
    config: dict[str, Any]  # the backend's own generated config, saved into the run dir

    @abstractmethod
    def forward(self, batch: Batch) -> torch.Tensor: ...

    @abstractmethod
    def backward(self, loss: torch.Tensor) -> None: ...

    @abstractmethod
    def step(self) -> None:
        """After every micro-batch's backward; the optimizer steps at the accumulation boundary."""

    def train_step(self, batches: Iterator[Batch], num_micro_batches: int, device: torch.device) -> torch.Tensor:
        """One optimizer step over ``num_micro_batches`` batches drawn from ``batches``; returns the sum of
        their losses (fp32, detached)."""
        loss_sum = torch.zeros((), device=device)
        for _ in range(num_micro_batches):
            batch = next(batches)
            loss = self.forward({k: v.to(device, non_blocking=True) for k, v in batch.items()})
            self.backward(loss)
            self.step()
            loss_sum += loss.detach().float()
        return loss_sum

    def eval_loss(self, batches: Iterable[Batch], num_micro_batches: int, device: torch.device) -> float:
        """Mean loss of ``batches`` on this rank, without gradients."""
        self.eval()
        total, n = 0.0, 0
        with torch.no_grad():
            for batch in batches:
                total += self.forward({k: v.to(device) for k, v in batch.items()}).item()
                n += 1
        self.train()
        return total / max(n, 1)

    @abstractmethod
    def train(self) -> None: ...

    @abstractmethod
    def eval(self) -> None: ...

    @abstractmethod
    def lr(self) -> float: ...

    @abstractmethod
    def grad_norm(self) -> float | None:
        """The global gradient norm of the last optimizer step (before clipping), over every rank."""

    @abstractmethod
    def loss_scale(self) -> float: ...

    @abstractmethod
    def save(self, ckpt_dir: Path, step: int, state: dict[str, Any], keep_last: int) -> Path:
        """Collective: a complete checkpoint of step ``step`` (``state`` = the trainer state)."""

    @abstractmethod
    def load(self, ckpt_dir: Path, tag: str, same_layout: bool) -> tuple[dict[str, Any], dict | None]:
        """Collective: restore from ``ckpt_dir/tag``; returns (trainer state, this rank's RNG state or None)."""

    def close(self) -> None:
        """Free what the backend holds."""
