"""Checkpoint faults end to end: the trainer as users run it, on copies of one short reference run.

One reference run (6 steps, a checkpoint after every step) gives every case its checkpoints and the losses of
an uninterrupted run; each case damages a copy and resumes it. A fallback must reproduce the reference's
losses exactly; a refusal must be one line, exit code 2, before the model is built.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import torch

from conftest import REPO, TINY, losses_by_step, make_train_env, run_train, train_cmd
from pretrain import checkpoint as ckpt
from pretrain import checkpoint_files as files

from .ckpt_helpers import craft, relist

pytestmark = pytest.mark.slow

STEPS = 6
COMMON = [*TINY, "checkpoint.interval=1", "checkpoint.keep_last=100", f"optim.sched.decay_steps={STEPS}"]


@pytest.fixture(scope="module")
def env(cache_dir) -> dict[str, str]:
    return make_train_env(cache_dir)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, env) -> tuple[Path, dict[int, float]]:
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    run_train([*COMMON, f"run_dir={run_dir}", f"trainer.max_steps={STEPS}"], env)
    losses = losses_by_step(run_dir)
    assert sorted(losses) == list(range(1, STEPS + 1))
    return run_dir, losses


def copy_run(reference, dst: Path, keep_up_to: int = STEPS) -> Path:
    """A copy of the reference run with its checkpoints up to step ``keep_up_to`` and no metrics yet."""
    run_dir = dst / "run"
    shutil.copytree(reference[0], run_dir)
    (run_dir / "metrics.jsonl").unlink()
    for tag in ckpt.complete_tags(run_dir / "checkpoints"):
        if int(tag.split("_")[1]) > keep_up_to:
            shutil.rmtree(run_dir / "checkpoints" / tag)
    (run_dir / "checkpoints" / "latest").write_text(ckpt.tag_for(keep_up_to))
    return run_dir


def resume(run_dir: Path, env, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
    return run_train([*COMMON, f"run_dir={run_dir}", f"trainer.max_steps={STEPS}", *extra], env, check=check)


def refused(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-3000:])
    for f in fragments:
        assert f in proc.stderr, (f, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr
    return proc.stderr


def test_damaged_newest_checkpoints_fall_back_to_the_newest_intact_one_with_the_same_losses(tmp_path, reference,
                                                                                              env):
    """latest holds binary bytes; step 6 has a truncated model file, step 5 lost its RNG file, step 4's
    layout-free copy is random bytes. Step 3 predates file lists (none, RNG states in the old format): the
    run resumes there, names every damaged file, logs the 3 steps lost, and trains steps 4-6 exactly as the
    uninterrupted run did."""
    run_dir = copy_run(reference, tmp_path)
    ckpts = run_dir / "checkpoints"
    (ckpts / "latest").write_bytes(b"\x89\xfe\x00\xffstep\x07")
    truncated = ckpts / "step_000006" / "mp_rank_00_model_states.pt"
    truncated.write_bytes(truncated.read_bytes()[:1000])
    missing = ckpts / "step_000005" / "rng_state_rank0.pt"
    missing.unlink()
    garbage = ckpts / "step_000004" / "universal" / "pp00_tp00.pt"
    garbage.write_bytes(os.urandom(garbage.stat().st_size))
    legacy = ckpts / "step_000003"
    (legacy / files.FILE_LIST).unlink()
    torch.save(ckpt.load_rng_state(legacy / "rng_state_rank0.pt"), legacy / "rng_state_rank0.pt")

    out = resume(run_dir, env).stdout
    assert "not a checkpoint tag" in out and str(ckpts / "latest") in out
    for path in (truncated, missing, garbage):
        assert f"is damaged: {path}" in out, (path, out[-4000:])
    assert "falling back to the intact checkpoint" in out and "3 steps lost" in out
    assert f"resumed from {legacy} at step 3" in out
    losses = losses_by_step(run_dir)
    assert losses == {s: loss for s, loss in reference[1].items() if s > 3}  # bitwise, steps 4-6
    assert (ckpts / "latest").read_text() == "step_000006" and files.verify(ckpts / "step_000006") is None


def test_an_explicit_resume_of_a_damaged_checkpoint_is_refused_naming_the_file(tmp_path, reference, env):
    run_dir = copy_run(reference, tmp_path)
    bad = run_dir / "checkpoints" / "step_000006" / "trainer_state.json"
    text = bad.read_text()
    assert '"step": 6,' in text
    bad.write_text(text.replace('"step": 6,', '"step": 7,'))  # same size, another checksum
    proc = resume(run_dir, env, f"checkpoint.resume={bad.parent}", check=False)
    refused(proc, f"checkpoint.resume={bad.parent}: the checkpoint is damaged: {bad} does not match its checksum")
    assert "parameters (" not in proc.stdout  # refused before the model was built


@pytest.mark.parametrize("name", ["rng_state_rank0.pt", "mp_rank_00_model_states.pt"])
def test_a_crafted_pickle_is_refused_and_runs_nothing(tmp_path, reference, env, name):
    """The file list rewritten to match (an attacker writes both): still refused, by the opcode scan."""
    run_dir = copy_run(reference, tmp_path)
    marker = tmp_path / "PWNED"
    target = run_dir / "checkpoints" / "step_000006" / name
    craft(target, marker)
    relist(target.parent)
    proc = resume(run_dir, env, check=False)
    refused(proc, f"refusing to load {target}", "posix.system", "nothing in it was run")
    assert not marker.exists()


def test_kill_9_after_complete_before_latest_resumes_with_the_same_losses(tmp_path, reference, env):
    """The save of step 5 is killed after COMPLETE and before ``latest`` moved: the rerun resumes from step 4
    (what ``latest`` names), saves step 5 over the killed one, and its losses are the uninterrupted run's."""
    run_dir = copy_run(reference, tmp_path, keep_up_to=4)
    ckpts = run_dir / "checkpoints"
    slow = dict(env, PRETRAIN_TEST_SLOW_SAVE_S="120", PRETRAIN_TEST_SLOW_SAVE_AT="complete")
    proc = subprocess.Popen(train_cmd([*COMMON, f"run_dir={run_dir}", f"trainer.max_steps={STEPS}"]), cwd=REPO,
                            env=slow, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        for line in proc.stderr:  # the pause lasts 120 s; without it the run ends and the loop with it
            if "checkpoint save paused at complete" in line:
                break
        else:
            pytest.fail(f"the run ended before pausing in a save (exit {proc.wait()})")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert (ckpts / "step_000005" / "COMPLETE").exists() and (ckpts / "latest").read_text() == "step_000004"

    out = resume(run_dir, env).stdout
    assert f"resumed from {ckpts / 'step_000004'} at step 4" in out
    assert losses_by_step(run_dir) == {s: loss for s, loss in reference[1].items() if s > 4}
    assert (ckpts / "latest").read_text() == "step_000006"
    assert all(files.verify(ckpts / t) is None for t in ("step_000005", "step_000006"))


def test_a_full_disk_stops_the_run_with_a_clear_message_and_keeps_the_last_checkpoint(tmp_path, reference, env,
                                                                                       small_tmpfs):
    """On a disk with room for 1.5 checkpoints: step 1 is saved, step 2 is refused by the free-space check
    before anything is written. On a disk with room for half a checkpoint: the first save fails mid-write."""
    size = files.checkpoint_bytes(reference[0] / "checkpoints" / "step_000001")
    roomy = small_tmpfs(int(size * 1.5)) / "checkpoints"
    proc = run_train([*COMMON, f"run_dir={tmp_path / 'a'}", "trainer.max_steps=3", f"checkpoint.dir={roomy}"],
                     env, check=False)
    size = files.checkpoint_bytes(roomy / "step_000001")  # its trainer_state.json names another run_dir
    err = refused(proc, f"no space left on device writing {roomy / 'step_000002'} (needs ~{files._mb(size)} MB",
                  "step_000001 stays the checkpoint to resume from")
    assert "MB free)" in err
    assert ckpt.complete_tags(roomy) == ["step_000001"] and not (roomy / "step_000002").exists()
    assert (roomy / "latest").read_text() == "step_000001" and files.verify(roomy / "step_000001") is None

    tight = small_tmpfs(size // 2) / "checkpoints"
    proc = run_train([*COMMON, f"run_dir={tmp_path / 'b'}", "trainer.max_steps=2", f"checkpoint.dir={tight}"],
                     env, check=False)
    refused(proc, f"no space left on device writing {tight / 'step_000001'}/", "there is no earlier checkpoint")
    assert not (tight / "step_000001").exists() and not (tight / "latest").exists()


def test_the_reference_checkpoints_carry_verified_file_lists(reference):
    ckpts = reference[0] / "checkpoints"
    for tag in ckpt.complete_tags(ckpts):
        body = json.loads((ckpts / tag / files.FILE_LIST).read_text())
        assert {"mp_rank_00_model_states.pt", "rng_state_rank0.pt", "trainer_state.json",
                "universal/pp00_tp00.pt"} <= set(body["files"])
        assert files.verify(ckpts / tag) is None
