"""Stopping cleanly before the cluster stops us: preemption signals, a wall-clock budget, requeue.

SLURM warns a job before its time limit or a preemption with a signal (``#SBATCH --signal=B:USR1@<s>``,
forwarded to every task by the batch script in ``slurm/``), and ends it with SIGTERM then SIGKILL after
``KillWait``. A signal handler may only set a flag: the training loop asks :meth:`StopRequest.check` at each
step boundary, which all-reduces the flag (MAX) so that every rank stops after the *same* step, even when
only some ranks got the signal or their clocks disagree about the budget. The loop then saves a checkpoint,
and rank 0 requeues the SLURM job (``scontrol requeue``): the same job id comes back, the trainer resumes
from that checkpoint and keeps the same W&B run (its id is in the checkpoint).

On any restart (requeue, ``torchrun --max-restarts``, a manual rerun), :func:`steps_lost` says how many
steps had been logged after the checkpoint the run resumed from: the work the failure cost.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import torch

from pretrain.callbacks import Callback, StepOutput

if TYPE_CHECKING:
    from pretrain.trainer import Trainer

log = logging.getLogger(__name__)

# USR2: what submitit (the Hydra SLURM launcher) asks SLURM to send before the time limit.
STOP_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM)
# Seconds a SIGTERMed process may take to reach a step boundary and save before it exits anyway (below SLURM's
# default KillWait and torchrun's shutdown wait, both 30 s).
TERM_GRACE_S = 25.0


def _exit_after_grace(signum: int, grace: float) -> None:
    os.write(2, f"[pretrain] no step boundary {grace:.0f} s after SIGTERM (blocked?): exiting\n".encode())
    os._exit(128 + signum)


class StopRequest:
    """Collects stop reasons (signals, wall-clock budget) on this rank; :meth:`check` agrees across ranks.

    ``max_wall_time_s`` counts from the construction of this object (the start of the process's training
    work); ``None`` or ``0`` means no budget. Handlers are installed only from the main thread (Python allows
    no other) and restored by :meth:`close`.
    """

    def __init__(self, max_wall_time_s: float | None = None, signals: tuple[signal.Signals, ...] = STOP_SIGNALS,
                 term_grace_s: float = TERM_GRACE_S):
        self.t0 = time.monotonic()
        self.budget = float(max_wall_time_s) if max_wall_time_s else None
        self.received: signal.Signals | None = None
        self.term_grace_s = term_grace_s
        self._term_timer: threading.Timer | None = None
        self._previous: dict[signal.Signals, object] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in signals:
                self._previous[sig] = signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        sig = signal.Signals(signum)
        if sig == signal.SIGTERM and self._term_timer is not None:
            os._exit(128 + signum)  # a second SIGTERM: stop now
        if self.received is None:
            self.received = sig
            # logging from a handler may deadlock on the handler's own lock: write directly
            os.write(2, f"[pretrain] received {sig.name}: checkpoint at the next step boundary\n".encode())
        if sig == signal.SIGTERM:
            # SIGTERM is also how torchrun stops the survivors of a dead rank, which may be blocked in a
            # collective and never reach a step boundary: if the stop has not happened within the grace
            # period, end the process as SIGTERM would have (the last complete checkpoint stays in force).
            self._term_timer = threading.Timer(self.term_grace_s, _exit_after_grace, (signum, self.term_grace_s))
            self._term_timer.daemon = True
            self._term_timer.start()

    def local_reason(self) -> str | None:
        if self.received is not None:
            return self.received.name
        if self.budget is not None and time.monotonic() - self.t0 >= self.budget:
            return "wall_time"
        return None

    def check(self, device: torch.device) -> str | None:
        """Collective (every rank calls it at the same step): the stop reason of any rank, else None."""
        reason = self.local_reason()
        code = {None: 0, "wall_time": 1}.get(reason, 2)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            t = torch.tensor([code], dtype=torch.int32, device=device)
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
            code = int(t.item())
        if code == 0:
            return None
        if reason is not None:
            return reason
        return "wall_time" if code == 1 else "signal (on another rank)"

    def close(self) -> None:
        if self._term_timer is not None:
            self._term_timer.cancel()
        for sig, prev in self._previous.items():
            signal.signal(sig, prev)
        self._previous.clear()


class StopOnRequest(Callback):
    """The stop request as a Trainer component: after every step but the last, all ranks agree whether to
    stop (a collective); the Checkpointer then saves and the loop ends after that same step."""

    order = 40

    def __init__(self, request: StopRequest):
        self.request = request

    def on_step_end(self, trainer: "Trainer", out: StepOutput) -> None:
        reason = self.request.check(trainer.device) if out.step < trainer.max_steps else None
        if reason:
            trainer.request_stop(reason, requeue=True)


def slurm_job_id() -> str | None:
    """The id to requeue: an array task's own id when it is one, else the job's."""
    if os.environ.get("SLURM_ARRAY_JOB_ID") and os.environ.get("SLURM_ARRAY_TASK_ID"):
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


def requeue() -> bool:
    """``scontrol requeue`` this SLURM job (rank 0, after the checkpoint is complete). False outside SLURM or
    when SLURM refuses (e.g. the job is already being requeued because SLURM itself sent the SIGTERM)."""
    job = slurm_job_id()
    if not job:
        return False
    scontrol = shutil.which("scontrol")
    if scontrol is None:
        log.warning("SLURM job %s but no scontrol on PATH: cannot requeue; resubmit to resume", job)
        return False
    proc = subprocess.run([scontrol, "requeue", job], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        log.warning("scontrol requeue %s failed (%s): %s", job, proc.returncode, (proc.stderr or proc.stdout).strip())
        return False
    log.info("requeued SLURM job %s: it resumes from the checkpoint when it starts again", job)
    return True


def steps_lost(metrics_path: Path, resumed_step: int) -> tuple[int, int]:
    """(steps logged after ``resumed_step``, last logged step) from ``metrics.jsonl`` before it is truncated.

    With ``trainer.log_interval=1`` this is exactly the number of optimizer steps redone; with a larger
    interval it is a lower bound (steps between the last log line and the failure were never logged).
    """
    if not metrics_path.exists():
        return 0, resumed_step
    last = resumed_step
    steps: set[int] = set()
    for line in metrics_path.read_text().splitlines():
        try:
            step = int(json.loads(line).get("step", 0))
        except (ValueError, json.JSONDecodeError, AttributeError):
            continue  # a line cut by the crash
        if step > resumed_step:
            steps.add(step)
            last = max(last, step)
    return len(steps), last


def restart_info() -> dict[str, int | str]:
    """What kind of restart this process is (for the log and the summary)."""
    info: dict[str, int | str] = {}
    if os.environ.get("SLURM_RESTART_COUNT"):
        info["slurm_restart_count"] = int(os.environ["SLURM_RESTART_COUNT"])
    if os.environ.get("TORCHELASTIC_RESTART_COUNT"):
        info["torchelastic_restart_count"] = int(os.environ["TORCHELASTIC_RESTART_COUNT"])
    return info


# Test hook: "RANK:STEP:SECONDS" makes that rank sleep before that step (in the first torchrun attempt only), so
# a test can watch a collective time out after parallel.timeout_s, or kill the sleeping rank at a known step.
_HANG_ENV = "PRETRAIN_TEST_HANG"


def maybe_hang(step: int, rank: int) -> None:
    spec = os.environ.get(_HANG_ENV)
    if not spec or int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0) > 0:
        return  # first attempt only: the restarted workers must get past it
    hang_rank, hang_step, seconds = spec.split(":")
    if int(hang_rank) == rank and int(hang_step) == step:
        log.warning("%s: rank %d sleeps %s s before step %d", _HANG_ENV, rank, seconds, step)
        time.sleep(float(seconds))


def is_collective_timeout(exc: BaseException) -> bool:
    """A collective that waited longer than the process group's timeout (gloo and NCCL word it differently)."""
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("timed out" in text or "timeout" in text or "watchdog" in text)
