"""The accelerate engine against DeepSpeed on 2 processes (gloo): DDP gives ZeRO-0's per-step losses, FSDP2 those of
ZeRO-3 and resumes from its sharded DCP checkpoint. The runs are in tests/e2e.py (ACCEL); one-process checks (exact
resume, the guard's skip, DeepSpeed -> accelerate -> DeepSpeed, export) in test_accelerate.py."""

from __future__ import annotations

import json

import pytest

from e2e import ACCEL_STEPS, GRAD_NORM_REL, assert_same_steps, train_records

pytestmark = pytest.mark.slow


def test_ddp_gives_zero0_losses(e2e_run):
    """Steps 1-10 under accelerate DDP are DeepSpeed ZeRO-0's (gpt_dp2_zero0, same seed, data and LR curve) within
    1e-5, gradient norms within 1e-3, on the same batches."""
    ref = train_records(e2e_run("gpt_dp2_zero0").dir)[:ACCEL_STEPS]
    run = e2e_run("accel_ddp_dp2")
    got = train_records(run.dir)
    worst = assert_same_steps(ref, got, 1e-5, GRAD_NORM_REL)
    print(f"accelerate DDP vs ZeRO-0: max relative loss difference {worst:.3g}")
    config = json.loads((run.dir / "accelerate.json").read_text())
    assert (config["strategy"], config["distributed_type"], config["mixed_precision"]) == ("ddp", "MULTI_CPU", "fp32")
    assert "accelerate DDP: distributed type MULTI_CPU" in run.outputs[0].stdout
    assert (run.dir / "checkpoints" / f"step_{ACCEL_STEPS:06d}" / "COMPLETE").exists()
    assert {"loss", "grad_norm", "lr", "loss_scale", "tokens_per_s", "mfu", "batch_checksum"} <= set(got[0])


def test_fsdp2_gives_zero3_losses_and_resumes_from_its_sharded_checkpoint(e2e_run):
    """FSDP2 on 2 ranks with full sharding to step 5, then resumed from that DCP checkpoint (each rank saved its
    shard) with no sharding (replicated on a 2 x 1 mesh; DCP reshards) to 10: every step is DeepSpeed ZeRO-3's
    (fp32, same seed, data and LR curve) within 1e-5."""
    ref = train_records(e2e_run("gpt_dp2_zero3_fp32").dir)
    run = e2e_run("accel_fsdp2_dp2")
    worst = assert_same_steps(ref, train_records(run.dir), 1e-5, GRAD_NORM_REL)
    print(f"accelerate FSDP2 vs ZeRO-3: max relative loss difference {worst:.3g}")
    first, resumed = run.outputs
    # what actually ran (accelerate's own FSDP plugin is ignored on CPU: we shard with torch's fully_shard)
    assert "accelerate FSDP2: 3 fully_shard units, sharding=full, mesh {'dp_shard': 2}" in first.stdout
    assert "resumed from" in resumed.stdout and "at step 5" in resumed.stdout
    assert "sharding=none, mesh {'dp_replicate': 2, 'dp_shard': 1}" in resumed.stdout
    tag = run.dir / "checkpoints" / "step_000005"
    listed = json.loads((tag / "files.json").read_text())["files"]
    assert {"dcp/.metadata", "dcp/__0_0.distcp", "dcp/__1_0.distcp", "universal/pp00_tp00.pt"} <= set(listed)
    assert json.loads((tag / "trainer_state.json").read_text())["engine"] == "accelerate"
