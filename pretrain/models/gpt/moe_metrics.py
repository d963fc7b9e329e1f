"""Per-step mixture-of-experts metrics in the step's record (``metrics.jsonl``, W&B, the same record):

==========================  ====================================================================================
``moe_aux_loss``            the load-balancing loss (before ``model.moe_aux_loss_coeff``), mean over MoE layers
``moe_z_loss``              the router z-loss (before ``model.moe_z_loss_coeff``), mean over MoE layers
``moe_dropped_fraction``    token-to-expert assignments the capacity dropped / all (tokens x topk; 0: no capacity)
``moe_expert_load_max``     assignments of the most used expert / the mean per expert (1.0 = perfectly balanced)
``moe_expert_load_min``     assignments of the least used expert / the mean (0.0 = an expert that got nothing)
``moe_a2a_bytes``           bytes one rank sent + received by the expert-parallel all-to-alls per step (0 at ep 1)
==========================  ====================================================================================

Loads count every MoE layer (summed per global expert) over every data-parallel rank, every pipeline stage and
every step since the last record; the losses are means over the same; the all-to-all bytes are the mean rank's,
per step.

:class:`MoEMetrics` takes the layers' statistics after every step (``pretrain.models.gpt.moe.take_moe_stats``:
what the forwards since the last call saw), adds them up, and on the steps the ``StepRecorder`` (order 10) built
a record for, all-reduces them over the data-parallel group (a collective on the same steps on every rank: the
record is due on the same steps everywhere) and writes them into that record before the ``MetricsLogger`` (30)
logs it. Only training forwards count (the layers skip eval-mode ones: the ``Evaluator``'s).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from pretrain.callbacks import Callback, StepOutput

if TYPE_CHECKING:
    from pretrain.trainer import Trainer


def _module(trainer: "Trainer") -> torch.nn.Module:
    """The module this rank trains (the engine's wrapped model, a pipeline stage under pipeline parallelism)."""
    engine = trainer.engine
    for attr in ("module", "ds", "model"):
        m = getattr(engine, attr, None)
        if isinstance(m, torch.nn.Module):
            return m
    raise TypeError(f"{type(engine).__name__} exposes no module to read the MoE statistics from")


def _take(trainer: "Trainer") -> dict[str, Any]:
    from pretrain.models.gpt.moe import take_moe_stats

    return take_moe_stats(_module(trainer))


class MoEStats:
    """Running sums of ``take_moe_stats`` results over the steps since the last record (this rank)."""

    def __init__(self, num_experts: int, num_layers: int) -> None:
        self.num_experts, self.num_layers = num_experts, num_layers  # global experts; MoE layers on this rank
        self.reset()

    def reset(self) -> None:
        self.steps = 0
        self.aux = self.z = self.assignments = self.dropped = self.a2a = 0.0
        self.load = [0.0] * self.num_experts

    def add(self, s: dict[str, Any]) -> None:
        self.steps += 1
        self.aux += float(s.get("aux_loss", 0.0))
        self.z += float(s.get("z_loss", 0.0))
        self.assignments += float(s.get("assignments", 0))
        self.dropped += float(s.get("dropped", 0))
        self.a2a += float(s.get("a2a_bytes", 0))
        for i, x in enumerate(s.get("expert_load") or []):
            self.load[i] += float(x)

    def vector(self) -> list[float]:
        """What the all-reduces sum: the per-step mean losses weighted by this rank's MoE layers (a pipeline stage
        may hold none), the layer count, the per-step bytes, then counts and loads."""
        n, L = max(self.steps, 1), self.num_layers
        return [L * self.aux / n, L * self.z / n, float(L), self.a2a / n, self.assignments, self.dropped, *self.load]


def record_fields(summed: list[float], ranks: int) -> dict[str, float]:
    """The record's ``moe_*`` values from :meth:`MoEStats.vector` summed over ``ranks`` ranks (the data-parallel
    ranks, times the pipeline stages)."""
    aux, z, layers, a2a, assignments, dropped, *load = summed
    mean_load = sum(load) / len(load) if load else 0.0
    return {
        "moe_aux_loss": aux / layers if layers else 0.0,
        "moe_z_loss": z / layers if layers else 0.0,
        "moe_dropped_fraction": dropped / assignments if assignments else 0.0,
        "moe_expert_load_max": max(load) / mean_load if mean_load else 0.0,
        "moe_expert_load_min": min(load) / mean_load if mean_load else 0.0,
        "moe_a2a_bytes": a2a / ranks,
    }


class MoEMetrics(Callback):
    order = 15  # after the StepRecorder (10) built the record, before the Evaluator (20) and the logger (30)

    def __init__(self, num_experts: int) -> None:
        self.num_experts = num_experts
        self.stats: MoEStats | None = None

    def on_train_start(self, trainer: "Trainer") -> None:
        from pretrain.models.gpt.moe import moe_modules, take_moe_stats

        module = _module(trainer)
        layers = len(moe_modules(module))
        take_moe_stats(module)  # forget what ran before training (a resume's or a test's forwards)
        self.stats = MoEStats(self.num_experts, layers)

    def on_step_end(self, trainer: "Trainer", out: StepOutput) -> None:
        assert self.stats is not None
        self.stats.add(_take(trainer))
        if not out.record:  # not a logged step
            return
        values, ranks = self.stats.vector(), 1
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            t = torch.tensor(values, dtype=torch.float64, device=trainer.device)
            torch.distributed.all_reduce(t, group=trainer.dp_group)
            ranks = torch.distributed.get_world_size(trainer.dp_group)
            if trainer.pipelined:  # every stage's MoE layers, into the record rank 0 writes
                torch.distributed.all_reduce(t, group=trainer.grid.get_pipe_parallel_group())
                ranks *= trainer.grid.get_pipe_parallel_world_size()
            values = t.tolist()
        out.record.update(record_fields(values, ranks))
        self.stats.reset()


def callbacks(args: Any) -> list[Callback]:
    """The Trainer's MoE callbacks (through ``GPTFamily.callbacks``): none for a dense model."""
    experts = int(getattr(args, "num_experts", 0) or 0)
    if not experts:
        return []
    return [MoEMetrics(experts)]
