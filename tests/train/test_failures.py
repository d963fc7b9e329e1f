"""Failures: a killed rank under torchrun --max-restarts, a hung collective, preemption signals, the budget."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO, TINY, _free_port, losses_by_step, run_train
from pretrain import preemption


# ------------------------------------------------------------------------------------------ unit level
def test_a_signal_becomes_a_stop_request_and_handlers_are_restored():
    before = signal.getsignal(signal.SIGUSR1)
    stop = preemption.StopRequest()
    try:
        assert stop.check(torch.device("cpu")) is None
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stop.check(torch.device("cpu")) == "SIGUSR1"
    finally:
        stop.close()
    assert signal.getsignal(signal.SIGUSR1) is before


def test_a_process_blocked_after_sigterm_still_exits_after_the_grace_period():
    code = ("import os, signal, time\nfrom pretrain.preemption import StopRequest\n"
            "s = StopRequest(term_grace_s=0.5)\nos.kill(os.getpid(), signal.SIGTERM)\ntime.sleep(60)\n")
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM and time.time() - t0 < 30, proc.stderr
    assert "no step boundary 0 s after SIGTERM" in proc.stderr or "after SIGTERM (blocked?)" in proc.stderr


def test_wall_clock_budget_is_a_stop_reason():
    stop = preemption.StopRequest(max_wall_time_s=0.01, signals=())
    time.sleep(0.02)
    assert stop.check(torch.device("cpu")) == "wall_time"
    assert preemption.StopRequest(max_wall_time_s=None, signals=()).check(torch.device("cpu")) is None


def test_steps_lost_counts_steps_logged_after_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"step": s, "loss": 1.0}) for s in range(1, 9)] + [json.dumps({"step": 8, "val_loss": 1})]
    path.write_text("\n".join(lines) + '\n{"step": 9, "lo')  # the last line cut by the crash
    assert preemption.steps_lost(path, 5) == (3, 8)
    assert preemption.steps_lost(tmp_path / "none.jsonl", 5) == (0, 5)


def test_requeue_outside_slurm_does_nothing(monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    assert preemption.requeue() is False


# ----------------------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_budget_stop_saves_a_checkpoint_and_ends_cleanly(e2e_run):
    budget = e2e_run("gpt_budget_stop")  # TINY, max_steps=6, max_wall_time_s=0.000001 (tests/e2e.py)
    run_dir, out = budget.dir, budget.outputs[-1]
    assert "stopping after step 1 of 6 (wall_time)" in out.stdout
    assert "stopped=wall_time" in out.stdout and "requeued" not in out.stdout  # not a SLURM job: no requeue
    assert (run_dir / "checkpoints" / "latest").read_text() == "step_000001"
    assert (run_dir / "checkpoints" / "step_000001" / "COMPLETE").exists()


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def _rank_of(pid: int) -> int | None:
    try:
        env = dict(kv.split("=", 1) for kv in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in kv)
    except OSError:
        return None
    return int(env["RANK"]) if "RANK" in env else None


@pytest.mark.slow
def test_killed_rank_under_max_restarts_resumes_from_the_last_checkpoint(tmp_path, train_env):
    run_dir = tmp_path / "run"
    # rank 1 stalls before step 8 (first attempt only): the test kills it there, with a checkpoint at step 5
    env = dict(train_env, PRETRAIN_TEST_HANG="1:8:120")
    # c10d rendezvous, as slurm/train.sbatch launches: a restart is a new rendezvous round
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--rdzv_backend=c10d",
           f"--rdzv_endpoint=127.0.0.1:{_free_port()}", "--max-restarts=1", "-m", "pretrain.train",
           *TINY, f"run_dir={run_dir}", "trainer.max_steps=12", "checkpoint.interval=5"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        deadline = time.time() + 240
        while 7 not in (losses_by_step(run_dir) if (run_dir / "metrics.jsonl").exists() else {}):
            assert proc.poll() is None and time.time() < deadline, "the run never reached step 7"
            time.sleep(0.2)
        victims = [c for c in _children(proc.pid) if _rank_of(c) == 1]
        assert len(victims) == 1, victims
        os.kill(victims[0], signal.SIGKILL)
        out = proc.communicate(timeout=300)[0]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, out[-5000:]
    assert "resumed from" in out and "at step 5" in out, out[-5000:]
    assert "restart: 2 steps lost (logged up to step 7 before it, resuming at step 5)" in out
    assert "torchelastic_restart_count=1" in out
    assert sorted(losses_by_step(run_dir)) == list(range(1, 13))
    assert (run_dir / "checkpoints" / "latest").read_text() == "step_000012"


@pytest.mark.slow
def test_a_hung_rank_ends_the_job_with_a_clear_error_after_the_timeout(tmp_path, train_env):
    env = dict(train_env, PRETRAIN_TEST_HANG="1:3:15")
    t0 = time.time()
    out = run_train([*TINY, f"run_dir={tmp_path / 'run'}", "trainer.max_steps=6", "parallel.timeout_s=4"], env,
                    nproc=2, check=False, timeout=300)
    assert out.returncode != 0
    err = out.stderr
    assert "distributed communication failed" in err and "Timed out" in err, err[-4000:]
    assert "after parallel.timeout_s=4 s instead of blocking forever" in err
    assert time.time() - t0 < 200
