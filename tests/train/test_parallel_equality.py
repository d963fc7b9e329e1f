"""Parallel layouts against one process: from the same seed and data, a run split over 2 CPU processes (gloo)
gives the per-step losses of one unsharded process, within 1e-5 relative in fp32, on the same batches.

Global batch 8 of micro-batches of 4: one process accumulates 2 micro-batches per step; 2 data-parallel ranks
take 1 each; 2 tensor-parallel ranks (one data-parallel rank) accumulate 2 as one process does. The sampler
reads the global sample order in strides, so every layout trains on the same samples each step (checked with
the per-step ``batch_checksum``, the sum of the token ids consumed by all ranks). Dropout is off: its masks
differ per data-parallel rank by design.

Here: BERT and T5 with tensor parallelism. Their data-parallel comparisons (ZeRO-2 / ZeRO-3) are in
test_zoo_e2e.py and GPT's (every ZeRO stage, tp) in test_train_e2e.py. The runs, the one-process BERT / T5
references among them, are in the table of tests/e2e.py, each trained once per session.
"""

from __future__ import annotations

import json

import pytest

from e2e import GRAD_NORM_REL, ZOO_STEPS, assert_same_steps, train_records

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("experiment", ["bert_tiny", "t5_tiny"])
def test_tensor_parallel_matches_one_process(e2e_run, experiment):
    """tp=2 through the trainer: BERT (vocab-parallel tied MLM decoder with its bias, replicated MLM transform,
    pooler and SOP head) and T5 (relative-position biases split by heads, cross-attention, untied vocab-parallel
    output layer) train as one process does, step for step."""
    family = experiment.split("_")[0]
    tp2 = e2e_run(f"{family}_tp2").dir
    ref, got = train_records(e2e_run(f"{family}_one_process").dir), train_records(tp2)
    worst = assert_same_steps(ref, got, 1e-5, GRAD_NORM_REL)
    print(f"{experiment} tp2: max relative loss difference to one process {worst:.3g}")
    assert all(r["comm_tp_all_reduce_bytes"] > 0 for r in got)
    assert json.loads((tp2 / "deepspeed.json").read_text())["gradient_accumulation_steps"] == 2
    state = json.loads((tp2 / "checkpoints" / f"step_{ZOO_STEPS:06d}" / "trainer_state.json").read_text())
    assert state["tensor_parallel_size"] == 2
