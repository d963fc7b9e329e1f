"""The tokens each source has supplied, logged and checkpointed (:class:`MixtureTracker`).

The blend is a pure function of the global sample index, so the samples per source after ``consumed_samples``
are ``blend.counts(consumed_samples)``: exact at any step, after any resume (at another data-parallel size or
global batch too), and the same on every rank without a collective. Each training record gets
``consumed_tokens/<source>`` (and, with ``data.schedule``, ``data_weight/<source>``: the weight in force);
checkpoints hold the counts and the mixture itself under ``callbacks.data_mixture`` of ``trainer_state.json``,
which is what a resumed run compares its ``data.schedule`` against (:func:`pretrain.data.schedule.plan_mixture`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from pretrain.callbacks import Callback, StepOutput
from pretrain.data.schedule import STATE_KEY

if TYPE_CHECKING:
    from pretrain.trainer import Trainer

log = logging.getLogger("pretrain")


class MixtureTracker(Callback):
    order = 15  # after the StepRecorder built the record, before the MetricsLogger writes it
    state_key = STATE_KEY

    def __init__(self, trainer: "Trainer"):
        self.trainer = trainer

    def samples_per_source(self, consumed_samples: int) -> dict[str, int]:
        train = self.trainer.data.train
        return dict(zip(train.corpus_names, (int(c) for c in train.blend.counts(int(consumed_samples)))))

    def state_dict(self) -> dict[str, Any]:
        t = self.trainer
        samples = self.samples_per_source(t.consumed_samples)
        return {
            "mixture": t.mixture.to_json() if t.mixture is not None else None,
            "weights": dict(zip(t.data.corpus_names, t.data.corpus_weights)) if t.mixture is None else None,
            "consumed_samples": samples,
            "consumed_tokens": {n: c * t.seq for n, c in samples.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        t, old = self.trainer, state.get("weights")
        new = dict(zip(t.data.corpus_names, t.data.corpus_weights))
        if t.mixture is None and old and (set(old) != set(new) or any(abs(old[n] - new[n]) > 1e-12 for n in new)):
            log.warning("data.weights changed since the checkpoint (%s -> %s): the blend of the new weights is read "
                        "from sample %d on; use data.schedule to change a mixture during a run without repeating "
                        "or skipping samples", old, new, t.consumed_samples)

    def on_step_end(self, trainer: "Trainer", out: StepOutput) -> None:
        if "loss" not in out.record:
            return
        for name, c in self.samples_per_source(trainer.consumed_samples).items():
            out.record[f"consumed_tokens/{name}"] = c * trainer.seq
        if trainer.mixture is not None:
            weights = trainer.mixture.weights_at(trainer.consumed_samples, trainer.data.train.corpus_names)
            out.record.update({f"data_weight/{n}": w for n, w in weights.items()})
