"""SLURM: the submit helpers' scripts, and real jobs on a one-node cluster on localhost (tests/slurm_cluster.py).

The cluster tests install Debian's slurmctld/slurmd/munge when missing (root + apt), start the daemons for
this module and stop them by PID at the end; without root or apt they skip with that reason.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import slurm_cluster
from conftest import REPO, losses_by_step, read_metrics

HELPER = [sys.executable, "-m", "pretrain.launch.slurm"]
PIPELINE = [sys.executable, "-m", "data_pipelines.executor.slurm"]


def _run(cmd: list[str], env: dict[str, str] | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


# ------------------------------------------------------------------------------ rendering (no cluster)
def test_dry_run_for_4_nodes_of_8_gpus_has_the_allocation_and_the_launch():
    out = _run([*HELPER, "--dry-run", "experiment=gpt_125m", "trainer.micro_batch_size=8", "slurm.nodes=4",
                "slurm.gpus_per_node=8",
                "slurm.partition=gpu", "slurm.account=proj1", "slurm.time=48:00:00", "run_dir=/scratch/r1"])
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    for expected in ("#SBATCH --nodes=4", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=8",
                     "#SBATCH --partition=gpu", "#SBATCH --account=proj1", "#SBATCH --time=48:00:00",
                     "#SBATCH --signal=B:USR1@120", "#SBATCH --requeue", "#SBATCH --output=/scratch/r1/slurm/%j.out",
                     "export NPROC_PER_NODE=8", "export LAUNCHER=torchrun",
                     "set -- experiment=gpt_125m trainer.micro_batch_size=8 run_dir=/scratch/r1"):
        assert expected in lines, (expected, out.stdout[:2000])
    assert lines[0] == "#!/bin/bash"
    assert "--rdzv_backend=c10d" in out.stdout and 'scontrol show hostnames "$SLURM_JOB_NODELIST"' in out.stdout
    assert "TORCH_NCCL_ASYNC_ERROR_HANDLING" in out.stdout
    subprocess.run(["bash", "-n"], input=out.stdout, text=True, check=True)  # the rendered script parses

    # one task per GPU: 8 srun tasks per node, ranks from SLURM_PROCID
    srun = _run([*HELPER, "--dry-run", "experiment=gpt_125m", "trainer.micro_batch_size=8", "slurm.nodes=4",
                 "slurm.launcher=srun"])
    assert "#SBATCH --ntasks-per-node=8" in srun.stdout.splitlines() and "export LAUNCHER=srun" in srun.stdout


@pytest.mark.parametrize("override,fragment", [
    ("slurm.nodez=4", "slurm.nodez"),
    ("slurm.time=tomorrow", "slurm.time='tomorrow'"),
    ("slurm.procs_per_node=16", "exceeds slurm.gpus_per_node=8"),
    ("slurm.launcher=mpirun", "slurm.launcher='mpirun'"),
    ("slurm=huge", "slurm=huge: no conf/slurm/huge.yaml"),
    ("trainer.max_stepz=3", "trainer.max_stepz"),
    # the layout of the whole allocation (1 node x 8 GPUs here), before anything is submitted
    ("parallel.tensor_model_parallel_size=3", "world size 8 is not divisible by parallel.tensor_model_parallel_size"),
    ("slurm.gpu=tpu9", "slurm.gpu='tpu9'"),
])
def test_bad_helper_input_is_one_clear_line(override, fragment):
    out = _run([*HELPER, "--dry-run", override])
    assert out.returncode == 2 and fragment in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_a_cpu_job_and_bad_input_are_checked_without_importing_torch():
    """Rendering a CPU job and refusing bad input take the layout and value checks only: torch (about 2 s of
    imports per submission) is loaded only by the GPU planner and by the job itself."""
    code = ("import sys; from pretrain.launch import slurm; "
            "print('RC', slurm.main(sys.argv[1:]), 'torch' in sys.modules)")
    for args, rc in ((["--dry-run", "slurm=cpu", "experiment=gpt_tiny"], 0), (["--dry-run", "slurm.time=tomorrow"], 2),
                     (["--dry-run", "parallel.tensor_model_parallel_size=3"], 2)):
        out = _run([sys.executable, "-c", code, *args])
        assert out.stdout.splitlines()[-1] == f"RC {rc} False", (args, out.stdout[-500:], out.stderr[-2000:])


def test_slurm_task_env_maps_one_task_per_gpu_ranks():
    from pretrain.distributed import first_slurm_host, slurm_task_env

    env = slurm_task_env({"SLURM_PROCID": "9", "SLURM_LOCALID": "1", "SLURM_NTASKS": "32", "SLURM_JOB_ID": "123",
                          "SLURM_TASKS_PER_NODE": "8(x4)", "SLURM_JOB_NODELIST": "gpu[03-06]"})
    assert env == {"RANK": "9", "LOCAL_RANK": "1", "WORLD_SIZE": "32", "LOCAL_WORLD_SIZE": "8",
                   "MASTER_ADDR": "gpu03", "MASTER_PORT": "20123"}
    assert first_slurm_host("node7,node9") == "node7"


@pytest.fixture(scope="module")
def jsonl_corpus(tmp_path_factory) -> Path:
    import random

    d = tmp_path_factory.mktemp("corpus")
    rng = random.Random(0)
    words = "the of and model data train token shard cluster node signal checkpoint resume job array stage".split()
    for f in range(2):
        with open(d / f"d{f}.jsonl", "w") as fh:
            for i in range(30):
                text = " ".join(" ".join(rng.choice(words) for _ in range(12)).capitalize() + "." for _ in range(8))
                fh.write(json.dumps({"text": f"Document {f}-{i}. {text}"}) + "\n")
    return d


def _pipeline_args(corpus: Path, out: Path) -> list[str]:
    return [f"output_dir={out}", "sources=none", f"+sources.docs={{kind: jsonl, paths: [{corpus}/*.jsonl]}}",
            "filters=none", "dedup=none", "tokenizer.vocab_size=512", "executor.part_size_mb=0.001",
            "slurm=cpu", "slurm.array=2", "slurm.cpus_per_task=1"]


def test_pipeline_plan_chains_arrays_and_skips_what_is_complete(tmp_path, jsonl_corpus):
    from data_pipelines.executor.slurm import render

    out = tmp_path / "data"
    args = _pipeline_args(jsonl_corpus, out)
    jobs, _, _ = render(args)
    assert [(j.name, j.shards) for j in jobs] == [
        ("read+documents", [0, 1]), ("tokenizer", None), ("tokenize", [0, 1]), ("report", None)]
    assert "#SBATCH --array=0-1" in jobs[0].text and "executor=slurm executor.num_shards=2" in jobs[0].text
    with_dedup, _, _ = render([a for a in args if a != "dedup=none"])
    assert [j.name for j in with_dedup] == ["read+signatures", "cluster", "documents", "tokenizer", "tokenize", "report"]

    # complete it locally, lose one part's token shard: only that shard's array task and the report are left
    proc = _run([sys.executable, "-m", "data_pipelines.run", *[a for a in args if not a.startswith("slurm")],
                 "executor.progress=false"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert render(args)[0] == []
    idx = sorted((out / "tokens" / "docs").glob("part-00001.*"))
    assert idx, sorted(p.name for p in (out / "tokens" / "docs").iterdir())
    for p in idx:
        p.unlink()
    assert [(j.name, j.shards) for j in render(args)[0]] == [("tokenize", [1]), ("report", None)]


# ----------------------------------------------------------------------------------- a real cluster
@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reason = slurm_cluster.unavailable_reason()
    if reason:
        pytest.skip(reason)
    slurm_cluster.install()
    # not under pytest's tmp dir: that is private to root, and munged runs as the munge user
    root = Path(tempfile.mkdtemp(prefix="pretrain-slurm-"))
    c = slurm_cluster.start(root)
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(c.conf)
    left: list[int] = []
    try:
        yield c
    finally:
        try:
            c.stop()
            left = c.leftover_pids()
        finally:
            shutil.rmtree(root, ignore_errors=True)
            if old is None:
                os.environ.pop("SLURM_CONF", None)
            else:
                os.environ["SLURM_CONF"] = old
    assert not left, f"processes of the test cluster outlived it: {left}"


def _wait_gone(cluster, job: str, timeout: float) -> None:
    deadline = time.time() + timeout
    while cluster.job_state(job) != "GONE":
        assert time.time() < deadline, f"job {job} still {cluster.job_state(job)} after {timeout}s"
        time.sleep(0.5)


# 100 steps (~8 s): the USR1 below must reach the training step before it ends, and on a loaded machine
# scancel -> slurmd -> batch shell -> step took ~3 s (a 40-step run once finished first)
STEPS = 100
TRAIN = ["slurm=cpu", "experiment=gpt_tiny", f"trainer.max_steps={STEPS}", "trainer.log_interval=1",
         "trainer.eval_interval=0", "trainer.micro_batch_size=4"]


@pytest.mark.slow
@pytest.mark.slurm
def test_training_job_with_sbatch_wait_and_a_requeue_mid_run(cluster, tmp_path, train_env):
    env = dict(train_env, **cluster.env)
    # 1. uninterrupted, through the helper with sbatch --wait
    ref = tmp_path / "ref"
    out = _run([*HELPER, "--wait", *TRAIN, f"run_dir={ref}"], env, timeout=300)
    assert out.returncode == 0, (out.stdout, out.stderr, *(p.read_text()[-3000:] for p in (ref / "slurm").glob("*.out")))
    job = out.stdout.split()[0]
    assert (ref / "slurm" / f"{job}.sbatch").is_file() and (ref / "slurm" / f"{job}.out").is_file()
    assert sorted(losses_by_step(ref)) == list(range(1, STEPS + 1))
    assert (ref / "checkpoints" / "latest").read_text() == f"step_{STEPS:06d}"
    assert (ref / "checkpoints" / f"step_{STEPS:06d}" / "COMPLETE").exists()
    assert json.loads((ref / "checkpoints" / f"step_{STEPS:06d}" / "trainer_state.json").read_text())["world_size"] == 2

    # 2. the same run, signalled mid-run as SLURM does before a time limit (USR1 to the batch shell)
    run = tmp_path / "requeued"
    out = _run([*HELPER, *TRAIN, f"run_dir={run}"], env)
    assert out.returncode == 0, out.stderr
    job = out.stdout.split()[0]
    deadline = time.time() + 180
    while not (run / "metrics.jsonl").exists() or len(read_metrics(run)) < 5:
        assert time.time() < deadline and cluster.job_state(job) != "GONE", "the job did not start training"
        time.sleep(0.2)
    cluster.run("scancel", "--batch", "--signal=USR1", job)
    _wait_gone(cluster, job, 240)
    log = (run / "slurm" / f"{job}.out").read_text()
    assert "batch script got SIGUSR1" in log and "restart 1" in log, log[-4000:]
    assert "requeued SLURM job" in log and "resumed from" in log, log[-4000:]
    stopped_at = int(log.split("stopping after step ")[1].split()[0])
    assert 5 <= stopped_at < STEPS
    assert f"0 steps lost (logged up to step {stopped_at} before it, resuming at step {stopped_at})" in log
    losses = losses_by_step(run)
    assert sorted(losses) == list(range(1, STEPS + 1))
    assert losses[STEPS] == losses_by_step(ref)[STEPS]
    assert (run / "checkpoints" / "latest").read_text() == f"step_{STEPS:06d}"


@pytest.mark.slow
@pytest.mark.slurm
def test_data_pipeline_as_chained_job_arrays(cluster, tmp_path, jsonl_corpus):
    out_dir = tmp_path / "data"
    env = dict(os.environ, **cluster.env)
    proc = _run([*PIPELINE, *_pipeline_args(jsonl_corpus, out_dir)], env)
    assert proc.returncode == 0, proc.stderr
    jobs = proc.stdout.split()
    assert len(jobs) == 4
    _wait_gone(cluster, jobs[-1], 180)
    logs = out_dir / "logs" / "slurm"
    assert (out_dir / "report.md").exists(), "\n".join(p.read_text()[-1500:] for p in sorted(logs.glob("*.out")))
    manifest = json.loads((out_dir / "manifest.json").read_text())
    assert manifest
    # two array tasks per per-part group, each with its own log; each did its own shard
    assert len(list(logs.glob(f"{jobs[0]}_*-read+documents.out"))) == 2
    assert sorted(p.name for p in (out_dir / "logs").glob("run-shard*.log")) == [
        "run-shard00000-of-00002.log", "run-shard00001-of-00002.log"]
    again = _run([*PIPELINE, *_pipeline_args(jsonl_corpus, out_dir)], env)
    assert again.returncode == 0 and again.stdout.strip() == "" and "nothing to submit" in again.stderr


@pytest.mark.slow
@pytest.mark.slurm
def test_hydra_submitit_sweep_runs_each_point_as_a_two_task_world(cluster, tmp_path, train_env):
    env = dict(train_env, **cluster.env)
    proc = _run([sys.executable, "-m", "pretrain.train", "--multirun", "hydra/launcher=slurm_cpu",
                 f"hydra.sweep.dir={tmp_path / 'sweep'}", "experiment=gpt_tiny", "trainer.max_steps=4",
                 "optim.sched.warmup_steps=2", "trainer.eval_interval=0", f"run_dir={tmp_path}/runs/${{hydra:job.num}}",
                 "optim.lr=1e-3,2e-3"], env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for i in (0, 1):
        log = (tmp_path / "runs" / str(i) / "train.log").read_text()
        assert "on 2 x cpu (gloo)" in log  # one process group of both SLURM tasks, from SLURM_PROCID/NTASKS
        assert (tmp_path / "runs" / str(i) / "checkpoints" / "latest").read_text() == "step_000004"
