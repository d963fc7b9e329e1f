"""Training health (pretrain/guard.py): detection and escalation as units, rotation protection, and real runs with
injected faults: a NaN and a one-step spike skipped (against a clean run without those batches), a sustained spike
rolled back, the guard off stopping at a NaN, and (tests/e2e.py) the same skips on two ZeRO-2 ranks."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from pretrain.callbacks import Callback
from pretrain.guard import LOWER_LR, RECOVERED, RESTORE_LR, ROLLBACK, SKIP, Escalation, SpikeDetector
from tests.conftest import REPO, TINY, read_metrics

# ------------------------------------------------------------------------------------------------- units


def test_detector_flags_non_finite_values_at_once_and_spikes_after_the_warm_up():
    d = SpikeDetector("zscore", window=5, warmup_steps=3, zscore=6.0)
    assert d.check(float("nan")) == "non-finite loss (nan)"
    assert d.check(float("inf")).startswith("non-finite loss")
    assert d.check(3.0, grad_norm=float("nan")) == "non-finite gradient norm (nan)"
    assert d.check(100.0) is None  # no spike detection in the warm-up
    for x in (4.0, 4.1, 3.9):
        d.add(x)
    assert d.check(4.2) is None and d.check(3.0) is None  # noise, and a loss that falls
    reason = d.check(5.0)
    assert reason.startswith("loss spike: 5 is ") and "standard deviations above the mean 4" in reason
    d.add(4.0), d.add(4.0), d.add(4.0)  # a flat window: the 0.5% floor keeps a tiny rise from being a spike
    assert list(d.losses) == [4.1, 3.9, 4.0, 4.0, 4.0] and d.check(4.05) is None

    r = SpikeDetector("ratio", window=4, warmup_steps=2, ratio=2.0)
    for x in (3.0, 9.0, 3.0):
        r.add(x)
    assert r.check(5.9) is None and "2.00 x the median 3" in r.check(6.0 + 1e-9)
    off = SpikeDetector("off", window=4, warmup_steps=0)
    off.add(1.0), off.add(1.0)
    assert off.check(1e6) is None and off.check(float("nan")) is not None

    state = json.loads(json.dumps(d.state_dict()))  # JSON values: it goes into trainer_state.json
    again = SpikeDetector("zscore", window=5, warmup_steps=3)
    again.load_state_dict(state)
    assert list(again.losses) == list(d.losses) and again.seen == d.seen == 6


def test_escalation_skips_then_lowers_the_lr_then_rolls_back_and_closes_after_patience():
    e = Escalation(max_skips=1, lr_steps=3, patience=4)
    assert e.anomaly(10) == SKIP and e.open and e.open_since == 10
    assert e.healthy(11) == []
    assert e.anomaly(12) == LOWER_LR and e.lr_until == 15
    assert e.anomaly(13) == ROLLBACK and e.strikes == 3
    e.rolled_back(8)  # to the checkpoint of step 8: the ladder starts over, the episode stays open
    assert (e.rollbacks, e.strikes, e.lr_until, e.open) == (1, 0, 0, True)
    assert [e.healthy(s) for s in (9, 10, 11)] == [[], [], []]
    assert e.healthy(12) == [RECOVERED] and not e.open
    assert e.anomaly(30) == SKIP  # a new episode starts at the bottom of the ladder

    # the LR comes back after its period; the episode closes only then, `patience` steps after the last anomaly
    e = Escalation(max_skips=0, lr_steps=5, patience=2)
    assert e.anomaly(1) == LOWER_LR
    assert [e.healthy(s) for s in (2, 3, 4, 5)] == [[], [], [], []]
    assert e.healthy(6) == [RESTORE_LR, RECOVERED]

    # an update already applied (a spike seen after a pipeline-parallel step) cannot be skipped: lower the LR first
    e = Escalation(max_skips=2, lr_steps=5, patience=10)
    assert e.anomaly(4, can_skip=False) == LOWER_LR and e.anomaly(5) == ROLLBACK
    saved = json.loads(json.dumps(e.state_dict()))
    again = Escalation(max_skips=2, lr_steps=5, patience=10)
    again.load_state_dict(saved)
    assert again.state_dict() == e.state_dict()


def test_rotation_never_deletes_the_protected_checkpoint(tmp_path):
    from pretrain import checkpoint as ckpt

    for step in (2, 4, 6, 8):
        (tmp_path / ckpt.tag_for(step)).mkdir()
        (tmp_path / ckpt.tag_for(step) / ckpt.COMPLETE).write_text("x")
    ckpt.set_protected(tmp_path, "step_000002")
    assert ckpt.protected_tag(tmp_path) == "step_000002"
    ckpt._prune(tmp_path, keep_last=1, current="step_000008")
    assert ckpt.complete_tags(tmp_path) == ["step_000002", "step_000008"]
    ckpt.set_protected(tmp_path, None)  # the episode closed: the next rotation may take it
    assert ckpt.protected_tag(tmp_path) is None
    ckpt._prune(tmp_path, keep_last=1, current="step_000008")
    assert ckpt.complete_tags(tmp_path) == ["step_000008"]


def test_bad_guard_settings_are_refused_naming_each_key(compose_cfg, tmp_path):
    from pretrain.core.errors import ConfigError
    from pretrain.guard import Guard

    cfg = compose_cfg(*TINY, f"run_dir={tmp_path}", "trainer.guard.window=1", "trainer.guard.lr_factor=2",
                      "trainer.guard.inject.nan_at=[0]")
    with pytest.raises(ConfigError) as e:
        Guard(cfg.trainer.guard)
    msg = str(e.value)
    assert all(k in msg for k in ("trainer.guard.window=1", "trainer.guard.lr_factor=2", "trainer.guard.inject.nan_at"))


class _Engine:
    """What the guard asks of an engine, recorded."""

    def __init__(self):
        self.lr_scale, self.corruption, self.applied, self.norm = 1.0, None, True, 1.0

    def set_step_gate(self, gate):
        self.gate = gate

    def corrupt_next_step(self, factor, micro_batch=0):
        self.corruption = factor

    def set_lr_scale(self, scale):
        self.lr_scale = scale

    def grad_norm(self):
        return self.norm

    def update_applied(self):
        return self.applied


def _guard(tmp_path, pipelined=False, fp16=False, dp_rank=0, **keys):
    from types import SimpleNamespace

    import torch
    from omegaconf import OmegaConf

    from pretrain.config import GuardConfig
    from pretrain.guard import Guard

    g = OmegaConf.merge(OmegaConf.structured(GuardConfig), {"window": 3, "warmup_steps": 3, "patience": 2, **keys})
    guard = Guard(g, pipelined=pipelined, fp16=fp16)
    trainer = SimpleNamespace(engine=_Engine(), step=0, consumed_samples=0, dp_rank=dp_rank, device=torch.device("cpu"),
                              batch=SimpleNamespace(global_batch_size=8, grad_accum_steps=1), resume_tag=None,
                              dist=SimpleNamespace(world_size=1, is_main=False), run_dir=tmp_path, ckpt_dir=tmp_path)
    guard.attach(trainer)
    return guard, trainer


def _step(guard, trainer, loss: float, in_gate: bool = True, norm: float = 1.0) -> dict:
    """One step as the engine runs it: the gate inside the optimizer step (unless the backend skipped on its own),
    then the callback. Returns the step's record."""
    import torch

    from pretrain.callbacks import StepOutput

    guard.before_step(trainer)
    trainer.engine.norm = norm
    skipped = guard.gate(None if guard.pipelined else torch.tensor(loss), norm) if in_gate else False
    trainer.engine.applied = in_gate and not skipped
    trainer.step += 1
    trainer.consumed_samples += 8
    out = StepOutput(trainer.step, torch.tensor(loss), 1e-3, 0, 0.0)
    guard.on_step_end(trainer, out)
    return out.record


def test_guard_decides_in_the_gate_and_arms_injection_on_the_first_data_parallel_rank(tmp_path):
    guard, t = _guard(tmp_path, inject={"nan_at": [2]})
    assert _step(guard, t, 5.0) == {} and t.engine.corruption is None
    guard.before_step(t)
    assert math.isnan(t.engine.corruption)  # step 2's batch: its first micro-batch's loss x NaN
    other, t1 = _guard(tmp_path, dp_rank=1, inject={"nan_at": [2]})
    t1.step, t1.consumed_samples = 1, 8
    other.before_step(t1)
    assert t1.engine.corruption is None  # the step's first sample is on data-parallel rank 0
    for _ in range(3):
        _step(guard, t, 5.0)
    assert _step(guard, t, 50.0)["guard_action"] == SKIP and not t.engine.applied
    assert _step(guard, t, 50.0)["guard_action"] == LOWER_LR and t.engine.lr_scale == 0.1
    assert guard.state_dict()["escalation"]["lr_until"] == 26


def test_guard_with_pipeline_parallelism_skips_a_non_finite_norm_and_lowers_the_lr_for_a_spike(tmp_path):
    guard, t = _guard(tmp_path, pipelined=True)
    for _ in range(4):
        assert _step(guard, t, 5.0) == {}
    rec = _step(guard, t, 5.0, norm=float("nan"))  # decided in the gate, on the gradient norm alone
    assert rec["guard_action"] == SKIP and not t.engine.applied
    t.step += 10  # a new episode
    rec = _step(guard, t, 50.0)  # a finite spike arrives after its update: the ladder starts at lowering the LR
    assert rec["guard_action"] == LOWER_LR and t.engine.applied and t.engine.lr_scale == 0.1


def test_fp16_loss_scale_overflows_are_the_scalers_business(tmp_path):
    guard, t = _guard(tmp_path, fp16=True)
    assert _step(guard, t, 5.0, in_gate=False, norm=float("inf")) == {}  # DeepSpeed skipped: not an anomaly
    assert not guard.escalation.open
    bf16, t2 = _guard(tmp_path)
    rec = _step(bf16, t2, 5.0, in_gate=False, norm=float("inf"))  # elsewhere DeepSpeed's skip is one of ours
    assert rec["guard_action"] == SKIP and rec["guard_reason"] == "non-finite gradient norm (inf)"


# ------------------------------------------------------------------------------------------------- runs
# One process, global batch 8 in 2 micro-batches of 4 (the layout of tests/e2e.py's GPT runs, so that the two-rank
# run there matches these), dropout off, an LR schedule whose length does not depend on max_steps. Spike detection
# after 5 healthy steps; an episode closes after 3.
STEPS = 16
COMMON = (*TINY, "trainer.global_batch_size=8", "model.hidden_dropout=0", "model.attention_dropout=0",
          "optim.sched.decay_steps=30", "checkpoint.universal=false")  # DeepSpeed's files only: quicker saves
NO_SAVE = "checkpoint.save_at_end=false"
GUARD = ("trainer.guard.window=5", "trainer.guard.warmup_steps=5", "trainer.guard.patience=3")
NAN_AT, SPIKE_AT = 7, 12


class DropBatches(Callback):
    """The reference: a clean run that never sees the batches of the given steps (numbered from the start of the
    data), as a run that skipped them has consumed them without training."""

    order = 60

    def __init__(self, steps):
        self.steps = set(steps)

    def on_step_end(self, trainer, out) -> None:
        gbs = trainer.batch.global_batch_size
        while trainer.consumed_samples // gbs + 1 in self.steps:
            trainer.consumed_samples += gbs
            trainer.seek_data(trainer.consumed_samples)


def _train(run_dir: Path, *overrides: str, callbacks=(), trainer_out: list | None = None) -> dict:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from pretrain.config import register_configs
    from pretrain.trainer import Trainer

    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            cfg = compose("train", overrides=[*COMMON, *overrides, f"run_dir={run_dir}"])
    finally:
        GlobalHydra.instance().clear()
    trainer = Trainer(cfg, callbacks=list(callbacks))
    if trainer_out is not None:
        trainer_out.append(trainer)
    return trainer.fit()


def _adam_steps(trainer) -> set[int]:
    """The step counts in the base optimizer's state (one per parameter): the updates it really made."""
    return {int(s["step"]) for s in trainer.engine.ds.basic_optimizer.state.values()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, cache_dir):
    """In-process runs by name, each trained once for this module."""
    done: dict[str, Path] = {}
    adam_steps: dict[str, set[int]] = {}
    specs = {
        # a NaN at step 7 and a one-step spike at step 12 (10 x the loss of the first micro-batch)
        "faults": ((f"trainer.max_steps={STEPS}", *GUARD, NO_SAVE,
                    f"trainer.guard.inject={{nan_at: [{NAN_AT}], spike_at: [{SPIKE_AT}]}}"), ()),
        # the clean run without those two batches, two steps shorter
        "reference": ((f"trainer.max_steps={STEPS - 2}", *GUARD, NO_SAVE), (DropBatches([NAN_AT, SPIKE_AT]),)),
    }

    def get(name: str) -> Path:
        if name not in done:
            overrides, callbacks = specs[name]
            with pytest.MonkeyPatch.context() as mp:
                mp.setenv("PRETRAIN_CACHE", str(cache_dir))
                mp.setenv("WANDB_MODE", "disabled")
                run_dir = tmp_path_factory.mktemp(name)
                trainers: list = []
                _train(run_dir, *overrides, callbacks=callbacks, trainer_out=trainers)
                adam_steps[name] = _adam_steps(trainers[0])
            done[name] = run_dir
        return done[name]

    get.adam_steps = adam_steps
    return get


def _train_records(run_dir: Path) -> dict[int, dict]:
    return {r["step"]: r for r in read_metrics(run_dir) if "loss" in r}


def test_a_nan_and_a_spike_are_skipped_and_the_run_equals_one_without_those_batches(runs):
    faults, ref = _train_records(runs("faults")), _train_records(runs("reference"))
    assert [(s, r["guard_action"]) for s, r in faults.items() if "guard_action" in r] == [
        (NAN_AT, SKIP), (NAN_AT + 3, RECOVERED), (SPIKE_AT, SKIP), (SPIKE_AT + 3, RECOVERED)]  # patience 3
    acted = {s: r for s, r in faults.items() if r.get("guard_action") == SKIP}
    assert acted[NAN_AT]["loss"] is None and acted[NAN_AT]["guard_reason"] == "non-finite loss (nan)"
    assert acted[SPIKE_AT]["guard_reason"].startswith("loss spike: ")
    assert (acted[NAN_AT]["guard_samples_start"], acted[NAN_AT]["guard_samples_end"]) == (48, 56)
    assert not any("guard_action" in r for r in ref.values())  # the clean run: the guard never fires
    # before the NaN: the same run; after each skip, the reference one step behind, loss for loss, on the same
    # samples and with the same LR (a skipped step advances neither the optimizer nor the LR schedule)
    pairs = [(s, s) for s in range(1, NAN_AT)] + [(s, s - 1) for s in range(NAN_AT + 1, SPIKE_AT)] + [
        (s, s - 2) for s in range(SPIKE_AT + 1, STEPS + 1)]
    for s, r in pairs:
        got, want = faults[s], ref[r]
        assert (got["loss"], got["lr"], got["consumed_samples"], got["batch_checksum"]) == (
            want["loss"], want["lr"], want["consumed_samples"], want["batch_checksum"]), (s, r)
    assert faults[NAN_AT + 1]["lr"] == faults[NAN_AT]["lr"]
    assert runs.adam_steps["faults"] == runs.adam_steps["reference"] == {STEPS - 2}  # Adam's count: 2 updates less
    log = (runs("faults") / "train.log").read_text()
    line = next(x for x in log.splitlines() if f"guard: step {NAN_AT} " in x)
    assert "samples 48-55" in line and "non-finite loss" in line and "skipped" in line
    assert f"python -m pretrain.data.inspect {runs('faults')} --step {NAN_AT}" in line


def test_guard_off_a_nan_stops_the_run_with_one_line_naming_the_step(tmp_path, monkeypatch, cache_dir):
    from pretrain.guard import DivergenceError

    monkeypatch.setenv("PRETRAIN_CACHE", str(cache_dir))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    with pytest.raises(DivergenceError) as e:
        _train(tmp_path, "trainer.max_steps=6", "trainer.guard.enabled=false", "trainer.guard.inject.nan_at=[3]",
               "checkpoint.interval=2")
    msg = str(e.value)
    assert msg.startswith("step 3: the loss is nan (samples 16-23)") and "\n" not in msg
    assert "trainer.guard.enabled=false" in msg
    assert (tmp_path / "checkpoints" / "latest").read_text() == "step_000002"  # nothing of the bad step saved
    assert msg in (tmp_path / "train.log").read_text()
    import torch.distributed

    assert not torch.distributed.is_initialized()  # released for the next in-process run


def test_a_sustained_spike_rolls_back_past_its_samples_and_ends_near_a_clean_run(tmp_path, monkeypatch, cache_dir,
                                                                                 runs):
    """Spikes at steps 9, 10, 11: skip, skip with the LR lowered, then a rollback to the step-8 checkpoint, which
    the step-10 save (keep_last=1) did not rotate away because it was protected. The run continues at the data
    after step 11 and ends where a clean run does (validation loss on the same samples within 5%)."""
    monkeypatch.setenv("PRETRAIN_CACHE", str(cache_dir))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    ev = f"trainer.eval_interval={STEPS - 2}"
    summary = _train(tmp_path, f"trainer.max_steps={STEPS - 2}", *GUARD, "trainer.guard.lr_steps=2",
                     "trainer.guard.inject.spike_at=[9,10,11]", "checkpoint.interval=2", "checkpoint.keep_last=1", ev)
    records = read_metrics(tmp_path)
    acted = [(r["step"], r["guard_action"]) for r in records if "guard_action" in r]
    # after the rollback, patience (3) counts from the checkpoint's step: the episode closes at step 11 again
    assert acted == [(9, SKIP), (10, LOWER_LR), (11, ROLLBACK), (11, RECOVERED)], acted
    rollback = next(r for r in records if r.get("guard_action") == ROLLBACK)
    assert rollback["guard_rollback_to_step"] == 8 and rollback["guard_skipped_samples_start"] == 64
    assert rollback["guard_resume_at_sample"] == 88
    train = [r for r in records if "loss" in r]
    after = [r for r in train if r["step"] > 8 and r["consumed_samples"] > 88]
    assert [r["step"] for r in after] == list(range(9, STEPS - 1))  # the steps after the checkpoint, once more
    assert after[0]["consumed_samples"] == 96 and after[-1]["consumed_samples"] == 88 + 8 * (STEPS - 2 - 8)
    assert summary["steps"] == STEPS - 2
    log = (tmp_path / "train.log").read_text()
    assert "rolling back to checkpoint step_000008 (step 8) and continuing at sample 88" in log
    assert f"python -m pretrain.data.inspect {tmp_path} --step 11" in log

    clean = tmp_path / "clean"
    clean_summary = _train(clean, f"trainer.max_steps={STEPS - 2}", *GUARD, NO_SAVE, ev)
    assert summary["final_val_loss"] == pytest.approx(clean_summary["final_val_loss"], rel=0.05)
    assert summary["final_loss"] == pytest.approx(clean_summary["final_loss"], rel=0.05)
    assert math.isfinite(summary["final_loss"])


@pytest.mark.slow
def test_two_zero2_ranks_skip_the_same_steps_as_one_process(e2e_run, runs):
    """The NaN and the spike sit on data-parallel rank 0's micro-batch only; both ranks skip both steps (a rank
    that stepped would leave its ZeRO-2 partition apart, and the losses after would not be one process's)."""
    two = {r["step"]: r for r in read_metrics(e2e_run("gpt_dp2_zero2_guard").dir) if "loss" in r}
    one = _train_records(runs("faults"))
    assert sorted(s for s, r in two.items() if r.get("guard_action") == SKIP) == [NAN_AT, SPIKE_AT]
    for s in range(1, STEPS + 1):
        if s == NAN_AT:
            assert two[s]["loss"] is None
            continue
        assert two[s]["batch_checksum"] == one[s]["batch_checksum"]
        assert two[s]["loss"] == pytest.approx(one[s]["loss"], rel=1e-5), s
