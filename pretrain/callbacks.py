"""The Trainer's extension point: callbacks that run at named moments of the loop.

The loop itself only does "next batch -> step -> callbacks". Everything that decides *when* something
happens (log a record, evaluate, stop on a signal, save a checkpoint) is a callback owning its own timing.
A new capability (guardrails, a profiler, another logger) is a new :class:`Callback` passed to
``Trainer(cfg, callbacks=[...])`` — no edit of the loop.

Callbacks run in ``order`` (lower first; ties keep the given order). The built-in ones:

====  ======================  ==============================================================
5     ``Guard``               non-finite or spiking loss/grad norm: skip, lower the LR, roll back
10    ``StepRecorder``        builds the step's metrics record (``pretrain.metrics``)
15    ``MixtureTracker``      tokens consumed per source (and scheduled weights) into the record
20    ``Evaluator``           validation loss every ``trainer.eval_interval`` steps
25    ``DistillCallback``     objective=distill only: the soft/hard loss parts, ``teacher_val_loss``
30    ``MetricsLogger``       writes the record: metrics.jsonl, W&B, console
40    ``StopOnRequest``       SIGUSR1/SIGTERM/wall-time budget: every rank stops after the same step
50    ``Checkpointer``        every ``checkpoint.interval`` steps, at the end and on a stop
====  ======================  ==============================================================

Every callback runs on every rank; a callback that calls collectives must do so on the same steps on all,
and one that ends the run (``trainer.request_stop``) must decide the same on every rank and run before the
Checkpointer (``order`` < 50) for the last step to be saved.

A callback with state that must survive a restart sets ``state_key`` and implements ``state_dict`` /
``load_state_dict``: the checkpoint's ``trainer_state.json`` holds it under ``callbacks.<state_key>`` (JSON
values only), and a resumed run hands it back before ``on_train_start``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import torch

if TYPE_CHECKING:
    from pretrain.trainer import Trainer


@dataclass
class StepOutput:
    """What one optimizer step produced, handed to every ``on_step_end``."""

    step: int  # the step just done (1-based)
    loss_sum: torch.Tensor  # sum of the micro-batch losses on this rank (fp32)
    lr: float  # the LR the step used
    checksum: int  # sum of the token ids this rank trained on in the step (the data order, cheaply comparable)
    t0: float  # perf_counter() at the start of the step
    record: dict[str, Any] = field(default_factory=dict)  # the metrics record; logged if not empty


class Callback:
    order = 100
    state_key: str | None = None  # set by a callback whose state_dict() goes into checkpoints

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def on_train_start(self, trainer: "Trainer") -> None:
        pass

    def on_step_end(self, trainer: "Trainer", out: StepOutput) -> None:
        pass

    def on_save(self, trainer: "Trainer", path: Path) -> None:
        pass

    def on_train_end(self, trainer: "Trainer", summary: dict[str, Any]) -> None:
        pass


class CallbackList:
    def __init__(self, callbacks: Iterable[Callback]):
        self.callbacks = sorted(callbacks, key=lambda c: c.order)

    def __iter__(self):
        return iter(self.callbacks)

    def state_dict(self) -> dict[str, dict[str, Any]]:
        return {c.state_key: c.state_dict() for c in self.callbacks if c.state_key}

    def load_state_dict(self, states: dict[str, dict[str, Any]]) -> list[str]:
        """Hand each callback its saved state; returns the saved keys no callback of this run claimed."""
        for c in self.callbacks:
            if c.state_key and c.state_key in states:
                c.load_state_dict(states[c.state_key])
        return sorted(set(states) - {c.state_key for c in self.callbacks})

    def on_train_start(self, trainer: "Trainer") -> None:
        for c in self.callbacks:
            c.on_train_start(trainer)

    def on_step_end(self, trainer: "Trainer", out: StepOutput) -> None:
        for c in self.callbacks:
            c.on_step_end(trainer, out)

    def on_save(self, trainer: "Trainer", path: Path) -> None:
        for c in self.callbacks:
            c.on_save(trainer, path)

    def on_train_end(self, trainer: "Trainer", summary: dict[str, Any]) -> None:
        for c in self.callbacks:
            c.on_train_end(trainer, summary)
