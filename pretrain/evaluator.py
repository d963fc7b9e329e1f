"""Validation: the mean loss over ``trainer.eval_iters`` micro-batches per data-parallel rank, every
``trainer.eval_interval`` steps and at the last step. The same samples every time (the valid split from
its start), averaged over the data-parallel ranks."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from pretrain.callbacks import Callback, StepOutput
from pretrain.distributed import all_reduce_mean
from pretrain.parallel.pipeline import PP_COMM
from pretrain.parallel.tensor import TP_COMM

if TYPE_CHECKING:
    from pretrain.trainer import Trainer


class Evaluator(Callback):
    order = 20

    def __init__(self, interval: int, iters: int):
        self.interval, self.iters = interval, iters

    def due(self, trainer: "Trainer", step: int) -> bool:
        return (trainer.data.valid is not None and self.interval > 0
                and (step % self.interval == 0 or step == trainer.max_steps))

    def evaluate(self, trainer: "Trainer") -> float:
        loader = trainer.loader(trainer.data.valid, trainer.num_eval_samples, 0)
        loss = trainer.engine.eval_loss(loader, self.iters, trainer.device)
        TP_COMM.take(), PP_COMM.take()  # evaluation traffic is not a training step's
        return all_reduce_mean([loss], trainer.device, trainer.dp_group)[0]

    def on_step_end(self, trainer: "Trainer", out: StepOutput) -> None:
        if not self.due(trainer, out.step):
            return
        val = self.evaluate(trainer)
        trainer.last_val_loss = val
        if not out.record:
            out.record["step"] = out.step
        out.record.update({"val_loss": val, "val_ppl": float(torch.tensor(val).clamp(max=50).exp())})
