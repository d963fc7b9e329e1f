"""End-to-end training runs as users launch them: torchrun with 2 processes on CPU (gloo)."""

from __future__ import annotations

import json

import pytest
import yaml

from conftest import TINY, losses_by_step, make_train_env, read_metrics, read_wandb_offline_run, run_train
from test_parallel_equality import GRAD_NORM_REL, assert_same_steps, train_records

pytestmark = pytest.mark.slow

REQUIRED_KEYS = {
    "step", "loss", "ppl", "lr", "grad_norm", "loss_scale", "step_time_s", "tokens_per_s", "tokens_per_s_per_device",
    "tflops_per_device", "mfu", "consumed_tokens", "consumed_samples", "peak_mem_gb", "batch_checksum",
}


# The GPT runs compared with one process: global batch 8 of micro-batches of 4, so one process accumulates 2
# micro-batches per step and 2 data-parallel ranks take 1 each, the same samples either way (the sampler reads
# the global order in strides). Dropout off: its masks differ per data-parallel rank by design.
GPT_STEPS = 30
GPT_COMMON = [*TINY, "trainer.global_batch_size=8", f"trainer.max_steps={GPT_STEPS}", "trainer.eval_interval=15",
              "model.hidden_dropout=0", "model.attention_dropout=0"]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, cache_dir):
    """The reference: ``GPT_COMMON`` in one process launched without torchrun (ZeRO-0, accumulation 2), run once
    and shared by every test here that compares a parallel layout with it."""
    run_dir = tmp_path_factory.mktemp("gpt-one-process") / "run"
    run_train([*GPT_COMMON, f"run_dir={run_dir}", "parallel=zero0"], make_train_env(cache_dir))
    return run_dir


@pytest.mark.parametrize(
    "preset, precision",
    [("zero0", "fp32"), ("zero1", "fp32"), ("zero2", "fp32"), ("zero3", "bf16"), ("zero3_offload", "fp32")],
)
def test_gpt_trains_with_every_zero_stage(tmp_path, train_env, one_process, preset, precision):
    """Every ZeRO stage, bf16 on one, and ZeRO-3 with optimizer and parameters offloaded to CPU memory
    (DeepSpeedCPUAdam: its C++ op is JIT-compiled on first use, a few minutes once per machine), on 2
    data-parallel ranks: in fp32 every step's loss is one process's (accumulating the same 2 micro-batches)
    within 1e-5 relative; in bf16 within 2e-2."""
    zero = int(preset[4])
    run_dir = tmp_path / "run"
    run_train([*GPT_COMMON, f"run_dir={run_dir}", f"parallel={preset}", f"trainer.precision={precision}"],
              train_env, nproc=2)
    records = read_metrics(run_dir)
    train = [r for r in records if "loss" in r]
    assert [r["step"] for r in train] == list(range(1, GPT_STEPS + 1))
    assert REQUIRED_KEYS <= set(train[0])
    assert all(r["grad_norm"] is not None and r["grad_norm"] > 0 for r in train)
    first, last = train[0]["loss"], train[-1]["loss"]
    assert last < first - 0.8, (first, last)  # ln(4096) = 8.3 at the start; clearly lower after 30 steps
    tolerances = (1e-5, GRAD_NORM_REL) if precision == "fp32" else (2e-2,)
    worst = assert_same_steps(train_records(one_process), train, *tolerances)
    print(f"{preset} {precision}: max relative loss difference to one process {worst:.3g}")
    # (validation reads eval_iters micro-batches per data-parallel rank: twice one process's samples, not compared)
    assert [r["step"] for r in records if "val_loss" in r] == [15, 30]
    assert train[-1]["consumed_samples"] == 30 * 8 and train[-1]["consumed_tokens"] == 30 * 8 * 64
    ds = json.loads((run_dir / "deepspeed.json").read_text())
    assert ds["zero_optimization"]["stage"] == zero
    assert ("offload_optimizer" in ds["zero_optimization"]) == preset.endswith("offload")
    assert ds["train_batch_size"] == 8 and ds["gradient_accumulation_steps"] == 1
    assert ds["bf16"]["enabled"] == (precision == "bf16")
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert cfg["parallel"]["zero_stage"] == zero and cfg["run_dir"] == str(run_dir)
    assert (run_dir / "checkpoints" / "latest").read_text() == "step_000030"
    assert (run_dir / "checkpoints" / "step_000030" / "COMPLETE").exists()


def test_llama_style_trains_with_accumulation(tmp_path, train_env):
    run_dir = tmp_path / "run"
    run_train(
        ["experiment=llama_tiny", f"run_dir={run_dir}", "trainer.micro_batch_size=2", "trainer.global_batch_size=8",
         "trainer.max_steps=30", "trainer.log_interval=1", "trainer.eval_interval=0", "parallel=zero2"],
        train_env, nproc=2,
    )
    ds = json.loads((run_dir / "deepspeed.json").read_text())
    assert ds["gradient_accumulation_steps"] == 2
    losses = losses_by_step(run_dir)
    assert losses[30] < losses[1] - 0.8


def test_resume_gives_the_same_losses_data_and_wandb_run(tmp_path, train_env):
    """20 steps straight vs 10 steps, stop, resume to 20: bitwise-equal losses (CPU, dropout on, so the
    RNG states must be restored too), the same batches, and one W&B run continued."""
    env = dict(train_env, WANDB_MODE="offline")
    common = [*TINY, "model.hidden_dropout=0.1", "model.attention_dropout=0.1", "optim.sched.decay_steps=20",
              "trainer.eval_interval=5", "parallel=zero1"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    run_train([*common, f"run_dir={straight}", "trainer.max_steps=20"], env, nproc=2)
    run_train([*common, f"run_dir={split}", "trainer.max_steps=10"], env, nproc=2)
    out = run_train([*common, f"run_dir={split}", "trainer.max_steps=20"], env, nproc=2)
    assert "resumed from" in out.stdout and "at step 10" in out.stdout

    a, b = read_metrics(straight), read_metrics(split)
    key = lambda recs, k: [(r["step"], r.get(k)) for r in recs]  # noqa: E731
    assert key(a, "loss") == key(b, "loss")  # exact equality, every step
    assert key(a, "batch_checksum") == key(b, "batch_checksum")
    assert key(a, "val_loss") == key(b, "val_loss")
    assert [r["step"] for r in b] == list(range(1, 21))  # no duplicated steps after the resume

    runs = sorted(split.glob("wandb/offline-run-*"))
    assert len(runs) == 2 and runs[0].name.split("-")[-1] == runs[1].name.split("-")[-1]
    first = read_wandb_offline_run(split)  # the resumed run's file: steps 11..20 under the same id
    assert first["run_id"] == runs[0].name.split("-")[-1]
    logged = {h["step"]: h["loss"] for h in first["history"] if h.get("loss") is not None}
    assert logged == {s: l for s, l in key(b, "loss") if s > 10}
    assert first["config"]["trainer"]["max_steps"] == 20  # the resolved config went to W&B


def test_resume_at_another_data_parallel_size_and_batch_continues_the_run(tmp_path, train_env, one_process):
    """A ZeRO-2 checkpoint of 2 data-parallel ranks resumes in one process (through its layout-free copy): the
    next steps are the uninterrupted run's, on the same batches. A later resume with a smaller global batch
    continues from the samples consumed so far, 4 per step instead of 8, and says the batch changed."""
    run_dir = tmp_path / "run"
    common = [*GPT_COMMON, f"run_dir={run_dir}", f"optim.sched.decay_steps={GPT_STEPS}"]  # the reference's LR curve
    run_train([*common, "trainer.max_steps=3", "parallel=zero2"], train_env, nproc=2)
    out = run_train([*common, "trainer.max_steps=6", "parallel=zero2"], train_env)
    assert "resuming through its layout-free copy" in out.stdout and "at step 3" in out.stdout
    ref = train_records(one_process)[:6]
    assert_same_steps(ref, train_records(run_dir), 1e-5, GRAD_NORM_REL)

    out = run_train([*common, "trainer.max_steps=8", "trainer.global_batch_size=4"], train_env)
    assert "the global batch changed since the checkpoint (8 -> 4 samples per step)" in out.stdout
    records = train_records(run_dir)
    assert [(r["step"], r["consumed_samples"]) for r in records[5:]] == [(6, 48), (7, 52), (8, 56)]


def test_single_process_launch_without_torchrun(one_process):
    """`python -m pretrain.train` on its own is a world of one (ZeRO-0: DeepSpeed's gradient all-reduce is
    switched off, there being nothing to reduce), here accumulating 2 micro-batches per step: the reference run."""
    losses = losses_by_step(one_process)
    assert sorted(losses) == list(range(1, GPT_STEPS + 1))
    assert losses[GPT_STEPS] < losses[1] - 0.8
    ds = json.loads((one_process / "deepspeed.json").read_text())
    assert (ds["train_batch_size"], ds["gradient_accumulation_steps"], ds["zero_optimization"]["stage"]) == (8, 2, 0)


def test_tensor_parallel_matches_one_process(tmp_path, train_env, one_process):
    """tp=2 (Megatron column/row-parallel layers, vocab-parallel embedding and loss) gives the per-step losses
    and gradient norms of one unsharded process, on the same batches."""
    tp2 = tmp_path / "tp2"
    run_train([*GPT_COMMON, f"run_dir={tp2}", "parallel.tensor_model_parallel_size=2"], train_env, nproc=2)
    a, b = read_metrics(one_process), read_metrics(tp2)
    worst = assert_same_steps(train_records(one_process), train_records(tp2), 1e-5, GRAD_NORM_REL)
    print(f"tp2: max relative loss difference to one process {worst:.3g}")
    for x, y in zip(train_records(one_process), train_records(tp2)):
        assert y["comm_tp_all_reduce_bytes"] > 0 and "comm_tp_all_reduce_bytes" not in x
    val = lambda recs: [(r["step"], r["val_loss"]) for r in recs if "val_loss" in r]  # noqa: E731
    assert [s for s, _ in val(b)] == [s for s, _ in val(a)] == [15, 30]  # one data-parallel rank: the same samples
    for (_, x), (_, y) in zip(val(a), val(b)):
        assert y == pytest.approx(x, rel=1e-5)
    assert json.loads((tp2 / "deepspeed.json").read_text())["gradient_accumulation_steps"] == 2
    state = json.loads((tp2 / "checkpoints" / f"step_{GPT_STEPS:06d}" / "trainer_state.json").read_text())
    assert state["tensor_parallel_size"] == 2
