"""Example trainer callback (docs/extending.md): end the run, with a checkpoint, once the loss reaches a target."""

from __future__ import annotations

from pretrain.callbacks import Callback, StepOutput


class StopAtLoss(Callback):
    order = 45  # after the StepRecorder (10) built the record, before the Checkpointer (50) decides to save
    state_key = "stop_at_loss"  # state_dict() goes into every checkpoint and comes back on resume

    def __init__(self, target: float):
        self.target = target
        self.seen: list[int] = []
        self.seen_before = 0  # steps the runs before this one saw (from the checkpoint)

    def state_dict(self) -> dict:
        return {"steps_seen": self.seen_before + len(self.seen)}

    def load_state_dict(self, state: dict) -> None:
        self.seen_before = state["steps_seen"]

    def on_step_end(self, trainer, out: StepOutput) -> None:
        self.seen.append(out.step)
        loss = out.record.get("loss")  # all-reduced over the data-parallel ranks: the same decision on every rank
        if loss is not None and loss <= self.target:
            trainer.request_stop(f"loss {loss:.3f} <= {self.target}")
