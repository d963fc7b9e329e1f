"""The pre-flight planner (python -m pretrain.plan): its figures against measurement, its layouts, its refusals,
and the SLURM helper refusing a layout that will not fit.

Model-state bytes are checked against the byte counts ``pretrain.bench.parallel --tiny`` makes on live DeepSpeed
engines (the run test_bench_parallel.py makes, shared through the session's temp folder); activation bytes
against autograd's saved tensors of the real models, in this process (``pretrain.bench.plan``).
"""

from __future__ import annotations

import io
import json
from contextlib import redirect_stdout

import pytest

from pretrain.core.errors import ConfigError

LLAMA = ["experiment=llama_1b", "--vocab-size", "32000"]


def compose_cfg(*overrides: str):
    """Composed as the planner's command line does (pretrain.launch.config.compose clears Hydra's global state
    around it, so this cannot share the ``compose_cfg`` fixture's initialized one)."""
    from pretrain.plan import compose_train

    return compose_train(list(overrides))


def _main(*argv: str) -> tuple[int, str]:
    from pretrain.plan import main

    buf = io.StringIO()
    with redirect_stdout(buf):
        rc = main(list(argv))
    return rc, buf.getvalue()


@pytest.mark.slow
def test_model_states_per_rank_match_bench_parallel_within_5_percent(tmp_path_factory):
    from pretrain.bench.plan import model_state_rows
    from train.test_bench_parallel import tiny_bench

    bench, _, _ = tiny_bench(tmp_path_factory)
    rows = model_state_rows(bench)
    runs = {r["run"].split(" rank")[0] for r in rows}
    # dp1, ZeRO 0-3 at dp2, tp2 and pp2 (every rank of each), bf16 and fp32
    assert {"dp1", "ZeRO-0 dp2", "ZeRO-1 dp2", "ZeRO-2 dp2", "ZeRO-3 dp2", "tp2 pp1", "tp1 pp2"} <= runs, runs
    assert {r["precision"] for r in rows} == {"bf16", "fp32"}
    bad = [r for r in rows if abs(r["ratio"] - 1) > 0.05]
    assert not bad, bad


@pytest.mark.slow
def test_activations_per_rank_match_the_deepspeed_runs_at_tp2_within_15_percent(tmp_path_factory):
    """The tensor-parallel shares of the activation terms (and the vocabulary-parallel loss), and sequence
    parallelism's, against the bytes autograd saved on each rank of the same bench's tp2 engines."""
    from pretrain.bench.plan import engine_activation_rows
    from train.test_bench_parallel import tiny_bench

    bench, _, _ = tiny_bench(tmp_path_factory)
    rows = engine_activation_rows(bench)
    assert {r["run"] for r in rows} >= {"dp1", "tp2 rank 0", "tp2 rank 1", "tp2 sp rank 0", "tp2 sp rank 1"}, rows
    bad = [r for r in rows if abs(r["ratio"] - 1) > 0.15]
    assert not bad, bad
    by = {(r["precision"], r["run"]): r["measured"] for r in rows}
    assert by[("fp32", "tp2 sp rank 0")] < by[("fp32", "tp2 rank 0")] < by[("fp32", "dp1")]


def test_activation_peaks_match_saved_tensors_within_15_percent():
    from pretrain.bench.plan import activation_rows

    # the bench-sized model at micro-batch 1 (the bytes scale with it; python -m pretrain.bench.plan runs 4)
    rows = activation_rows(("tiny",), ("fp32", "bf16")) + activation_rows(("bench",), ("fp32",), micro_batch=1)
    assert {(r["model"], r["recompute"]) for r in rows} == {(m, rc) for m in ("tiny", "bench")
                                                            for rc in ("none", "selective", "full")}
    for r in rows:
        assert abs(r["ratio"] - 1) <= 0.15, r
        assert abs(r["ratio_saved"] - 1) <= 0.15, r
    bench = {r["recompute"]: r for r in rows if r["model"] == "bench"}
    # full recomputation keeps only the layers' inputs: far less than without it, as measured
    assert bench["full"]["measured_saved"] < 0.3 * bench["none"]["measured_saved"]
    assert bench["full"]["predicted_saved"] < 0.3 * bench["none"]["predicted_saved"]


def test_plan_lists_every_layout_ranked_and_best_prints_valid_overrides():
    from pretrain.engines import batch_plan

    rc, out = _main(*LLAMA, "--gpus", "8", "--json")
    assert rc == 0
    res = json.loads(out)
    layouts = res["layouts"]
    assert len(layouts) > 50 and sum(e["configured"] for e in layouts) == 1
    assert {e["tp"] for e in layouts} == {1, 2, 4}  # not 8: llama_1b has 4 key/value heads
    assert {e["pp"] for e in layouts} == {1, 2}  # 22 layers
    fits = [e["fits"] for e in layouts]
    assert fits == sorted(fits, reverse=True) and any(fits) and not all(fits)  # fitting layouts first
    speeds = [e["time"]["tokens_per_s"] for e in layouts if e["fits"]]
    assert speeds == sorted(speeds, reverse=True)
    for e in layouts:
        assert (e["memory_bytes"]["total"] <= e["usable_bytes"]) == e["fits"]
        assert 0 < e["time"]["mfu"] <= res["efficiency"]
    # the configured layout: llama_1b's recipe (ZeRO-2, micro-batch 8, dp 8) fits an H100
    assert res["configured"]["fits"] and res["configured"]["zero_stage"] == 2
    rc, best = _main(*LLAMA, "--gpus", "8", "--best")
    assert rc == 0 and best.split() == res["best"]["overrides"]
    cfg = compose_cfg("experiment=llama_1b", "model.vocab_size=32000", *best.split())
    plan = batch_plan(cfg, 8)  # the trainer accepts the winner
    assert plan.tensor_parallel_size == res["best"]["tp"]
    rc, text = _main(*LLAMA, "--gpus", "8", "--top", "5")
    assert rc == 0 and "configured layout: tp1 pp1 dp8 z2 mb8x16" in text and "best: parallel." in text
    assert "valid layouts" in text and "DOES NOT FIT" not in text.split("valid layouts")[0]


def test_more_gpus_or_recomputation_make_a_big_model_fit():
    from pretrain.planner import make_plan

    cfg = compose_cfg("experiment=gpt_13b", "model.vocab_size=50304", "trainer.precision=bf16",
                      "parallel.zero_stage=0", "trainer.micro_batch_size=4", "trainer.global_batch_size=256")
    one = make_plan(cfg, 8, "h100", enumerate_all=False)["configured"]
    assert not one.fits and one.memory["model_states"] > 16 * 12e9  # ZeRO-0: 16 bytes per parameter on every GPU
    res = make_plan(cfg, 64, "h100")
    assert res["best"] is not None and res["best"].fits
    # ZeRO-3 over more ranks holds fewer model-state bytes; full recomputation fewer activation bytes
    by = {(e.setup.tp, e.setup.pp, e.setup.zero_stage, e.setup.micro_batch_size, e.setup.recompute): e
          for e in res["layouts"]}
    assert by[(1, 1, 3, 1, None)].memory["model_states"] < by[(1, 1, 0, 1, None)].memory["model_states"] / 10
    assert by[(1, 1, 3, 1, "full")].memory["activations"] < by[(1, 1, 3, 1, None)].memory["activations"] / 5
    # tensor parallelism costs communication, pipelines a bubble: both show in the step
    assert by[(8, 1, 1, 1, None)].time["tp_comm_s"] > 0 and by[(1, 8, 1, 1, None)].time["bubble_s"] > 0


@pytest.mark.parametrize("overrides,gpus", [
    (["parallel.tensor_model_parallel_size=3"], 6),  # 4 heads
    (["parallel.pipeline_model_parallel_size=4"], 4),  # 2 layers
    (["parallel.pipeline_model_parallel_size=2", "parallel.zero_stage=2"], 2),
    (["trainer.global_batch_size=6"], 4),
])
def test_refuses_an_impossible_layout_with_the_trainers_message(overrides, gpus):
    from pretrain.engines import batch_plan
    from pretrain.planner import make_plan

    cfg = compose_cfg("experiment=gpt_tiny", "model.vocab_size=4096", *overrides)
    with pytest.raises(ConfigError) as trainer:
        batch_plan(cfg, gpus)
    with pytest.raises(ConfigError) as planner:
        make_plan(cfg, gpus, "h100", enumerate_all=False)
    assert str(planner.value) == str(trainer.value)
    rc, _ = _main("experiment=gpt_tiny", "model.vocab_size=4096", *overrides, "--gpus", str(gpus))
    assert rc == 2


def test_slurm_helper_refuses_a_layout_that_does_not_fit_unless_skipped():
    from pretrain.launch.slurm import render_train

    big = ["experiment=gpt_13b", "model.vocab_size=50304", "trainer.micro_batch_size=16", "parallel.zero_stage=0",
           "slurm.nodes=1", "run_dir=/tmp/plan-slurm-test"]
    with pytest.raises(ConfigError, match="does not fit.*a layout that fits: parallel.*slurm.skip_plan=true"):
        render_train(big)
    text, _, _ = render_train(big + ["slurm.skip_plan=true"])
    assert "#SBATCH --nodes=1" in text
    text, _, _ = render_train(["experiment=gpt_125m", "model.vocab_size=50304", "trainer.micro_batch_size=8",
                               "slurm.nodes=1", "slurm.gpu=a100", "run_dir=/tmp/plan-slurm-test"])
    assert "#SBATCH --gpus-per-node=8" in text


def test_every_gpu_of_the_planner_has_its_peak_in_the_mfu_table():
    from pretrain.flops import PEAK_FLOPS
    from pretrain.planner.devices import DEVICES, get_device

    for d in DEVICES.values():
        assert d.table_name in PEAK_FLOPS and d.peak_flops("fp32") > 0 and d.memory_bytes > 16 * 2**30
    assert get_device("H100").name == "h100" and get_device("h200").peak_flops("bf16") == 989e12
    with pytest.raises(ConfigError, match="v100 has no dense bf16 peak"):
        get_device("v100").peak_flops("bf16")
    with pytest.raises(ConfigError, match="--gpu 'tpu' is not known"):
        get_device("tpu")
