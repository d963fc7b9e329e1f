"""The two halves together: the data pipeline's shards train the tiny GPT."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO, TINY, losses_by_step, run_train

pytestmark = pytest.mark.slow


def test_pipeline_shards_train_the_tiny_gpt(tmp_path, train_env):
    data = tmp_path / "data"
    proc = subprocess.run([sys.executable, "-m", "data_pipelines.run", f"output_dir={data}", "executor.workers=2"],
                          cwd=REPO, env=train_env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (data / "manifest.json").exists() and (data / "report.md").exists()
    run_dir = tmp_path / "run"
    run_train([*TINY, f"run_dir={run_dir}", f"data.path={data}", "data.split=80/20", "trainer.max_steps=40",
               "trainer.eval_interval=20"], train_env, nproc=2)
    losses = losses_by_step(run_dir)
    assert losses[40] < losses[1] - 1.0
    assert (run_dir / "checkpoints" / "step_000040" / "COMPLETE").exists()
