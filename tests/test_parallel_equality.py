"""Parallel layouts against one process: from the same seed and data, a run split over 2 CPU processes (gloo)
gives the per-step losses of one unsharded process, within 1e-5 relative in fp32, on the same batches.

Global batch 8 of micro-batches of 4: one process accumulates 2 micro-batches per step; 2 data-parallel ranks
take 1 each; 2 tensor-parallel ranks (one data-parallel rank) accumulate 2 as one process does. The sampler
reads the global sample order in strides, so every layout trains on the same samples each step (checked with
the per-step ``batch_checksum``, the sum of the token ids consumed by all ranks). Dropout is off: its masks
differ per data-parallel rank by design.

Here: BERT and T5 with tensor parallelism. Their data-parallel comparisons (ZeRO-2 / ZeRO-3) are in
test_zoo_e2e.py and GPT's (every ZeRO stage, tp) in test_train_e2e.py; the one-process BERT / T5 reference
runs are made once per test session (:func:`zoo_reference`) and shared with test_zoo_e2e.py.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest

from conftest import make_train_env, read_metrics, run_train

pytestmark = pytest.mark.slow

ZOO_STEPS = 30
# the BERT / T5 runs compared: 30 steps, global batch 8, micro-batch 4, no dropout (the tiny models have none
# by default; set here so that the comparison does not depend on it)
ZOO_EQUAL = ["trainer.micro_batch_size=4", "trainer.global_batch_size=8", f"trainer.max_steps={ZOO_STEPS}",
             "trainer.log_interval=1", "trainer.eval_interval=0", "optim.sched.warmup_steps=2",
             "model.hidden_dropout=0", "model.attention_dropout=0"]

_REFERENCES: dict[str, Path] = {}  # experiment -> run directory, for the whole test session


def zoo_reference(experiment: str, tmp_path_factory, cache_dir: Path) -> Path:
    """The run directory of ``experiment`` trained with :data:`ZOO_EQUAL` in one process (``python -m
    pretrain.train``, ZeRO-0, accumulation 2). Trained on first use, then shared by every test of the session
    that compares a parallel layout with it (here and in test_zoo_e2e.py; a fixture could not be shared by both
    modules without living in conftest.py)."""
    if experiment not in _REFERENCES:
        run_dir = tmp_path_factory.mktemp(f"{experiment}-one-process") / "run"
        run_train([f"experiment={experiment}", *ZOO_EQUAL, f"run_dir={run_dir}", "parallel=zero0"],
                  make_train_env(cache_dir))
        _REFERENCES[experiment] = run_dir
    return _REFERENCES[experiment]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, cache_dir):
    """``one_process(experiment)`` -> the one-process reference run of ``experiment`` (:func:`zoo_reference`)."""
    return functools.partial(zoo_reference, tmp_path_factory=tmp_path_factory, cache_dir=cache_dir)


# Gradient norms are compared less tightly than losses. Adam turns the last-bit differences of another summation
# order into weight differences of ~1e-5 within 10 steps (elements with ~0 gradient, such as the key biases,
# move by lr x m / (sqrt(v) + eps) whatever their size), and on a step where the gradient spikes its norm
# amplifies them: on the sample data, GPT tiny's step 11 has grad norm 1.19563 from one process's weights and
# 1.19538 from tp2's, both computed by the same unsharded model in float64 (2e-4 apart), while the losses stay
# within 6e-7 over the 30 steps.
GRAD_NORM_REL = 1e-3


def train_records(run_dir: Path) -> list[dict]:
    return [r for r in read_metrics(run_dir) if "loss" in r]


def assert_same_steps(ref: list[dict], got: list[dict], loss_rel: float, grad_norm_rel: float | None = None) -> float:
    """The same steps, each on the same batches (``batch_checksum``) with the loss (and gradient norm) within
    ``loss_rel`` (``grad_norm_rel``) relative of the reference's; returns the largest relative loss difference."""
    assert [r["step"] for r in got] == [r["step"] for r in ref] == list(range(1, len(ref) + 1))
    worst = 0.0
    for x, y in zip(ref, got):
        assert y["batch_checksum"] == x["batch_checksum"], (x["step"], x["batch_checksum"], y["batch_checksum"])
        assert y["loss"] == pytest.approx(x["loss"], rel=loss_rel), (x["step"], x["loss"], y["loss"])
        if grad_norm_rel is not None:
            assert y["grad_norm"] == pytest.approx(x["grad_norm"], rel=grad_norm_rel), (
                x["step"], x["grad_norm"], y["grad_norm"])
        worst = max(worst, abs(y["loss"] - x["loss"]) / abs(x["loss"]))
    return worst


@pytest.mark.parametrize("experiment", ["bert_tiny", "t5_tiny"])
def test_tensor_parallel_matches_one_process(tmp_path, train_env, one_process, experiment):
    """tp=2 through the trainer: BERT (vocab-parallel tied MLM decoder with its bias, replicated MLM transform,
    pooler and SOP head) and T5 (relative-position biases split by heads, cross-attention, untied vocab-parallel
    output layer) train as one process does, step for step."""
    tp2 = tmp_path / "tp2"
    run_train([f"experiment={experiment}", *ZOO_EQUAL, f"run_dir={tp2}", "parallel.tensor_model_parallel_size=2"],
              train_env, nproc=2)
    ref, got = train_records(one_process(experiment)), train_records(tp2)
    worst = assert_same_steps(ref, got, 1e-5, GRAD_NORM_REL)
    print(f"{experiment} tp2: max relative loss difference to one process {worst:.3g}")
    assert all(r["comm_tp_all_reduce_bytes"] > 0 for r in got)
    assert json.loads((tp2 / "deepspeed.json").read_text())["gradient_accumulation_steps"] == 2
    state = json.loads((tp2 / "checkpoints" / f"step_{ZOO_STEPS:06d}" / "trainer_state.json").read_text())
    assert state["tensor_parallel_size"] == 2
