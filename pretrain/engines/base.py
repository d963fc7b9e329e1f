"""The engine interface: what the Trainer needs of a training backend, and the batch arithmetic all share.

An engine wraps one backend (DeepSpeed today; an accelerate/FSDP2 engine is the next implementation) and
offers forward / backward / step, a whole training step over the step's micro-batches, evaluation, the
gradient norm, the LR, the loss scale and checkpoint save/load. The Trainer and its components only talk
to this interface, so a second engine is one more file in ``pretrain/engines/`` plus one registry line.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch

from pretrain.core.errors import ConfigError
from pretrain.engines.batching import BatchPlan, batch_plan  # noqa: F401  (re-exported)

Batch = dict[str, torch.Tensor]


def check_precision(precision: str, device: torch.device) -> None:
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("trainer.precision=fp16 needs CUDA (DeepSpeed's CPU accelerator has no fp16); use bf16 or fp32")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("trainer.precision=bf16 but this GPU has no bf16; use fp16 or fp32")


def rescale_lambda_lr(sched: torch.optim.lr_scheduler.LambdaLR, lr_scale: list[float], scale: float) -> None:
    """``set_lr_scale`` of an engine whose schedule is a LambdaLR multiplied by ``lr_scale[0]``: the new factor, and
    the optimizer's LRs of the current step recomputed with it (what ``LambdaLR.step`` computes, without advancing)."""
    lr_scale[0] = float(scale)
    for group, base_lr, fn in zip(sched.optimizer.param_groups, sched.base_lrs, sched.lr_lambdas):
        group["lr"] = base_lr * fn(sched.last_epoch)
    sched._last_lr = [g["lr"] for g in sched.optimizer.param_groups]


class Engine(ABC):
    """One training backend. ``forward(batch)`` returns the mean loss of a micro-batch."""

    name = ""
    config: dict[str, Any]  # the backend's own generated config, saved into the run dir

    def describe(self, plan: "BatchPlan") -> str:
        """How model and optimizer state are held, for the trainer's set-up line (DeepSpeed's ZeRO stage)."""
        return f"ZeRO-{plan.zero_stage}"

    @abstractmethod
    def forward(self, batch: Batch) -> torch.Tensor: ...

    @abstractmethod
    def backward(self, loss: torch.Tensor) -> None: ...

    @abstractmethod
    def step(self) -> None:
        """After every micro-batch's backward; the optimizer steps at the accumulation boundary."""

    def train_step(self, batches: Iterator[Batch], num_micro_batches: int, device: torch.device) -> torch.Tensor:
        """One optimizer step over ``num_micro_batches`` batches drawn from ``batches``; returns the sum of
        their losses (fp32, detached). The sum is complete before the last ``step()`` (the accumulation
        boundary), so the step gate (:meth:`set_step_gate`) decides on the step's whole loss."""
        self.begin_step()
        loss_sum = torch.zeros((), device=device)
        for i in range(num_micro_batches):
            batch = next(batches)
            loss = self.forward({k: v.to(device, non_blocking=True) for k, v in batch.items()})
            if self.corruption is not None and i == self.corruption[1]:
                loss = loss * self.corruption[0]  # fault injection (trainer.guard.inject)
            self.backward(loss)
            loss_sum += loss.detach().float()
            if i == num_micro_batches - 1:
                self.pending_loss = loss_sum
            self.step()
        return loss_sum

    # -- training health (pretrain.guard): the hooks an engine offers so that a step can be skipped cleanly
    corruption: tuple[float, int] | None = None  # (loss factor, micro-batch index) for the next step, or None
    pending_loss: torch.Tensor | None = None  # this rank's loss sum of the step, once every micro-batch is done

    def begin_step(self) -> None:
        """Called at the start of every training step: forget the last step's gate verdict and loss."""
        self.pending_loss = None

    def corrupt_next_step(self, factor: float | None, micro_batch: int = 0) -> None:
        """Fault injection: multiply the loss of this rank's ``micro_batch``-th micro-batch of the next step by
        ``factor`` (NaN, or a spike factor) before its backward; None: leave the next step alone."""
        self.corruption = None if factor is None else (float(factor), int(micro_batch))

    @abstractmethod
    def set_step_gate(self, gate: Callable[[torch.Tensor | None, float | None], bool] | None) -> None:
        """``gate(loss_sum, grad_norm) -> skip`` runs inside every optimizer step, after the gradients are
        reduced and their norm is known and before any parameter, optimizer state or LR changes; it must be
        collective-safe (every rank calls it at the same step). ``loss_sum`` is this rank's (None where the
        backend does not know it yet: pipeline parallelism). Returning True skips the update: parameters,
        optimizer moments and step count and the LR schedule stay as they were; the gradients are dropped."""

    @abstractmethod
    def update_applied(self) -> bool:
        """Whether the last step changed the parameters (False after a gate skip or the backend's own
        overflow skip)."""

    @abstractmethod
    def gate_consulted(self) -> bool:
        """Whether the gate ran during the last step (it does not when the backend skipped on its own)."""

    @abstractmethod
    def set_lr_scale(self, scale: float) -> None:
        """Multiply the scheduled LR by ``scale`` from the next step on (1.0: the schedule as it is)."""

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
