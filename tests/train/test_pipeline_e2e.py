"""Pipeline parallelism, sequence parallelism and resharding through the trainer (torchrun, CPU, gloo): the
per-step losses of pp2, tp2 x pp2 and tp2 with sequence parallelism equal one process's; a tp2 x pp2 checkpoint
resumes at one process and at dp2 with ZeRO-3 with the losses of the uninterrupted run, and exports the same
weights as the one-process checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import read_metrics
from e2e import GRAD_NORM_REL

pytestmark = pytest.mark.slow

# The runs are in tests/e2e.py: PIPE_GPT / PIPE_BERT, 10 steps of 4 micro-batches of 2 (so the 1F1B schedule has
# work in flight on both stages), against one process (``gpt_pp_one_process``: checkpoints at 5 and 10).


def losses(run_dir: Path) -> dict[int, dict]:
    return {r["step"]: r for r in read_metrics(run_dir) if "loss" in r}


def assert_same_losses(ref: dict[int, dict], run: dict[int, dict], steps) -> None:
    for s in steps:
        assert run[s]["loss"] == pytest.approx(ref[s]["loss"], rel=1e-5), s
        assert run[s]["grad_norm"] == pytest.approx(ref[s]["grad_norm"], rel=GRAD_NORM_REL), s
        assert run[s]["batch_checksum"] == ref[s]["batch_checksum"], s


@pytest.fixture
def gpt_reference(e2e_run) -> Path:
    """One process, 10 steps, checkpoints at 5 and 10: the run every GPT layout here must reproduce."""
    return e2e_run("gpt_pp_one_process").dir


def test_gpt_pp2_matches_one_process(e2e_run, gpt_reference):
    run_dir = e2e_run("gpt_pp2").dir
    ref, run = losses(gpt_reference), losses(run_dir)
    assert_same_losses(ref, run, range(1, 11))
    assert run[10]["val_loss"] == pytest.approx(ref[10]["val_loss"], rel=1e-5)
    # stage 0 sends 4 micro-batches of activations [2, 64, 64] fp32 per step (plus their shape, once)
    assert run[2]["comm_pp_send_bytes"] == 4 * 2 * 64 * 64 * 4 and "comm_pp_send_bytes" not in ref[2]
    tag = run_dir / "checkpoints" / "step_000010"
    assert (tag / "layer_00-model_00-model_states.pt").is_file()  # DeepSpeed's per-layer pipeline files
    assert json.loads((tag / "trainer_state.json").read_text())["pipeline_parallel_size"] == 2
    assert "pipeline: 2 stages" in (run_dir / "train.log").read_text()


def test_tp2_pp2_matches_one_process_reshards_on_resume_and_exports(tmp_path, e2e_run, gpt_reference):
    run_dir = e2e_run("gpt_tp2_pp2").dir
    ref = losses(gpt_reference)
    run = losses(run_dir)
    assert_same_losses(ref, run, range(1, 6))
    assert run[5]["comm_tp_all_reduce_bytes"] > 0 and run[5]["comm_pp_send_bytes"] > 0
    tag = run_dir / "checkpoints" / "step_000005"
    assert sorted(p.name for p in (tag / "universal").iterdir()) == [
        "pp00_tp00.pt", "pp00_tp01.pt", "pp01_tp00.pt", "pp01_tp01.pt"]

    # the same checkpoint resumed by one process (tp, pp and ZeRO stage change) and by dp2 with ZeRO-3
    one = e2e_run("gpt_tp2_pp2_resumed_one_process")
    assert "resuming through its layout-free copy" in one.outputs[-1].stdout
    assert_same_losses(ref, losses(one.dir), range(6, 11))
    zero3 = e2e_run("gpt_tp2_pp2_resumed_dp2_zero3").dir
    assert_same_losses(ref, losses(zero3), range(6, 11))

    # export from the tp2 x pp2 checkpoint = export from the one-process checkpoint of the same step
    from safetensors.torch import load_file

    from pretrain.export import export

    export(tag, tmp_path / "hf_tp2pp2")
    export(gpt_reference / "checkpoints" / "step_000005", tmp_path / "hf_one")
    a, b = load_file(tmp_path / "hf_tp2pp2" / "model.safetensors"), load_file(tmp_path / "hf_one" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:  # summation order differs across layouts; Adam turns it into ~1e-5 of weights ~1e-2
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=3e-5, msg=k)


def test_tp2_sequence_parallel_matches_one_process(e2e_run, gpt_reference):
    run_dir = e2e_run("gpt_tp2_sp").dir
    ref, run = losses(gpt_reference), losses(run_dir)
    assert_same_losses(ref, run, range(1, 11))
    # every region entered by an all-gather and left by a reduce-scatter of the sequence
    assert run[2]["comm_tp_all_gather_bytes"] > 0 and run[2]["comm_tp_reduce_scatter_bytes"] > 0


def test_bert_pp2_matches_one_process(e2e_run):
    one, pp2 = e2e_run("bert_pp_one_process").dir, e2e_run("bert_pp2").dir
    ref, run = losses(one), losses(pp2)
    assert_same_losses(ref, run, range(1, 11))
    assert run[10]["val_loss"] == pytest.approx(ref[10]["val_loss"], rel=1e-5)
    log = (pp2 / "train.log").read_text()
    assert "stage 1: BERTTransformerLayer, BERTHead, TokenEmbedding, BERTDecoderBias" in log  # the tied decoder
