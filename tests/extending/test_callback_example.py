"""The trainer-callback example of docs/extending.md, run through a real (one-process, in-process) training."""

from __future__ import annotations

import json

from tests.conftest import TINY
from tests.extending.stop_at_loss import StopAtLoss


def test_a_callback_sees_every_step_and_stops_the_run_with_a_checkpoint(tmp_path, compose_cfg, monkeypatch,
                                                                          cache_dir):
    from pretrain.trainer import Trainer

    monkeypatch.setenv("PRETRAIN_CACHE", str(cache_dir))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    cfg = compose_cfg(*TINY, "trainer.max_steps=6", "trainer.log_interval=3", f"run_dir={tmp_path}")
    # the first step is always logged; a target no loss misses stops the run right there
    stopper = StopAtLoss(target=1e9)
    summary = Trainer(cfg, callbacks=[stopper]).fit()
    assert stopper.seen == [1]
    assert summary["stopped"].startswith("loss ") and summary["steps"] == 1
    state = json.loads((tmp_path / "checkpoints" / "step_000001" / "trainer_state.json").read_text())
    assert state["step"] == 1 and (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_000001"

    # a target never reached: the callback sees every step, the run ends at max_steps (resumed from step 1)
    never = StopAtLoss(target=-1.0)
    summary = Trainer(cfg, callbacks=[never]).fit()
    assert never.seen == [2, 3, 4, 5, 6] and summary["steps"] == 6 and summary["stopped"] is None
    assert never.seen_before == 1  # its state came back from the step-1 checkpoint
    state = json.loads((tmp_path / "checkpoints" / "step_000006" / "trainer_state.json").read_text())
    assert state["callbacks"]["stop_at_loss"] == {"steps_seen": 6}
