"""When to save: every ``checkpoint.interval`` steps, at ``trainer.max_steps`` (``checkpoint.save_at_end``) and
when a stop was requested. How to save (shards, the layout-free copy, the file list, ``COMPLETE``, then
``latest``, keep-last-N rotation) is the engine's and ``pretrain.checkpoint``'s."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from pretrain.callbacks import Callback, StepOutput

if TYPE_CHECKING:
    from pretrain.trainer import Trainer

log = logging.getLogger("pretrain")


class Checkpointer(Callback):
    order = 50

    def __init__(self, interval: int, keep_last: int, save_at_end: bool):
        self.interval, self.keep_last, self.save_at_end = interval, keep_last, save_at_end

    def due(self, trainer: "Trainer", step: int) -> bool:
        if trainer.rollback_request is not None:  # the guard abandons this step's state: never save it
            return False
        return ((self.interval > 0 and step % self.interval == 0) or (step == trainer.max_steps and self.save_at_end)
                or trainer.stop_reason is not None)

    def on_step_end(self, trainer: "Trainer", out: StepOutput) -> None:
        if self.due(trainer, out.step):
            path = trainer.engine.save(trainer.ckpt_dir, out.step, trainer.state_dict(), self.keep_last)
            log.info("saved checkpoint %s", path)
            trainer.callbacks.on_save(trainer, path)
