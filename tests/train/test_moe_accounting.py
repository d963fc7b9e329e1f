"""Mixture-of-experts accounting: parameter counts (total and active) of the Mixtral and Switch presets against
their papers, FLOPs and MFU of active parameters, the planner's MoE memory and time, the per-step ``moe_*``
metrics of a real (one-process, in-process) run, and the benchmark's dry run."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from pretrain.flops import gpt_flops_per_token, gpt_parameter_counts
from pretrain.models import TokenizerInfo, get_family
from pretrain.models.gpt import count_parameters
from tests.conftest import TINY


def resolved(compose_cfg, *overrides):
    cfg = compose_cfg(*overrides)
    return get_family("gpt").resolve_args(cfg.model, TokenizerInfo(None, None, 0))


def meta_numel(args) -> int:
    from pretrain.models.gpt.model import GPT
    from pretrain.planner.shapes import _no_init

    with torch.device("meta"), _no_init():
        model = GPT(args)
    return sum(p.numel() for p in model.parameters())


def test_mixtral_and_switch_presets_have_their_papers_parameter_counts(compose_cfg):
    # Mixtral of Experts (Jiang et al. 2024): 46.7B parameters, 12.9B active per token (vocabulary 32000)
    mixtral = resolved(compose_cfg, "model=gpt/mixtral_8x7b", "model.vocab_size=32000")
    c = gpt_parameter_counts(mixtral)
    assert abs(c["total"] - 46.7e9) < 0.05e9 and abs(c["active"] - 12.9e9) < 0.05e9, c
    assert c["total"] == meta_numel(mixtral) == get_family("gpt").num_parameters(mixtral)
    assert c["active"] == count_parameters(mixtral)["active"]  # the model file's own count agrees
    # Switch Transformers (Fedus et al. 2021), Table 9: Switch-Base 7B parameters at T5-Base's 0.2B per token
    switch = resolved(compose_cfg, "model=gpt/switch_base", "model.vocab_size=32128")
    c = gpt_parameter_counts(switch)
    assert round(c["total"] / 1e9) == 7 and round(c["active"] / 1e8) == 2, c
    assert c["moe_layers"] == 12 and c["total"] == meta_numel(switch)
    # moe_tiny: the counts are those of the model the trainer builds
    tiny = resolved(compose_cfg, "model=gpt/moe_tiny", "model.vocab_size=320")
    assert gpt_parameter_counts(tiny)["total"] == meta_numel(tiny)


def test_flops_count_the_active_parameters(compose_cfg):
    moe = resolved(compose_cfg, "model=gpt/moe_tiny", "model.vocab_size=320")
    dense = replace(moe, num_experts=0, ffn_hidden_size=moe.moe_router_topk * moe.moe_ffn_hidden_size)
    counts = gpt_parameter_counts(moe)
    # the dense model with the experts' active width: the same FLOPs but for the router's matmul
    router = counts["moe_layers"] * counts["router"]
    assert gpt_flops_per_token(moe)["model"] == gpt_flops_per_token(dense)["model"] + 6 * router
    assert counts["active"] == gpt_parameter_counts(dense)["total"] + router
    # twice the experts: twice the expert parameters, the same FLOPs apart from the router's
    more = replace(moe, num_experts=2 * moe.num_experts)
    assert gpt_parameter_counts(more)["total"] > counts["total"]
    assert gpt_flops_per_token(more)["model"] - gpt_flops_per_token(moe)["model"] == 6 * router
    # recomputation adds the active layers' forward as for a dense model
    ac = replace(moe, activation_checkpointing=True, recompute_granularity="full")
    assert gpt_flops_per_token(ac)["hardware"] > gpt_flops_per_token(ac)["model"] == gpt_flops_per_token(moe)["model"]


def test_planner_splits_experts_over_ep_and_times_active_parameters(compose_cfg):
    from pretrain.planner import make_plan, model_facts
    from pretrain.planner.memory import Setup, model_states

    cfg = compose_cfg("model=gpt/mixtral_8x7b", "model.vocab_size=32000", "model.seq_length=4096",
                      "trainer.precision=bf16", "trainer.micro_batch_size=1", "trainer.global_batch_size=64",
                      "parallel=zero1")
    facts = model_facts(cfg)
    assert facts.num_parameters == gpt_parameter_counts(facts.args)["total"]
    assert facts.flops == gpt_flops_per_token(facts.args)
    experts = sum(p.numel for p in facts.params if p.expert)
    assert experts == 32 * 8 * 3 * 4096 * 14336  # the router is not an expert weight
    base = dict(tp=1, pp=1, dp=8, zero_stage=0, micro_batch_size=1, grad_accum_steps=8, recompute="full",
                sequence_parallel=False, precision="bf16")
    # the trainer splits the experts (expert_parallelize): 1/ep of them per rank, ZeRO over the dp/ep copies; with
    # the weights whole on every rank (keep_all=True) ep would leave the model states alone
    whole = replace(facts, params=[replace(p, ep_split=False) for p in facts.params], _stage_cache={})
    ep1, ep8 = (model_states(whole, Setup(**base, ep=ep), 0, {})[0] for ep in (1, 8))
    assert ep1 == ep8
    split = facts
    assert all(p.ep_split == p.expert for p in split.params)
    ep1, ep8 = (model_states(split, Setup(**base, ep=ep), 0, {})[0] for ep in (1, 8))
    assert ep1["params"] - ep8["params"] == 2 * experts * 7 // 8  # bf16 parameters, 7/8 of the experts elsewhere
    assert ep1["optimizer"] - ep8["optimizer"] == 8 * experts * 7 // 8
    # ZeRO-1: master weights and moments stay 1/dp per rank either way; the whole bf16 parameters lose half the
    # experts at ep 2
    z1 = {ep: model_states(split, Setup(**{**base, "zero_stage": 1}, ep=ep), 0, {})[0] for ep in (1, 2)}
    assert z1[2]["master"] == pytest.approx(z1[1]["master"], rel=1e-6)
    assert z1[1]["params"] - z1[2]["params"] == pytest.approx(2 * experts / 2, rel=1e-6)

    plan = make_plan(cfg, 64, "h100")
    eps = {e.setup.ep for e in plan["layouts"]}
    assert eps >= {1, 2, 4, 8} and plan["model"]["active_parameters"] == gpt_parameter_counts(facts.args)["active"]
    best = plan["best"]
    assert best is not None and any(o.startswith("parallel.expert_model_parallel_size=") for o in best.overrides)
    with_ep = next(e for e in plan["layouts"] if e.setup.ep > 1)
    assert with_ep.time["ep_comm_s"] > 0
    t = best.time  # MFU from the active parameters' FLOPs
    peak = plan["device"]["peak_flops"]
    assert t["mfu"] == pytest.approx(facts.flops["model"] * t["tokens_per_step"] / (t["step_s"] * 64 * peak))


def test_moe_stats_reduce_into_the_records_fields():
    from pretrain.models.gpt.moe_metrics import MoEStats, record_fields

    s = MoEStats(num_experts=4, num_layers=2)
    s.add({"aux_loss": 1.0, "z_loss": 0.5, "assignments": 100, "dropped": 10, "expert_load": [50, 30, 20, 0],
           "a2a_bytes": 1000})
    s.add({"aux_loss": 3.0, "z_loss": 1.5, "assignments": 100, "dropped": 0, "expert_load": [25, 25, 25, 25],
           "a2a_bytes": 3000})
    # another rank: a pipeline stage with one MoE layer (aux 1.0, z 0), and one with none (no load at all)
    one = MoEStats(4, 1)
    one.add({"aux_loss": 1.0, "z_loss": 0.0, "assignments": 200, "dropped": 0, "expert_load": [25, 25, 25, 125],
             "a2a_bytes": 0})
    none = MoEStats(4, 0)
    none.add({"aux_loss": 0.0, "z_loss": 0.0, "assignments": 0, "dropped": 0, "expert_load": [], "a2a_bytes": 0})
    summed = [a + b + c for a, b, c in zip(s.vector(), one.vector(), none.vector())]
    fields = record_fields(summed, ranks=3)
    assert fields == {"moe_aux_loss": (2 * 2.0 + 1.0) / 3, "moe_z_loss": 2 * 1.0 / 3,
                      "moe_dropped_fraction": 10 / 400, "moe_expert_load_max": 150 / 100,
                      "moe_expert_load_min": 70 / 100, "moe_a2a_bytes": 2000 / 3}
    s.reset()
    assert s.vector() == [0.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]


def test_a_moe_run_logs_its_metrics_and_mfu_of_active_parameters(tmp_path, compose_cfg, monkeypatch, cache_dir):
    from pretrain.trainer import Trainer

    monkeypatch.setenv("PRETRAIN_CACHE", str(cache_dir))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    cfg = compose_cfg(*TINY, "experiment=moe_tiny", "trainer.max_steps=4", "trainer.eval_interval=2",
                      "model.moe_capacity_factor=1.0", f"run_dir={tmp_path}")
    trainer = Trainer(cfg)
    trainer.fit()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "loss" in r]
    assert [r["step"] for r in train] == [1, 2, 3, 4]
    for r in train:
        assert r["moe_aux_loss"] > 0 and r["moe_z_loss"] > 0 and r["moe_a2a_bytes"] == 0  # one rank: no all-to-all
        assert 0 < r["moe_dropped_fraction"] < 1  # capacity factor 1.0 with 4 experts drops some copies
        assert r["moe_expert_load_min"] <= 1.0 <= r["moe_expert_load_max"]
        assert r["tflops_per_device"] == pytest.approx(trainer.flops["model"] * r["tokens_per_s"] / 1e12)
    assert trainer.flops == gpt_flops_per_token(trainer.args)  # active parameters: less than all of them
    assert gpt_parameter_counts(trainer.args)["active"] < trainer.n_params
    # a model that drops tokens has no Mixtral counterpart: the export says which key
    from pretrain import export
    from pretrain.core.errors import CheckpointError

    with pytest.raises(CheckpointError, match=r"moe_capacity_factor=1.0 \(needs null: Mixtral never drops"):
        export.export(tmp_path, tmp_path / "hf")


def test_bench_moe_dry_run_compares_equal_active_parameters(capsys):
    from pretrain.bench import moe

    res = moe.main(["--dry-run"])
    c = res["parameters"]
    assert c["moe"]["active"] - c["dense"]["active"] == c["moe"]["moe_layers"] * c["moe"]["router"]
    assert c["moe"]["total"] > c["dense"]["total"] and res["timing"] is None
    assert "would run" in capsys.readouterr().out


@pytest.mark.slow
def test_expert_parallel_metrics_are_ep1s_plus_the_all_to_all_bytes(e2e_run):
    """The moe_* fields of the shared ep1 and ep2 runs (2 processes each, the same batches and weights): the
    losses and expert loads, all-reduced over the data-parallel ranks, are ep1's; only ep2 moves bytes."""
    from e2e import MOE_STEPS, train_records

    ep1 = [r for r in train_records(e2e_run("moe_ep1").dir) if r["step"] <= MOE_STEPS]
    ep2 = [r for r in train_records(e2e_run("moe_ep2").dir) if r["step"] <= MOE_STEPS]
    assert [r["step"] for r in ep1] == [r["step"] for r in ep2] and ep1
    for a, b in zip(ep1, ep2):
        for key in ("moe_aux_loss", "moe_z_loss", "moe_expert_load_max", "moe_expert_load_min"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), (a["step"], key)
        assert a["moe_dropped_fraction"] == b["moe_dropped_fraction"] == 0.0  # no capacity factor
        assert a["moe_a2a_bytes"] == 0 < b["moe_a2a_bytes"]
