"""Checkpoint safety and the bad-input messages of the trainer."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time

import pytest

from conftest import REPO, TINY, losses_by_step, run_train, train_cmd
from pretrain import checkpoint_files as files

pytestmark = pytest.mark.slow


def test_kill_9_during_a_save_leaves_the_previous_checkpoint_loadable(tmp_path, train_env):
    run_dir = tmp_path / "run"
    ckpts = run_dir / "checkpoints"
    common = [*TINY, f"run_dir={run_dir}", "checkpoint.interval=5", "optim.sched.decay_steps=10"]
    run_train([*common, "trainer.max_steps=5"], train_env, nproc=2)
    assert (ckpts / "latest").read_text() == "step_000005"

    # second leg: the save at step 10 stalls after its shards are written; kill -9 the whole job there
    env = dict(train_env, PRETRAIN_TEST_SLOW_SAVE_S="60")
    proc = subprocess.Popen(train_cmd([*common, "trainer.max_steps=10"], nproc=2), cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 180
        while not (ckpts / "step_000010" / "trainer_state.json").exists():
            assert proc.poll() is None and time.time() < deadline, "the run ended before reaching the save"
            time.sleep(0.2)
        time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert (ckpts / "step_000010").is_dir() and not (ckpts / "step_000010" / "COMPLETE").exists()
    assert (ckpts / "latest").read_text() == "step_000005"

    # the rerun resumes from step 5, ignores and clears the half-written step 10, and finishes
    out = run_train([*common, "trainer.max_steps=10"], train_env, nproc=2)
    assert "resumed from" in out.stdout and "at step 5" in out.stdout
    assert (ckpts / "latest").read_text() == "step_000010"
    assert (ckpts / "step_000010" / "COMPLETE").exists()
    assert sorted(losses_by_step(run_dir)) == list(range(1, 11))
    # both ranks' files are in the file list the save wrote before COMPLETE, and they verify
    listed = json.loads((ckpts / "step_000010" / files.FILE_LIST).read_text())["files"]
    assert {"rng_state_rank0.pt", "rng_state_rank1.pt", "trainer_state.json"} <= set(listed)
    assert files.verify(ckpts / "step_000010") is None


def test_keep_last_n_prunes_old_checkpoints(tmp_path, train_env):
    run_dir = tmp_path / "run"
    run_train([*TINY, f"run_dir={run_dir}", "trainer.max_steps=8", "checkpoint.interval=2", "checkpoint.keep_last=2"],
              train_env)
    tags = sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.is_dir())
    assert tags == ["step_000006", "step_000008"]


def _expect_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-3000:])
    err = proc.stderr
    for f in fragments:
        assert f in err, (f, err[-3000:])
    assert "Traceback" not in err
    assert "parameters (" not in proc.stdout  # stopped before the model/engine was built
    return err


@pytest.fixture
def sample_copy(tmp_path, cache_dir):
    from pretrain.data.sample import ensure_sample_data

    src = ensure_sample_data(cache_dir / "sample-for-corruption")
    dst = tmp_path / "data"
    shutil.copytree(src, dst)
    return dst


def test_corrupt_index_magic_names_the_file(tmp_path, train_env, sample_copy):
    idx = sample_copy / "tokens" / "code" / "part-00000.idx"
    data = bytearray(idx.read_bytes())
    data[:9] = b"NOTANIDX!"
    idx.write_bytes(bytes(data))
    proc = run_train([*TINY, f"run_dir={tmp_path / 'r'}", f"data.path={sample_copy}"], train_env, check=False)
    _expect_error(proc, str(idx), "magic")


def test_truncated_bin_names_the_file(tmp_path, train_env, sample_copy):
    binf = sample_copy / "tokens" / "prose" / "part-00000.bin"
    with open(binf, "r+b") as f:
        f.truncate(binf.stat().st_size // 2)
    proc = run_train([*TINY, f"run_dir={tmp_path / 'r'}", f"data.path={sample_copy}"], train_env, check=False)
    _expect_error(proc, str(binf), "truncated")


def test_missing_data_path_names_it(tmp_path, train_env):
    proc = run_train([*TINY, f"run_dir={tmp_path / 'r'}", f"data.path={tmp_path / 'nowhere'}"], train_env, check=False)
    _expect_error(proc, str(tmp_path / "nowhere"))


def test_tokenizer_larger_than_the_model_vocabulary(tmp_path, train_env):
    proc = run_train([*TINY, f"run_dir={tmp_path / 'r'}", "model.vocab_size=1000"], train_env, check=False)
    _expect_error(proc, "tokenizer.json", "4096", "model.vocab_size")


def test_impossible_batch_arithmetic(tmp_path, train_env):
    proc = run_train([*TINY, f"run_dir={tmp_path / 'r'}", "trainer.global_batch_size=6"], train_env, check=False)
    _expect_error(proc, "trainer.global_batch_size=6", "trainer.micro_batch_size")


def test_checkpoint_of_another_model_shape(tmp_path, train_env):
    run_dir = tmp_path / "run"
    run_train([*TINY, f"run_dir={run_dir}", "trainer.max_steps=2"], train_env)
    proc = run_train([*TINY, f"run_dir={run_dir}", "trainer.max_steps=4", "model.hidden_size=128"], train_env,
                     check=False)
    _expect_error(proc, str(run_dir / "checkpoints" / "step_000002"), "model.hidden_size: checkpoint 64, config 128")


def test_resume_at_another_data_parallel_size_without_a_layout_free_copy_is_refused(tmp_path, train_env):
    """DeepSpeed cannot re-partition ZeRO shards itself: without the layout-free copy (checkpoint.universal=false)
    a resume at another data-parallel size stops before any model is built and says what to do."""
    run_dir = tmp_path / "run"
    common = [*TINY, f"run_dir={run_dir}", "parallel=zero2", "checkpoint.universal=false"]
    run_train([*common, "trainer.max_steps=2"], train_env, nproc=2)
    proc = run_train([*common, "trainer.max_steps=4"], train_env, check=False)
    _expect_error(proc, "ZeRO-2 optimizer shards for 2 processes, this run has 1", "checkpoint.universal=true")


def test_unknown_key_appended_on_the_command_line(tmp_path, train_env):
    proc = run_train([*TINY, f"run_dir={tmp_path / 'r'}", "+trainer.max_stepz=3"], train_env, check=False)
    _expect_error(proc, "trainer.max_stepz")
