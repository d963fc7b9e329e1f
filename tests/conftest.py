"""Shared test helpers: run the trainer as users do (python -m / torchrun) in subprocesses; the end-to-end runs of
the suite are in one table (tests/e2e.py), trained once per session through the ``e2e_run`` fixture."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from filelock import FileLock

from ports import free_port
from pretrain.jit_ops import is_built, prepare_extensions_dir

REPO = Path(__file__).resolve().parents[1]

# Every process of the session (this one, the trainers, torchrun's workers, everyone's test runs in this
# environment) builds and finds DeepSpeed's JIT ops (CPU Adam) in the environment's own folder, built
# once per environment; a lock left there by a killed build is cleared instead of hanging the next run.
prepare_extensions_dir()


# The longest test files first (each about a minute or more of launches on two cores). pytest-xdist hands the
# files to its workers in collection order, a file at a time, so a long file collected last would run alone at the
# end while the other worker sits idle; started first, the short files fill in around them.
LONGEST_FIRST = (
    "train/test_zoo_e2e.py", "train/test_moe.py", "train/test_slurm.py", "train/test_mixture.py",
    "train/test_checkpoint_e2e.py", "train/test_context_parallel.py", "train/test_pipeline_e2e.py",
    "train/test_accelerate_e2e.py", "train/test_failures.py", "train/test_parallelize.py", "train/test_plan.py",
    # its ZeRO-3 offload case needs CPU Adam, whose build (minutes, started at collection) gets these files' time
    "train/test_train_e2e.py", "train/test_parallel_equality.py",
    "faults/test_checkpoint_runs.py", "train/test_guard.py", "pipeline/test_ray.py", "pipeline/test_run.py",
    "train/test_compile.py", "train/test_distill.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    tests_dir = Path(__file__).resolve().parent

    def key(item) -> int:
        try:
            rel = Path(str(item.path)).resolve().relative_to(tests_dir).as_posix()
        except ValueError:
            return len(rank)
        return rank.get(rel, len(rank))

    items.sort(key=key)  # stable: the order within a file, and of the other files, stays as collected


def pytest_collection_finish(session):
    """Start building the ops that the selected tests mark ``jit_op(name)`` (CPU Adam takes minutes) in the
    background now, at the lowest CPU priority, so that the build uses the cores the tests before them leave
    idle; a test that gets there first waits for it, as for any build. The builder runs in its own session, so an
    interrupted test run does not kill it halfway (which would leave a lock behind)."""
    ops = sorted({m.args[0] for item in session.items for m in item.iter_markers("jit_op")})
    missing = [op for op in ops if not is_built(op)]
    first_worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0") == "gw0"  # every xdist worker collects the suite
    if missing and first_worker and not session.config.option.collectonly:
        env = dict(os.environ, DS_ACCELERATOR="cpu")
        log = Path(os.environ["TORCH_EXTENSIONS_DIR"]) / "prebuild.log"
        with open(log, "ab") as out:
            subprocess.Popen([sys.executable, "-m", "pretrain.jit_ops", *missing], cwd=REPO, env=env, stdout=out,
                             stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=lambda: os.nice(19))


def _free_port() -> int:
    return free_port()  # tests/ports.py: a port no other process is handed before the launch binds it


def shared_tmp(tmp_path_factory) -> Path:
    """The test session's own temp folder, the same for every pytest-xdist worker (``make test`` runs the suite
    on two): work that several test files need, such as the end-to-end runs, is done once there, by whichever
    worker needs it first, under :func:`once_lock`. Without xdist it is the session's base temp folder."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def once_lock(path: Path) -> FileLock:
    """A lock beside ``path`` that serialises the workers producing it: the first does the work, the others wait
    and then read the result."""
    return FileLock(str(path) + ".lock")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One PRETRAIN_CACHE per test session: the built-in sample data is tokenized once."""
    return tmp_path_factory.mktemp("pretrain-cache")


# What torchrun (or pretrain.distributed.ensure_launcher_env, for a world of one) puts in the environment.
LAUNCHER_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(autouse=True)
def _restore_launcher_env():
    """A test that runs the Trainer in this process leaves the launcher variables behind, and with them a
    MASTER_PORT whose store may still listen here: every later training subprocess would then fail with
    EADDRINUSE. Put the variables back as they were."""
    saved = {var: os.environ.get(var) for var in LAUNCHER_VARS}
    yield
    for var, value in saved.items():
        if value is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = value


def make_train_env(cache_dir: Path) -> dict[str, str]:
    """The environment of a training subprocess (also for module-scoped fixtures, which cannot use train_env)."""
    env = dict(os.environ)
    env.update(
        PRETRAIN_CACHE=str(cache_dir), WANDB_MODE=env.get("WANDB_MODE", "disabled"), OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false", DS_ACCELERATOR="cpu",
    )
    for var in LAUNCHER_VARS:  # a subprocess is its own world (an in-process Trainer of a test set these)
        env.pop(var, None)
    return env


@pytest.fixture
def compose_cfg():
    """``compose_cfg(*overrides)``: conf/train.yaml composed with our typed schema, as the trainer does."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from pretrain.config import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        yield lambda *ov: compose("train", overrides=list(ov))
    GlobalHydra.instance().clear()


@pytest.fixture
def train_env(cache_dir) -> dict[str, str]:
    return make_train_env(cache_dir)


@pytest.fixture(scope="session")
def e2e_run(tmp_path_factory, cache_dir):
    """``e2e_run(name)`` -> the :class:`e2e.Trained` run ``name`` of ``e2e.RUNS``, trained on first use and then
    shared by every test of the session (its directory: ``.dir``; each launch's output: ``.outputs``)."""
    from e2e import Runner

    root = shared_tmp(tmp_path_factory) / "e2e"
    root.mkdir(exist_ok=True)
    return Runner(root, make_train_env(cache_dir), shared=True)


def train_cmd(overrides: list[str], nproc: int = 1) -> list[str]:
    if nproc == 1:
        return [sys.executable, "-m", "pretrain.train", *overrides]
    return [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}", "-m", "pretrain.train", *overrides,
    ]


def run_train(overrides: list[str], env: dict[str, str], nproc: int = 1, check: bool = True,
              timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(train_cmd(overrides, nproc), cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"training failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def small_bpe_tokenizer(path: Path) -> Path:
    """A 300-token BPE tokenizer.json trained on 40 documents of the built-in sample corpus, written to ``path``
    (the Hugging Face export and import tests)."""
    from pretrain.core.tokenizer import TokenizerSpec, save_tokenizer, train_tokenizer
    from pretrain.data.sample import corpus_files, read_corpus

    texts = read_corpus(corpus_files()[0])[:40]
    save_tokenizer(train_tokenizer(TokenizerSpec(kind="bpe", vocab_size=300), lambda: iter(texts)), path)
    return path


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def losses_by_step(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if "loss" in r}


# Small and fast: 2 layers x 64, seq 64, micro batch 4 -> a CPU step takes milliseconds.
TINY = [
    "experiment=gpt_tiny", "trainer.micro_batch_size=4", "trainer.log_interval=1", "trainer.eval_interval=0",
    "optim.sched.warmup_steps=2",
]


def read_wandb_offline_run(run_dir: Path) -> dict:
    """Read back what W&B wrote in an offline run: ``{"run_id", "history": [{key: value}], "config"}``.

    wandb >= 0.30 writes ``run-<id>.wandb`` from its Go core and ships no Python reader, so this reads the
    file's framing (LevelDB log format: a 7-byte ``:W&B`` header, 32 KiB blocks, records with a 7-byte
    header of crc32, length, type) and parses each record with wandb's own protobuf schema.
    """
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    files = sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert files, f"no offline W&B run under {run_dir / 'wandb'}"
    data = files[-1].read_bytes()
    assert data[:4] == b":W&B", data[:8]
    pos, block, out, pending = 7, 32768, {"run_id": None, "history": [], "config": {}}, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack_from("<IHB", data, pos)
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            break
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind not in (1, 4):  # FIRST/MIDDLE: the record continues in the next block
            continue
        rec = pb.Record()
        rec.ParseFromString(pending)
        which = rec.WhichOneof("record_type")
        if which == "run":
            out["run_id"] = rec.run.run_id
            out["config"].update({i.key: json.loads(i.value_json) for i in rec.run.config.update})
        elif which == "history":
            out["history"].append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item})
    return out


def structured_cfg(**over):
    """The default TrainConfig with ``over`` set (``parallel__zero_stage=2`` sets parallel.zero_stage), for unit
    tests of the checks that need no Hydra composition."""
    from omegaconf import OmegaConf

    from pretrain.config import TrainConfig

    c = OmegaConf.structured(TrainConfig)
    c.run_dir = "/tmp/x"
    for key, value in over.items():
        OmegaConf.update(c, key.replace("__", "."), value)
    return c
