"""Checkpoint faults at unit level, no training: pickled code, damaged files, ``latest`` garbage, failed
writes, kill -9 at every point of a save. Checkpoints are written by pretrain.checkpoint.save through a
stand-in engine that writes and reads its files the way DeepSpeed does."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO
from pretrain import checkpoint as ckpt
from pretrain import checkpoint_files as files
from pretrain.core import safe_load
from pretrain.core.errors import CheckpointError, ConfigError

from .ckpt_helpers import MODEL, OPTIM, FailingEngine, FakeEngine, craft, relist, save_steps


@pytest.fixture
def three(tmp_path) -> Path:
    """A checkpoint folder with complete checkpoints at steps 1, 2, 3 (latest: 3)."""
    ckpt_dir = tmp_path / "checkpoints"
    save_steps(ckpt_dir, [1, 2, 3])
    return ckpt_dir


def draws() -> tuple:
    return random.random(), random.gauss(0, 1), np.random.rand(), np.random.randn(), torch.rand(2).tolist()


# ------------------------------------------------------------------------------------------ pickled code
def test_rng_states_round_trip_bitwise_as_plain_tensors(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    random.gauss(0, 1), np.random.randn()  # leave a cached Gaussian in both generators
    path = tmp_path / "rng_state_rank0.pt"
    torch.save(ckpt.plain_rng_state(ckpt.rng_state()), path)
    expected = draws()
    assert torch.serialization.get_unsafe_globals_in_checkpoint(path) == []  # nothing to allow: plain types
    ckpt.set_rng_state(ckpt.load_rng_state(path))
    assert draws() == expected


def test_rng_files_of_the_old_format_still_load(tmp_path):
    random.seed(4), np.random.seed(5), torch.manual_seed(6)
    path = tmp_path / "rng_state_rank0.pt"
    torch.save(ckpt.rng_state(), path)  # tuples and a NumPy array, as saves before this change wrote them
    expected = draws()
    ckpt.set_rng_state(ckpt.load_rng_state(path))
    assert draws() == expected


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy-format"])
def test_a_crafted_rng_file_is_refused_and_runs_nothing(tmp_path, legacy):
    path, marker = tmp_path / "rng_state_rank0.pt", tmp_path / "PWNED"
    craft(path, marker, legacy)
    with pytest.raises(CheckpointError, match=f"refusing to load {path}.*posix.system.*nothing in it was run"):
        ckpt.load_rng_state(path)
    assert not marker.exists()


@pytest.mark.parametrize("name", [MODEL, OPTIM])
@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy-format"])
def test_deepspeeds_loader_runs_weights_only_and_refuses_a_crafted_file(three, name, legacy):
    """engine.load_checkpoint calls torch.load(weights_only=False); checkpoint.load forces weights_only."""
    marker = three.parent / "PWNED"
    craft(three / "step_000003" / name, marker, legacy)
    with pytest.raises(CheckpointError, match=f"refusing to load {three / 'step_000003' / name}"):
        ckpt.load(FakeEngine(), three, "step_000003", rank=0, world_size=1)
    assert not marker.exists()
    assert torch.load.__module__ == "torch.serialization"  # the guard is gone after the block
    assert "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ


@pytest.mark.parametrize("name", [MODEL, "rng_state_rank0.pt"])
def test_resume_refuses_a_checkpoint_holding_pickled_code_before_anything_is_built(three, name):
    """Even with a file list rewritten to match, the opcode scan refuses it: a refusal, not a fallback."""
    marker = three.parent / "PWNED"
    craft(three / "step_000003" / name, marker)
    relist(three / "step_000003")
    for mode in ("auto", str(three / "step_000003")):
        with pytest.raises(CheckpointError, match=f"refusing to load {three / 'step_000003' / name}.*posix.system"):
            ckpt.resolve_resume(mode, three)
    assert not marker.exists()


def test_layout_free_copy_and_export_load_weights_only(tmp_path):
    from pretrain import export
    from pretrain.parallel import reshard

    tag_dir, marker = tmp_path / "step_000001", tmp_path / "PWNED"
    (tag_dir / "universal").mkdir(parents=True)
    craft(tag_dir / "universal" / "pp00_tp00.pt", marker)
    with pytest.raises(CheckpointError, match=f"refusing to load {tag_dir / 'universal' / 'pp00_tp00.pt'}"):
        reshard.full_state_dict(tag_dir)
    (tag_dir / "universal" / "pp00_tp00.pt").unlink()
    craft(tag_dir / MODEL, marker)
    with pytest.raises(CheckpointError, match=f"refusing to load {tag_dir / MODEL}"):
        export.consolidated_state_dict(export.Source(tmp_path, "step_000001", {"zero_stage": 0}))
    assert not marker.exists()


# ------------------------------------------------------------------------------------------ damaged files
def _damage(tag_dir: Path, kind: str) -> Path:
    """Damage one file of ``tag_dir`` the way disks, copies and crashes do; returns the file."""
    if kind == "truncated":
        f = tag_dir / MODEL
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    elif kind == "missing":
        f = tag_dir / OPTIM
        f.unlink()
    elif kind == "garbage":  # same size, random bytes
        f = tag_dir / "rng_state_rank0.pt"
        f.write_bytes(os.urandom(f.stat().st_size))
    elif kind == "bit flip":
        f = tag_dir / MODEL
        data = bytearray(f.read_bytes())
        data[len(data) // 2] ^= 0x01
        f.write_bytes(bytes(data))
    elif kind == "state edited":
        f = tag_dir / ckpt.STATE
        f.write_text(f.read_text().replace('"step": 3', '"step": 30'))
    elif kind == "file list garbage":
        f = tag_dir / files.FILE_LIST
        f.write_bytes(b"\x00\xff" * 10)
    else:
        raise ValueError(kind)
    return f


KINDS = ["truncated", "missing", "garbage", "bit flip", "state edited", "file list garbage"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_damaged_newest_checkpoint_falls_back_to_the_newest_intact_one(three, kind, caplog):
    bad = _damage(three / "step_000003", kind)
    choice = ckpt.choose_resume("auto", three)
    assert (choice.tag, choice.steps_lost, [t for t, _ in choice.damaged]) == ("step_000002", 1, ["step_000003"])
    assert str(bad) in choice.damaged[0][1]
    assert f"checkpoint {three / 'step_000003'} is damaged: {bad}" in caplog.text
    assert "falling back to the intact checkpoint" in caplog.text and "1 steps lost" in caplog.text
    assert ckpt.resolve_resume("auto", three) == (three, "step_000002")
    assert ckpt.find_resume_tag(three) == "step_000002"  # export's choice too
    engine = FakeEngine()
    state, _ = ckpt.load(engine, three, "step_000002", rank=0, world_size=1)
    assert state["step"] == 2 and engine.weight[0] == 2


@pytest.mark.parametrize("kind", ["truncated", "missing", "garbage"])
def test_an_explicit_resume_of_a_damaged_checkpoint_names_the_file(three, kind):
    bad = _damage(three / "step_000003", kind)
    with pytest.raises(CheckpointError, match=f"checkpoint.resume={three / 'step_000003'}: the checkpoint is "
                                              f"damaged: {bad}"):
        ckpt.resolve_resume(str(three / "step_000003"), three)
    assert ckpt.resolve_resume(str(three / "step_000002"), three) == (three, "step_000002")


def test_every_checkpoint_damaged_is_an_error_not_a_fresh_start(three):
    bad = [_damage(three / t, "truncated") for t in ckpt.complete_tags(three)]
    with pytest.raises(CheckpointError) as e:
        ckpt.resolve_resume("auto", three)
    assert all(str(b) in str(e.value) for b in bad) and "start over with a new run_dir" in str(e.value)


@pytest.mark.parametrize("content", [random.Random(64).randbytes(64), b"\xff\xfe\x00garbage", b"", b"../../etc",
                                     b"step_000099", "step_000003\n".encode("utf-16")], ids=repr)
def test_latest_holding_any_bytes_is_handled(three, content, caplog):
    (three / "latest").write_bytes(content)
    assert ckpt.resolve_resume("auto", three) == (three, "step_000003")
    assert f"{three / 'latest'}" in caplog.text and "looking for the newest complete checkpoint" in caplog.text


def test_latest_as_a_folder_is_handled(three):
    (three / "latest").unlink()
    (three / "latest").mkdir()
    assert ckpt.resolve_resume("auto", three) == (three, "step_000003")


def test_a_checkpoint_written_before_file_lists_still_resumes(three):
    tag_dir = three / "step_000003"
    (tag_dir / files.FILE_LIST).unlink()
    rng = tag_dir / "rng_state_rank0.pt"
    torch.save(ckpt.load_rng_state(rng), rng)  # the old RNG format too
    assert ckpt.resolve_resume("auto", three) == (three, "step_000003")
    state, rng_state = ckpt.load(FakeEngine(), three, "step_000003", rank=0, world_size=1)
    assert state["step"] == 3 and isinstance(rng_state["numpy"][1], np.ndarray)


def test_the_file_list_covers_every_file_the_save_wrote(three):
    body = json.loads((three / "step_000003" / files.FILE_LIST).read_text())
    assert sorted(body["files"]) == sorted([MODEL, OPTIM, "rng_state_rank0.pt", ckpt.STATE])
    assert body["total_bytes"] == sum(e["size"] for e in body["files"].values())
    assert files.verify(three / "step_000003") is None


def test_verify_by_size_trusts_sizes_and_checksum_verify_catches_a_flipped_byte(three):
    """checkpoint.verify=size (huge checkpoints on shared file systems) skips re-reading the files: a flipped
    byte passes it, while a truncation does not; the default, checksum, catches both."""
    tag = three / "step_000003"
    model = tag / MODEL
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    assert files.verify(tag, "size") is None
    assert "does not match its checksum" in files.verify(tag, "checksum")
    assert ckpt.resolve_resume("auto", three, verify="size") == (three, "step_000003")
    model.write_bytes(bytes(data[:-10]))
    assert "truncated" in files.verify(tag, "size")
    with pytest.raises(CheckpointError, match="checkpoint.verify='sha'"):
        files.verify(tag, "sha")


# ------------------------------------------------------------------------------------------ rotation
def test_rotation_keeps_the_newest_intact_checkpoints_of_this_run(tmp_path):
    """keep_last counts the checkpoints up to the one just completed: after a fallback from a damaged step 3,
    the new steps replace the old ones without touching the intact checkpoint the run resumed from early."""
    ckpt_dir = tmp_path / "checkpoints"
    save_steps(ckpt_dir, [1, 2, 3], keep_last=2)
    assert ckpt.complete_tags(ckpt_dir) == ["step_000002", "step_000003"]
    _damage(ckpt_dir / "step_000003", "truncated")
    assert ckpt.resolve_resume("auto", ckpt_dir)[1] == "step_000002"
    save_steps(ckpt_dir, [3], keep_last=2)  # the resumed run saves step 3 again: the damaged one is replaced
    assert ckpt.complete_tags(ckpt_dir) == ["step_000002", "step_000003"]
    assert files.verify(ckpt_dir / "step_000003") is None
    # a run resumed on purpose from step 1 saves steps 1 and 2 again: the later step 3 stays until replaced
    save_steps(ckpt_dir, [1], keep_last=1)
    assert ckpt.complete_tags(ckpt_dir) == ["step_000001", "step_000002", "step_000003"]
    save_steps(ckpt_dir, [2], keep_last=1)
    assert ckpt.complete_tags(ckpt_dir) == ["step_000002", "step_000003"]


def test_a_failed_write_names_the_path_removes_the_partial_folder_and_keeps_the_previous_one(three):
    with pytest.raises(CheckpointError) as e:
        ckpt.save(FailingEngine(4), three, 4, {"step": 4}, rank=0, keep_last=1)
    msg = str(e.value)
    assert f"cannot write {three / 'step_000004' / 'blocked0' / OPTIM}" in msg, msg
    assert "step_000003 stays the checkpoint to resume from" in msg
    assert not (three / "step_000004").exists()
    assert (three / "latest").read_text() == "step_000003"
    assert ckpt.complete_tags(three) == ["step_000001", "step_000002", "step_000003"]  # keep_last=1 pruned nothing
    assert torch.save.__module__ == "torch.serialization"


def test_free_space_is_checked_against_the_last_checkpoint_before_writing(three, monkeypatch):
    size = files.checkpoint_bytes(three / "step_000003")
    real = files.shutil.disk_usage
    monkeypatch.setattr(files.shutil, "disk_usage", lambda p: real(p)._replace(free=size // 2))
    written = []
    monkeypatch.setattr(FakeEngine, "save_checkpoint", lambda self, *a, **k: written.append(a))
    with pytest.raises(CheckpointError) as e:
        ckpt.save(FakeEngine(4), three, 4, {"step": 4}, rank=0, keep_last=1)
    expected = (f"no space left on device writing {three / 'step_000004'} (needs ~{files._mb(size)} MB, "
                f"{files._mb(size // 2)} MB free)")
    assert str(e.value).startswith(expected), str(e.value)
    assert written == [] and not (three / "step_000004").exists()
    assert (three / "latest").read_text() == "step_000003"


def test_a_full_disk_reads_as_no_space_left():
    err = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4096 vs 4000")
    assert files.write_error(err, "/tmp/x.pt", 5 * 10**6).startswith("no space left on device writing /tmp/x.pt "
                                                                      "(needs ~5.00 MB, ")
    err = OSError(28, "No space left on device", "/tmp/y.json")
    assert files.write_error(err, "/tmp/other", 10**6).startswith("no space left on device writing /tmp/y.json")
    err = PermissionError(13, "Permission denied", "/tmp/z.pt")
    assert files.write_error(err, "/tmp/z.pt", 10**6) == "cannot write /tmp/z.pt: Permission denied"


def test_a_full_disk_during_a_write_on_a_real_tmpfs(small_tmpfs):
    ckpt_dir = small_tmpfs(2 << 20) / "checkpoints"
    save_steps(ckpt_dir, [1], numel=100_000)  # ~0.8 MB + RNG states: fits
    with pytest.raises(CheckpointError) as e:
        ckpt.save(FakeEngine(2, numel=400_000), ckpt_dir, 2, {"step": 2}, rank=0, keep_last=1)  # ~3.2 MB: not
    msg = str(e.value)
    assert msg.startswith(f"no space left on device writing {ckpt_dir / 'step_000002'}/"), msg
    assert "MB free)" in msg and "step_000001 stays the checkpoint to resume from" in msg
    assert not (ckpt_dir / "step_000002").exists() and (ckpt_dir / "latest").read_text() == "step_000001"
    assert ckpt.resolve_resume("auto", ckpt_dir) == (ckpt_dir, "step_000001")


# ------------------------------------------------------------------------------------------ kill -9
SAVER = """
import sys
sys.path.insert(0, sys.argv[2])
from pathlib import Path
from ckpt_helpers import save_steps
save_steps(Path(sys.argv[1]), [3])
"""


@pytest.mark.parametrize("point, resumes_from", [("start", "step_000002"), ("shards", "step_000002"),
                                                 ("files", "step_000002"), ("complete", "step_000002"),
                                                 ("latest", "step_000003")])
def test_kill_9_at_every_point_of_a_save_leaves_a_checkpoint_to_resume_from(tmp_path, point, resumes_from):
    ckpt_dir = tmp_path / "checkpoints"
    save_steps(ckpt_dir, [1, 2])
    env = dict(os.environ, PRETRAIN_TEST_SLOW_SAVE_S="60", PRETRAIN_TEST_SLOW_SAVE_AT=point)
    proc = subprocess.Popen([sys.executable, "-c", SAVER, str(ckpt_dir), str(Path(__file__).parent)], cwd=REPO,
                            env=env, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stderr:
            if f"checkpoint save paused at {point}" in line:
                break
        else:
            pytest.fail(f"the save ended without pausing at {point} (exit {proc.wait()})")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    choice = ckpt.choose_resume("auto", ckpt_dir)
    assert (choice.tag, choice.damaged) == (resumes_from, [])
    assert files.verify(ckpt_dir / choice.tag) is None
    save_steps(ckpt_dir, [3])  # the rerun's save of the same step replaces whatever the kill left
    assert (ckpt_dir / "latest").read_text() == "step_000003" and files.verify(ckpt_dir / "step_000003") is None


def test_resume_never_still_refuses_a_folder_with_checkpoints(three):
    with pytest.raises(ConfigError, match="checkpoint.resume=never"):
        ckpt.resolve_resume("never", three)


def test_unsafe_globals_reads_opcodes_only(tmp_path):
    marker = tmp_path / "PWNED"
    craft(tmp_path / "x.pt", marker)
    assert safe_load.unsafe_globals(tmp_path / "x.pt") == ["posix.system"]
    assert not marker.exists()


TWO_RANKS = """
import sys
from pathlib import Path
import torch.distributed as dist
sys.path.insert(0, sys.argv[2])
from ckpt_helpers import FailingEngine, FakeEngine
from pretrain import checkpoint as ckpt
from pretrain.core.errors import CheckpointError

dist.init_process_group("gloo")
rank, ckpt_dir = dist.get_rank(), Path(sys.argv[1])
ckpt.save(FakeEngine(1, rank=rank), ckpt_dir, 1, {"step": 1, "world_size": 2}, rank, keep_last=1)
try:  # rank 1's write fails inside the engine's save; rank 0's succeeds
    ckpt.save((FailingEngine if rank == 1 else FakeEngine)(2, rank=rank), ckpt_dir, 2, {"step": 2}, rank, keep_last=1)
    print(f"rank {rank}: saved", flush=True)
except CheckpointError as e:
    print(f"rank {rank}: {e}", flush=True)
dist.barrier()
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_a_write_error_on_one_rank_stops_every_rank_with_one_message_and_no_hang(tmp_path):
    """Each rank hashes the files it wrote; the ranks agree on the outcome in one collective, so a failure on
    rank 1 is reported on rank 0 too (naming rank 1's path) instead of rank 0 completing a broken checkpoint
    or waiting in a barrier."""
    from conftest import _free_port

    ckpt_dir, script = tmp_path / "checkpoints", tmp_path / "two_ranks.py"
    script.write_text(TWO_RANKS)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", str(script), str(ckpt_dir), str(Path(__file__).parent)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("RANK", None)
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:])
    bad = ckpt_dir / "step_000002" / "blocked1" / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    for rank in (0, 1):
        assert f"rank {rank}: cannot write {bad}" in proc.stdout and "(rank 1)" in proc.stdout, proc.stdout
    assert ": saved" not in proc.stdout
    listed = json.loads((ckpt_dir / "step_000001" / files.FILE_LIST).read_text())["files"]
    assert sorted(listed) == sorted([MODEL, OPTIM, "zero_pp_rank_1_mp_rank_00_optim_states.pt", "rng_state_rank0.pt",
                                     "rng_state_rank1.pt", ckpt.STATE])
    assert ckpt.complete_tags(ckpt_dir) == ["step_000001"] and not (ckpt_dir / "step_000002").exists()
    assert (ckpt_dir / "latest").read_text() == "step_000001" and files.verify(ckpt_dir / "step_000001") is None
