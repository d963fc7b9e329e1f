"""End-to-end training runs as users launch them: torchrun with 2 processes on CPU (gloo)."""

from __future__ import annotations

import json

import pytest
import yaml

from conftest import losses_by_step, read_metrics, read_wandb_offline_run
from e2e import GPT_STEPS, GPT_ZERO, GRAD_NORM_REL, assert_same_steps, train_records

pytestmark = pytest.mark.slow

REQUIRED_KEYS = {
    "step", "loss", "ppl", "lr", "grad_norm", "loss_scale", "step_time_s", "tokens_per_s", "tokens_per_s_per_device",
    "tflops_per_device", "mfu", "consumed_tokens", "consumed_samples", "peak_mem_gb", "batch_checksum",
}

# The runs (tests/e2e.py): GPT_COMMON, 30 steps of global batch 8 in micro-batches of 4, dropout off, against the
# reference ``gpt_one_process`` (one process launched without torchrun, ZeRO-0, accumulating 2 micro-batches).


# ZeRO-3 offload steps with DeepSpeedCPUAdam, a C++ op built on first use (minutes; once per environment)
@pytest.mark.parametrize("preset, precision", [
    pytest.param(*p, marks=pytest.mark.jit_op("cpu_adam")) if p[0].endswith("offload") else p for p in GPT_ZERO])
def test_gpt_trains_with_every_zero_stage(e2e_run, preset, precision):
    """Every ZeRO stage, bf16 on one, and ZeRO-3 with optimizer and parameters offloaded to CPU memory
    (DeepSpeedCPUAdam: its C++ op is JIT-compiled on first use, a few minutes once per machine), on 2
    data-parallel ranks: in fp32 every step's loss is one process's (accumulating the same 2 micro-batches)
    within 1e-5 relative; in bf16 within 2e-2."""
    zero = int(preset[4])
    one_process, run_dir = e2e_run("gpt_one_process").dir, e2e_run(f"gpt_dp2_{preset}").dir
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


def test_llama_style_trains_with_accumulation(e2e_run):
    run_dir = e2e_run("llama_dp2_zero2_accum2").dir
    ds = json.loads((run_dir / "deepspeed.json").read_text())
    assert ds["gradient_accumulation_steps"] == 2
    losses = losses_by_step(run_dir)
    assert losses[30] < losses[1] - 0.8


def test_resume_gives_the_same_losses_data_and_wandb_run(e2e_run):
    """20 steps straight vs 10 steps, stop, resume to 20: bitwise-equal losses (CPU, dropout on, so the
    RNG states must be restored too), the same batches, and one W&B run continued."""
    straight = e2e_run("gpt_resume_straight").dir
    resumed = e2e_run("gpt_resume_split")
    split, out = resumed.dir, resumed.outputs[-1]
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
    assert logged == {s: loss for s, loss in key(b, "loss") if s > 10}
    assert first["config"]["trainer"]["max_steps"] == 20  # the resolved config went to W&B


def test_resume_at_another_data_parallel_size_and_batch_continues_the_run(e2e_run):
    """A ZeRO-2 checkpoint of 2 data-parallel ranks resumes in one process (through its layout-free copy): the
    next steps are the uninterrupted run's, on the same batches. A later resume with a smaller global batch
    continues from the samples consumed so far, 4 per step instead of 8, and says the batch changed."""
    one_process, resumed = e2e_run("gpt_one_process").dir, e2e_run("gpt_resume_reshaped")
    run_dir, (_, one_leg, smaller_batch_leg) = resumed.dir, resumed.outputs
    assert "resuming through its layout-free copy" in one_leg.stdout and "at step 3" in one_leg.stdout
    ref = train_records(one_process)[:6]
    # steps 1-6: those of the first two launches (steps 7 and 8, of the third, are checked below)
    assert_same_steps(ref, [r for r in train_records(run_dir) if r["step"] <= 6], 1e-5, GRAD_NORM_REL)

    assert "the global batch changed since the checkpoint (8 -> 4 samples per step)" in smaller_batch_leg.stdout
    records = train_records(run_dir)
    assert [(r["step"], r["consumed_samples"]) for r in records[5:]] == [(6, 48), (7, 52), (8, 56)]


def test_single_process_launch_without_torchrun(e2e_run):
    """`python -m pretrain.train` on its own is a world of one (ZeRO-0: DeepSpeed's gradient all-reduce is
    switched off, there being nothing to reduce), here accumulating 2 micro-batches per step: the reference run."""
    one_process = e2e_run("gpt_one_process").dir
    losses = losses_by_step(one_process)
    assert sorted(losses) == list(range(1, GPT_STEPS + 1))
    assert losses[GPT_STEPS] < losses[1] - 0.8
    ds = json.loads((one_process / "deepspeed.json").read_text())
    assert (ds["train_batch_size"], ds["gradient_accumulation_steps"], ds["zero_optimization"]["stage"]) == (8, 2, 0)


def test_tensor_parallel_matches_one_process(e2e_run):
    """tp=2 (Megatron column/row-parallel layers, vocab-parallel embedding and loss) gives the per-step losses
    and gradient norms of one unsharded process, on the same batches."""
    one_process, tp2 = e2e_run("gpt_one_process").dir, e2e_run("gpt_tp2").dir
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


def test_a_rank_ends_without_the_interpreter_teardown_and_keeps_its_output(tmp_path):
    """``exit_without_teardown``: the exit code given, and what was logged or printed last is flushed first (the
    multi-process launches of this file end through it)."""
    import subprocess
    import sys

    script = ("import logging, sys\nfrom pretrain.train import exit_without_teardown\n"
              f"logging.basicConfig(filename={str(tmp_path / 'log.txt')!r}, level=logging.INFO)\n"
              "logging.getLogger('pretrain').info('last line')\nprint('out', end='')\nsys.stderr.write('err')\n"
              "exit_without_teardown(3)\n")
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert (p.returncode, p.stdout, p.stderr[-3:]) == (3, "out", "err")
    assert "last line" in (tmp_path / "log.txt").read_text()
