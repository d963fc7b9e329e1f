"""Training health: a non-finite loss or gradient norm, or a loss spike, is caught at the step it happens and
handled without a person: skip the step, then lower the LR for a while, then roll back to the last good
checkpoint and continue past the offending samples (``trainer.guard.*``; README "Training health").

Three parts, each usable on its own:

* :class:`SpikeDetector` -- is this loss an anomaly? Non-finite, or a spike: a z-score against a running
  window of recent healthy losses, or a ratio to the window's median, after a warm-up.
* :class:`Escalation` -- what to do about it. An *episode* opens at an anomaly and closes after ``patience``
  healthy steps; within it the first ``max_skips`` anomalies skip their step, the next also lowers the LR for
  ``lr_steps`` steps, any further one rolls back.
* :class:`Guard` -- the Trainer component that runs both. It decides inside the optimizer step, through the
  engine's step gate (``Engine.set_step_gate``), after the gradients are reduced and before anything changes,
  on values all-reduced over every rank: every rank takes the same decision at the same step. A skipped step
  leaves parameters, optimizer moments and step count and the LR schedule as they were; its batch counts as
  consumed. Every action is one metrics record (metrics.jsonl, W&B) and one train.log line, with the step,
  the samples and the reason, and the command that shows the documents behind them.

Pipeline parallelism: DeepSpeed's ``train_batch`` steps the optimizer before the loss reaches the stages, so the
gate there decides on the gradient norm alone: a non-finite one is skipped as everywhere. A finite loss spike
is seen only after its update was applied; the ladder then starts at lowering the LR (and rolls back next).

While an episode is open, the last good checkpoint (the newest one saved outside any episode) is named in
``<checkpoint.dir>/last_good``, and keep-last-N rotation never deletes it. A rollback reloads it in-process,
points ``latest`` back at it and continues from the data position after the offending step: the samples in
between are never trained on. The run plans data for that (:meth:`Guard.reserve_samples`).

With ``trainer.guard.enabled=false`` only the check remains: a non-finite loss stops the run with one line
naming the step. Fault injection (``trainer.guard.inject``) corrupts the loss of chosen batches, for tests.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from pretrain import checkpoint as ckpt
from pretrain.callbacks import Callback, StepOutput
from pretrain.core.errors import ConfigError, UserError

if TYPE_CHECKING:
    from pretrain.trainer import Trainer

log = logging.getLogger("pretrain")

SKIP, LOWER_LR, ROLLBACK = "skip", "lower_lr", "rollback"
RESTORE_LR, RECOVERED = "restore_lr", "recovered"
MIN_REL_STD = 0.005  # the z-score's deviation is at least 0.5% of the mean: a flat window makes no noise a spike


class DivergenceError(UserError):
    """The run cannot go on: a non-finite loss with the guard off, or a spike the guard could not resolve."""


def _val(x: Any) -> Any:
    return x.value if hasattr(x, "value") else x


# ------------------------------------------------------------------------------------------------ detection
class SpikeDetector:
    """Anomalies of the loss against a running window of the recent healthy ones."""

    def __init__(self, method: str = "zscore", window: int = 100, warmup_steps: int = 100, zscore: float = 6.0,
                 ratio: float = 2.0):
        self.method, self.warmup_steps, self.zscore, self.ratio = method, warmup_steps, zscore, ratio
        self.losses: deque[float] = deque(maxlen=window)
        self.seen = 0  # healthy losses added, ever (the warm-up counts these)

    def check(self, loss: float | None, grad_norm: float | None = None) -> str | None:
        """Why this step is an anomaly, or None."""
        if loss is not None and not math.isfinite(loss):
            return f"non-finite loss ({loss})"
        if grad_norm is not None and not math.isfinite(grad_norm):
            return f"non-finite gradient norm ({grad_norm})"
        if loss is None or self.method == "off" or self.seen < self.warmup_steps or len(self.losses) < 2:
            return None
        n = len(self.losses)
        if self.method == "ratio":
            median = statistics.median(self.losses)
            if median > 0 and loss > self.ratio * median:
                return (f"loss spike: {loss:.4g} is {loss / median:.2f} x the median {median:.4g} of the last {n} "
                        f"steps (trainer.guard.ratio={self.ratio})")
            return None
        mean = statistics.fmean(self.losses)
        std = max(statistics.pstdev(self.losses, mean), MIN_REL_STD * abs(mean))
        z = (loss - mean) / std
        if z > self.zscore:
            return (f"loss spike: {loss:.4g} is {z:.1f} standard deviations above the mean {mean:.4g} of the last "
                    f"{n} steps (trainer.guard.zscore={self.zscore})")
        return None

    def add(self, loss: float) -> None:
        self.losses.append(float(loss))
        self.seen += 1

    def state_dict(self) -> dict[str, Any]:
        return {"losses": list(self.losses), "seen": self.seen}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.losses.clear()
        self.losses.extend(float(x) for x in state.get("losses", []))
        self.seen = int(state.get("seen", len(self.losses)))


# ----------------------------------------------------------------------------------------------- escalation
class Escalation:
    """The ladder within one episode of anomalies: skip, lower the LR, roll back."""

    def __init__(self, max_skips: int = 1, lr_steps: int = 20, patience: int = 50):
        self.max_skips, self.lr_steps, self.patience = max_skips, lr_steps, patience
        self.open_since: int | None = None  # the step that opened the episode
        self.last_anomaly = 0
        self.strikes = 0  # anomalies in the episode since it opened (or since its last rollback)
        self.lr_until = 0  # the LR is lowered up to this step (0: not lowered)
        self.rollbacks = 0  # in the whole run

    @property
    def open(self) -> bool:
        return self.open_since is not None

    def anomaly(self, step: int, can_skip: bool = True) -> str:
        """The action for an anomaly at ``step``. ``can_skip=False``: the update is already applied (a spike
        seen after a pipeline-parallel step), so the ladder starts at lowering the LR."""
        if self.open_since is None:
            self.open_since, self.strikes = step, 0
        self.strikes += 1
        self.last_anomaly = step
        if not can_skip:
            self.strikes = max(self.strikes, self.max_skips + 1)
        if self.strikes <= self.max_skips:
            return SKIP
        if self.strikes == self.max_skips + 1:
            self.lr_until = step + self.lr_steps
            return LOWER_LR
        return ROLLBACK

    def healthy(self, step: int) -> list[str]:
        """A healthy ``step``: the LR comes back after its period, the episode closes after ``patience``."""
        events = []
        if self.lr_until and step >= self.lr_until:
            self.lr_until = 0
            events.append(RESTORE_LR)
        if self.open_since is not None and not self.lr_until and step - self.last_anomaly >= self.patience:
            self.open_since, self.strikes = None, 0
            events.append(RECOVERED)
        return events

    def rolled_back(self, step: int) -> None:
        """After a rollback to ``step``: the LR is the schedule's again, the ladder starts over; the episode stays
        open (and its checkpoint protected) until ``patience`` healthy steps have passed."""
        self.rollbacks += 1
        self.strikes, self.lr_until, self.last_anomaly = 0, 0, step

    def state_dict(self) -> dict[str, Any]:
        return {"open_since": self.open_since, "last_anomaly": self.last_anomaly, "strikes": self.strikes,
                "lr_until": self.lr_until, "rollbacks": self.rollbacks}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.open_since = state.get("open_since")
        self.last_anomaly = int(state.get("last_anomaly", 0))
        self.strikes = int(state.get("strikes", 0))
        self.lr_until = int(state.get("lr_until", 0))
        self.rollbacks = int(state.get("rollbacks", 0))


@dataclass
class Verdict:
    """What the guard found at one step."""

    step: int
    loss: float | None
    grad_norm: float | None
    reason: str | None = None  # None: healthy
    action: str | None = None  # SKIP / LOWER_LR / ROLLBACK for an anomaly
    applied: bool = True  # whether the step's update went through (False: skipped, by us or by DeepSpeed)


def check_config(g) -> None:
    """Every bad ``trainer.guard`` value at once, each naming its key, before any work."""
    problems = []

    def need(ok: bool, key: str, value: Any, expected: str) -> None:
        if not ok:
            problems.append(f"trainer.guard.{key}={value}: expected {expected}")

    need(g.window >= 2, "window", g.window, "at least 2 (a spike is judged against the window)")
    need(g.warmup_steps >= 0, "warmup_steps", g.warmup_steps, ">= 0")
    need(g.zscore > 0, "zscore", g.zscore, "> 0")
    need(g.ratio > 1, "ratio", g.ratio, "> 1 (a multiple of the running median)")
    need(g.max_skips >= 0, "max_skips", g.max_skips, ">= 0")
    need(0 < g.lr_factor <= 1, "lr_factor", g.lr_factor, "in (0, 1]")
    need(g.lr_steps >= 1, "lr_steps", g.lr_steps, ">= 1")
    need(g.patience >= 1, "patience", g.patience, ">= 1")
    need(g.max_rollbacks >= 0, "max_rollbacks", g.max_rollbacks, ">= 0")
    for key in ("nan_at", "spike_at"):
        steps = list(g.inject[key])
        need(all(int(s) >= 1 for s in steps), f"inject.{key}", steps, "steps >= 1")
    need(g.inject.spike_factor > 0, "inject.spike_factor", g.inject.spike_factor, "> 0")
    if problems:
        raise ConfigError("invalid config: " + "; ".join(problems))


def _world_sum(values: list[float | torch.Tensor], device: torch.device) -> list[float]:
    """The sum over every rank of each value (one all-reduce; the same result on every rank)."""
    t = torch.stack([torch.as_tensor(v).to(device=device, dtype=torch.float64).reshape(()) for v in values])
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(t)
    return t.tolist()


# -------------------------------------------------------------------------------------------- the component
class Guard(Callback):
    """The Trainer's guard (built in :meth:`Trainer.plan`, attached to the engine in :meth:`Trainer.resume`)."""

    order = 5  # before the StepRecorder (10), so that a step the guard acted on always gets its record
    state_key = "guard"

    def __init__(self, g, pipelined: bool = False, fp16: bool = False):
        check_config(g)
        self.enabled = bool(g.enabled)
        self.cfg, self.pipelined, self.fp16 = g, pipelined, fp16
        self.detector = SpikeDetector(_val(g.spike), g.window, g.warmup_steps, g.zscore, g.ratio)
        self.escalation = Escalation(g.max_skips, g.lr_steps, g.patience)
        self.nan_at = {int(s) for s in g.inject.nan_at}
        self.spike_at = {int(s) for s in g.inject.spike_at}
        self.last_good: str | None = None  # newest checkpoint saved outside an episode
        self.actions = 0  # actions taken in the whole run (state)
        self._verdict: Verdict | None = None
        self._step, self._samples = 0, (0, 0)

    # -- planning
    def reserve_samples(self, checkpoint_interval: int, global_batch_size: int) -> int:
        """Samples to plan beyond ``max_steps`` global batches: each rollback continues past the samples between
        its checkpoint (up to ``checkpoint.interval`` steps before the episode) and the end of the episode
        (anomalies at most ``patience`` apart: below ``(max_skips + 2) x patience + lr_steps`` steps). Sample
        ``i`` does not depend on how many are planned (the data index is prefix-stable), so a healthy run reads
        exactly what it would without."""
        g = self.cfg
        if not self.enabled or g.max_rollbacks == 0:
            return 0
        episode = (g.max_skips + 2) * g.patience + g.lr_steps
        return g.max_rollbacks * (max(0, checkpoint_interval) + episode) * global_batch_size

    def attach(self, trainer: "Trainer") -> None:
        self.trainer = trainer
        if self.enabled:
            trainer.engine.set_step_gate(self.gate)

    # -- state
    def state_dict(self) -> dict[str, Any]:
        return {"detector": self.detector.state_dict(), "escalation": self.escalation.state_dict(),
                "last_good": self.last_good, "actions": self.actions}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.detector.load_state_dict(state.get("detector", {}))
        self.escalation.load_state_dict(state.get("escalation", {}))
        self.last_good = state.get("last_good")
        self.actions = int(state.get("actions", 0))

    def on_train_start(self, trainer: "Trainer") -> None:
        if trainer.resume_tag and not self.escalation.open:
            self.last_good = trainer.resume_tag  # saved outside an episode (its state says so): good
        if self.escalation.lr_until > trainer.step:  # resumed while the LR was lowered
            trainer.engine.set_lr_scale(self.cfg.lr_factor)

    def on_save(self, trainer: "Trainer", path) -> None:
        if self.enabled and not self.escalation.open:
            self.last_good = path.name

    # -- every step
    def before_step(self, trainer: "Trainer") -> None:
        """The step about to run: its number and samples; fault injection armed for its batch."""
        gbs = trainer.batch.global_batch_size
        self._step, self._verdict = trainer.step + 1, None
        lo = trainer.consumed_samples
        self._samples = (lo, lo + gbs)

        def hit(steps: set[int]) -> bool:
            return any(lo <= (k - 1) * gbs < lo + gbs for k in steps)

        factor = math.nan if hit(self.nan_at) else self.cfg.inject.spike_factor if hit(self.spike_at) else None
        if factor is not None and trainer.dist.is_main:
            log.info("fault injection (trainer.guard.inject): the loss of step %d's first micro-batch x %s",
                     self._step, factor)
        # the micro-batch holding the step's first sample: data-parallel rank 0's first
        trainer.engine.corrupt_next_step(factor if trainer.dp_rank == 0 else None, 0)

    def _mean_loss(self, total: float) -> float:
        t = self.trainer
        return total / (t.dist.world_size * t.batch.grad_accum_steps)

    def gate(self, loss_sum: torch.Tensor | None, grad_norm: float | None) -> bool:
        """Inside the optimizer step, on every rank: True skips the update. Collective."""
        bad_norm = grad_norm is not None and not math.isfinite(grad_norm)
        if loss_sum is None:  # pipeline: the loss is not there yet; the gradient norm decides
            (flag,) = _world_sum([float(bad_norm)], self.trainer.device)
            if not flag:
                return False
            self._verdict = self._assess(None, math.inf if grad_norm is None else grad_norm, can_skip=True)
        else:
            total, flag = _world_sum([loss_sum, float(bad_norm)], self.trainer.device)
            norm = grad_norm if not flag or bad_norm else math.nan  # another rank's norm was not finite
            self._verdict = self._assess(self._mean_loss(total), norm, can_skip=True)
        return self._verdict.action is not None

    def _assess(self, loss: float | None, grad_norm: float | None, can_skip: bool) -> Verdict:
        v = Verdict(self._step, loss, grad_norm, reason=self.detector.check(loss, grad_norm))
        if v.reason is None:
            return v
        v.action = self.escalation.anomaly(self._step, can_skip)
        v.applied = not can_skip
        return v

    def on_step_end(self, trainer: "Trainer", out: StepOutput) -> None:
        if not self.enabled:
            (total,) = _world_sum([out.loss_sum], trainer.device)
            loss = self._mean_loss(total)
            if not math.isfinite(loss):
                msg = (f"step {out.step}: the loss is {loss} (samples {self._samples[0]}-{self._samples[1] - 1}); "
                       "trainer.guard.enabled=false stops the run here (with the guard on, the step would be "
                       f"skipped); see the documents: python -m pretrain.data.inspect {trainer.run_dir} "
                       f"--step {out.step}")
                log.error(msg)
                raise DivergenceError(msg)
            return
        v = self._verdict
        engine = trainer.engine
        if v is None:
            # not decided inside the step: DeepSpeed skipped the update on its own (a non-finite norm under ZeRO
            # 1-3 or bf16, an fp16 overflow), or pipeline parallelism, where the loss arrives after the update
            (total,) = _world_sum([out.loss_sum], trainer.device)
            loss, norm, applied = self._mean_loss(total), engine.grad_norm(), engine.update_applied()
            if not applied and self.fp16 and math.isfinite(loss):
                return  # the fp16 loss scaler's overflow: DeepSpeed lowers the scale, nothing to do
            v = self._assess(loss, norm, can_skip=not applied)
            v.applied = applied
        if v.reason is None:
            self.detector.add(v.loss)
            for event in self.escalation.healthy(v.step):
                self._healthy_event(trainer, out, event)
            return
        self._act(trainer, out, v)

    # -- actions
    def _record(self, out: StepOutput, action: str, reason: str, **extra: Any) -> None:
        out.record.update({"step": out.step, "guard_action": action, "guard_reason": reason,
                           "guard_samples_start": self._samples[0], "guard_samples_end": self._samples[1], **extra})
        self.actions += 1

    def _say(self, trainer: "Trainer", text: str, step: int) -> None:
        if trainer.dist.is_main:
            log.warning("guard: %s; the documents: python -m pretrain.data.inspect %s --step %d", text,
                        trainer.run_dir, step)

    def _protect(self, trainer: "Trainer", tag: str | None) -> None:
        if trainer.dist.is_main:
            ckpt.set_protected(trainer.ckpt_dir, tag)

    def _act(self, trainer: "Trainer", out: StepOutput, v: Verdict) -> None:
        lo, hi = self._samples
        where = f"step {v.step} (samples {lo}-{hi - 1})"
        if self.escalation.open_since == v.step and self.last_good:
            self._protect(trainer, self.last_good)  # the episode opened: rotation keeps the last good one
        done = "the update was skipped" if not v.applied else "the update was applied (pipeline parallelism)"
        if v.action == SKIP:
            self._record(out, SKIP, v.reason)
            self._say(trainer, f"{where}: {v.reason}: skipped (no optimizer update, LR schedule not advanced, "
                      "batch consumed)", v.step)
        elif v.action == LOWER_LR:
            trainer.engine.set_lr_scale(self.cfg.lr_factor)
            self._record(out, LOWER_LR, v.reason, guard_lr_scale=self.cfg.lr_factor,
                         guard_lr_until=self.escalation.lr_until)
            self._say(trainer, f"{where}: {v.reason}: {done}; LR x {self.cfg.lr_factor} up to step "
                      f"{self.escalation.lr_until} (episode open since step {self.escalation.open_since})", v.step)
        else:
            self._rollback(trainer, out, v, where)

    def _rollback(self, trainer: "Trainer", out: StepOutput, v: Verdict, where: str) -> None:
        esc, tag = self.escalation, self.last_good
        why = f"{where}: {v.reason}: the episode open since step {esc.open_since} goes on after the LR was lowered"
        if esc.rollbacks >= self.cfg.max_rollbacks:
            self._fail(trainer, f"{why}, and the {esc.rollbacks} rollbacks trainer.guard.max_rollbacks allows are "
                       "spent: the run does not recover; look at the data and the LR", v.step)
        if tag is None or not (trainer.ckpt_dir / tag / ckpt.COMPLETE).exists():
            self._fail(trainer, f"{why}, and there is no checkpoint from before the episode to roll back to; set "
                       "checkpoint.interval so that one exists", v.step)
        state = ckpt.read_state(trainer.ckpt_dir / tag)
        to_step, resume_at = int(state["step"]), trainer.consumed_samples
        needed = resume_at + (trainer.max_steps - to_step) * trainer.batch.global_batch_size
        if needed > trainer.num_train_samples:
            self._fail(trainer, f"{why}; rolling back to {tag} and continuing past sample {resume_at} needs "
                       f"{needed} samples, the run planned {trainer.num_train_samples}; lower checkpoint.interval",
                       v.step)
        self._record(out, ROLLBACK, v.reason, guard_rollback_to_step=to_step,
                     guard_skipped_samples_start=int(state["consumed_samples"]), guard_resume_at_sample=resume_at)
        self._say(trainer, f"{why}: rolling back to checkpoint {tag} (step {to_step}) and continuing at sample "
                  f"{resume_at}: samples {state['consumed_samples']}-{resume_at - 1} are skipped (rollback "
                  f"{esc.rollbacks + 1} of at most {self.cfg.max_rollbacks})", v.step)
        trainer.request_rollback(tag, resume_at)

    def _fail(self, trainer: "Trainer", text: str, step: int) -> None:
        msg = f"guard: {text} (python -m pretrain.data.inspect {trainer.run_dir} --step {step})"
        if trainer.dist.is_main:
            log.error(msg)
        raise DivergenceError(msg)

    def rolled_back(self, trainer: "Trainer", state: dict[str, Any]) -> None:
        """Called by the Trainer once it reloaded the checkpoint: the loss window of the checkpoint's time (the
        losses since were of the abandoned steps), the LR as scheduled, the episode still open."""
        saved = state.get("callbacks", {}).get(self.state_key, {})
        self.detector.load_state_dict(saved.get("detector", {}))
        self.escalation.rolled_back(trainer.step)
        trainer.engine.set_lr_scale(1.0)

    def _healthy_event(self, trainer: "Trainer", out: StepOutput, event: str) -> None:
        if event == RESTORE_LR:
            trainer.engine.set_lr_scale(1.0)
            self._record(out, RESTORE_LR, "the lowered-LR period ended")
            self._say(trainer, f"step {out.step}: the LR is back on its schedule", out.step)
        elif event == RECOVERED:
            self._protect(trainer, None)
            self._record(out, RECOVERED, f"{self.cfg.patience} healthy steps since the last anomaly")
            if trainer.dist.is_main:
                released = f"; checkpoint {self.last_good} is no longer protected" if self.last_good else ""
                log.warning("guard: step %d: recovered (%d healthy steps since the last anomaly at step %d)%s",
                            out.step, self.cfg.patience, self.escalation.last_anomaly, released)
