"""Validation: per source, the mean loss over ``trainer.eval_iters`` micro-batches per data-parallel rank of that
source's validation samples, every ``trainer.eval_interval`` steps and at the last step; the same samples every
time (each source's validation split from its start), averaged over the data-parallel ranks.

Each evaluation logs ``val_loss/<source>`` and ``val_ppl/<source>`` for every source, and their weighted total
``val_loss`` / ``val_ppl``: ``sum_k w_k * val_loss/k`` with the weights of :attr:`DataBundle.valid_weights`
(the training mixture's weights; with ``data.valid_path``, the held-out folder's token shares, so that runs on
different training data are scored alike; with ``data.schedule``, the last phase's weights)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch

from pretrain.callbacks import Callback, StepOutput
from pretrain.distributed import all_reduce_mean
from pretrain.parallel.pipeline import PP_COMM
from pretrain.parallel.tensor import TP_COMM

if TYPE_CHECKING:
    from pretrain.trainer import Trainer

log = logging.getLogger("pretrain")


def perplexity(loss: float) -> float:
    return float(torch.tensor(loss).clamp(max=50).exp())


class Evaluator(Callback):
    order = 20

    def __init__(self, interval: int, iters: int):
        self.interval, self.iters = interval, iters

    def due(self, trainer: "Trainer", step: int) -> bool:
        return (bool(trainer.data.valid_sources) and self.interval > 0
                and (step % self.interval == 0 or step == trainer.max_steps))

    def evaluate_sources(self, trainer: "Trainer") -> dict[str, float]:
        """Mean validation loss of every source (the same on every rank)."""
        losses = []
        for dataset in trainer.data.valid_sources.values():
            loader = trainer.loader(dataset, trainer.num_eval_samples, 0)
            losses.append(trainer.engine.eval_loss(loader, self.iters, trainer.device))
        TP_COMM.take(), PP_COMM.take()  # evaluation traffic is not a training step's
        return dict(zip(trainer.data.valid_sources, all_reduce_mean(losses, trainer.device, trainer.dp_group)))

    def evaluate(self, trainer: "Trainer") -> float:
        """The weighted total over the sources."""
        per_source = self.evaluate_sources(trainer)
        return weighted_total(per_source, trainer.data.valid_weights)

    def on_step_end(self, trainer: "Trainer", out: StepOutput) -> None:
        if not self.due(trainer, out.step):
            return
        per_source = self.evaluate_sources(trainer)
        val = weighted_total(per_source, trainer.data.valid_weights)
        trainer.last_val_loss = val
        if not out.record:
            out.record["step"] = out.step
        out.record.update({"val_loss": val, "val_ppl": perplexity(val)})
        for name, loss in per_source.items():
            out.record.update({f"val_loss/{name}": loss, f"val_ppl/{name}": perplexity(loss)})
        if len(per_source) > 1:
            log.info("step %d validation per source: %s (weighted total %.4f)", out.step,
                     ", ".join(f"{n} {v:.4f}" for n, v in per_source.items()), val)


def weighted_total(per_source: dict[str, float], weights: dict[str, float]) -> float:
    return float(sum(weights[n] * loss for n, loss in per_source.items()))
