"""Mixture-of-experts benchmark: ``moe_tiny``'s tokens/s against the dense model with the same *active* parameters,
and model-state bytes per rank at expert parallelism 1 and 2.

    python -m pretrain.bench.moe [--steps 4 --rounds 3 --warmup 2] [--stages 0,1] [--dry-run] [hydra overrides ...]

CPU only (DeepSpeed's CPU accelerator, gloo), through our whole stack, with the ranks of
:mod:`pretrain.bench.parallel` (spawned processes, each with torchrun's variables; its byte counting):

1. **Tokens/s, MoE vs dense**, fp32, one process with 2 threads each (``--threads``): ``experiment=moe_tiny``
   and the same model with ``model.num_experts=0`` and ``model.ffn_hidden_size = moe_router_topk x
   moe_ffn_hidden_size``, whose MLP has as many weights as the experts one token runs through (the MoE side
   has the router on top: printed). Both have the same FLOPs per token (:func:`pretrain.flops.gpt_flops_per_token`
   counts active parameters), so the ratio is what routing and dispatch cost. Timed rounds alternate which
   model goes first.
2. **Model-state bytes per rank**, 2 processes (dp 2), ``parallel.expert_model_parallel_size`` 1 and 2, for each
   ZeRO stage of ``--stages``: counted after the backward of the second step, as ``pretrain.bench.parallel``
   counts them. At ep 2 each rank holds half the experts (and their gradients and Adam states).

``--dry-run`` composes both configs, prints the models' parameter counts and what would run, and starts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from typing import Any

import torch

from pretrain.bench.parallel import Ranks, _compose, _timed_round, model_states

BASE = ["trainer.device=cpu", "trainer.max_steps=1000", "run_dir=/tmp/pretrain-bench-moe", "experiment=moe_tiny",
        "logger.wandb.mode=disabled"]


def dense_overrides(cfg) -> list[str]:
    """The dense model with the MoE model's active MLP weights: top-k x expert width, no experts."""
    m = cfg.model
    width = int(m.moe_router_topk) * int(m.moe_ffn_hidden_size or m.ffn_hidden_size)
    return ["model.num_experts=0", f"model.ffn_hidden_size={width}", "model.name=dense-same-active"]


def parameter_counts(cfg) -> dict[str, int]:
    from pretrain.flops import gpt_flops_per_token, gpt_parameter_counts
    from pretrain.models import TokenizerInfo, get_family

    vocab = cfg.model.vocab_size or 4096  # the sample tokenizer's size when the config takes it from the data
    args = get_family(str(cfg.model.family)).resolve_args(cfg.model, TokenizerInfo(None, vocab, 0))
    return {**gpt_parameter_counts(args), "flops_per_token": int(gpt_flops_per_token(args)["model"])}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=4, help="timed steps per round and model (default 4)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds alternating MoE and dense (default 3)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first, per model (default 2)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of each timed process (default 2)")
    ap.add_argument("--stages", default="0,1", help="ZeRO stages of the memory part (default 0,1; empty: none)")
    ap.add_argument("--dry-run", action="store_true", help="compose, count, print the plan; run nothing")
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides of conf/train.yaml (applied to both models)")
    a = ap.parse_args(argv)
    stages = [int(s) for s in a.stages.split(",") if s.strip()]
    if not set(stages) <= {0, 1, 2, 3}:
        ap.error(f"--stages {a.stages!r}: a comma-separated list of ZeRO stages 0-3")

    moe_ov = BASE + a.overrides
    moe_cfg = _compose(moe_ov)  # a bad override fails here, before any process starts
    if not moe_cfg.model.num_experts:
        ap.error("the MoE side has model.num_experts=0; benchmark a mixture of experts")
    dense_ov = moe_ov + dense_overrides(moe_cfg)
    counts = {"moe": parameter_counts(moe_cfg), "dense": parameter_counts(_compose(dense_ov))}
    m = moe_cfg.model
    print(f"MoE:   {m.name}: {m.num_layers} layers x {m.hidden_size}, {m.num_experts} experts of "
          f"{m.moe_ffn_hidden_size or m.ffn_hidden_size}, top-{m.moe_router_topk}; "
          f"{counts['moe']['total'] / 1e6:.3f}M parameters, {counts['moe']['active'] / 1e6:.3f}M active")
    print(f"dense: the same with an MLP of {dense_overrides(moe_cfg)[1].split('=')[1]}; "
          f"{counts['dense']['total'] / 1e6:.3f}M parameters (all active); the MoE side's router adds "
          f"{(counts['moe']['active'] - counts['dense']['active']) / 1e3:.1f}k")
    res: dict[str, Any] = {"overrides": a.overrides, "parameters": counts, "timing": None, "memory": {},
                           "torch": torch.__version__}
    if a.dry_run:
        print(f"would run: {a.warmup} warm-up + {a.rounds} x {a.steps} timed steps per model (1 process x "
              f"{a.threads} threads each); model-state bytes at dp2 x ep1 and dp2 x ep2 for ZeRO stages "
              f"{stages or 'none'}")
        return res

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as logs:
        if a.steps > 0 and a.rounds > 0:
            groups = {"moe": Ranks(1, a.threads, moe_ov, logs), "dense": Ranks(1, a.threads, dense_ov, logs)}
            try:
                for g in groups.values():
                    g.send("trainer")
                for g in groups.values():
                    g.collect()
                for g in groups.values():
                    if a.warmup:
                        g.call("time", a.warmup)
                pids = [p.pid for g in groups.values() for p in g.procs]
                seconds: dict[str, list[float]] = {"moe": [], "dense": []}
                foreign: list[float] = []
                for r in range(a.rounds):
                    for name in (("moe", "dense") if r % 2 == 0 else ("dense", "moe")):
                        s, other = _timed_round(groups[name], a.steps, pids)
                        seconds[name].append(s)
                        if other is not None:
                            foreign.append(other)
                info = {name: g.call("info")[0] for name, g in groups.items()}
            finally:
                for g in groups.values():
                    g.close()
            n = a.steps * a.rounds
            tok = {k: info[k]["global_batch"] * info[k]["seq_length"] * n / sum(v) for k, v in seconds.items()}
            res["timing"] = {"steps": n, "tokens_per_s": tok, "ratio": tok["moe"] / tok["dense"],
                             "round_ratios": [d / m_ for m_, d in zip(seconds["moe"], seconds["dense"])],
                             "seconds": seconds, "other_processes_cpu_share": max(foreign) if foreign else None,
                             "global_batch": info["moe"]["global_batch"], "seq_length": info["moe"]["seq_length"],
                             "threads": a.threads}
        if stages:
            runs = [("fp32", s) for s in stages]
            ep1 = Ranks(2, 1, moe_ov + ["parallel.expert_model_parallel_size=1"], logs)
            ep2 = Ranks(2, 1, moe_ov + ["parallel.expert_model_parallel_size=2"], logs)
            try:
                ep1.send("memory", runs)
                ep2.send("memory", runs)
                mem = {"ep1": ep1.collect(), "ep2": ep2.collect()}
            finally:
                ep1.close()
                ep2.close()
            for i, (_, stage) in enumerate(runs):
                row = {}
                for ep, ranks in mem.items():
                    per_rank = [ranks[r][i]["bytes"] for r in range(2)]
                    row[ep] = {"per_rank_total": [model_states(b) for b in per_rank],
                               "bytes": max(per_rank, key=model_states), "stage": ranks[0][i]["stage"]}
                row["ratio"] = max(row["ep2"]["per_rank_total"]) / max(row["ep1"]["per_rank_total"])
                res["memory"][f"zero{stage}"] = row
    res["wall_s"] = time.perf_counter() - t0
    report(res)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)
    return res


def report(res: dict) -> None:
    t = res["timing"]
    if t:
        print(f"\ntokens/s, fp32, 1 process x {t['threads']} thread(s), global batch {t['global_batch']} x seq "
              f"{t['seq_length']}, {t['steps']} timed steps each (rounds alternating)")
        for k in ("moe", "dense"):
            print(f"  {k:6}{t['tokens_per_s'][k]:10.1f} tokens/s")
        share = t["other_processes_cpu_share"]
        if share is not None and share > 0.1:
            print(f"  WARNING: other processes used up to {100 * share:.0f}% of the CPUs: the times are not "
                  "comparable")
    if res["memory"]:
        print("\nmodel-state MiB per rank (params + grads + master + Adam), dp 2, fp32, after the backward of step 2")
        for name, row in res["memory"].items():
            ep1, ep2 = (" / ".join(f"{b / 2**20:.3f}" for b in row[e]["per_rank_total"]) for e in ("ep1", "ep2"))
            print(f"  {name:6} ep1 {ep1}   ep2 {ep2}   ep2/ep1 {row['ratio']:.3f}")
    print("\nsummary")
    if t:
        print(f"  MoE / dense (same active parameters) tokens/s: {t['ratio']:.3f} (rounds "
              f"{min(t['round_ratios']):.3f} to {max(t['round_ratios']):.3f})")
    for name, row in res["memory"].items():
        print(f"  {name} model-state bytes per rank, ep2 / ep1: {row['ratio']:.3f}")
    print(f"  wall time {res['wall_s']:.0f} s; load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
