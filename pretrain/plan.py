"""Will this config fit, how fast will it run, and which layout is best: the pre-flight planner.

    python -m pretrain.plan experiment=llama_1b --gpus 8 --gpu h100
    python -m pretrain.plan experiment=llama_7b trainer.precision=bf16 --gpus 64 --gpu h200 --nodes 8 --json
    python -m pretrain.train experiment=llama_1b $(python -m pretrain.plan experiment=llama_1b --gpus 8 --best)

Every argument that is not a flag is a training override, composed and checked as ``pretrain.train`` does (the
layout with the trainer's own checks). It prints the configured layout's memory per GPU by kind, then every
valid layout (tp x pp x dp x ZeRO stage x micro-batch x recomputation) ranked by predicted tokens/s, each marked
fits / does not fit. ``--best`` prints only the overrides of the fastest layout that fits. How to read it and the
formulas: docs/planning.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from pretrain.core.errors import UserError
from pretrain.planner import DEVICES, make_plan
from pretrain.planner.layouts import DEFAULT_HEADROOM, Evaluated, gib
from pretrain.planner.timing import DEFAULT_EFFICIENCY


def compose_train(overrides: list[str]):
    """The training config of a command line, composed and key-checked as ``pretrain.train`` does."""
    from pretrain.launch.config import compose
    from pretrain.validation import check_command_line

    check_command_line(overrides)
    cfg, _ = compose("train", overrides)
    return cfg


def _layout_name(e: Evaluated) -> str:
    s = e.setup
    rc = {None: "-", "full": "full", "selective": "sel"}[s.recompute]
    ep = f" ep{s.ep}" if s.ep > 1 else ""  # a mixture of experts' expert-parallel size
    return f"tp{s.tp} pp{s.pp} dp{s.dp}{ep} z{s.zero_stage} mb{s.micro_batch_size}x{s.grad_accum_steps} rc:{rc}"


def breakdown(e: Evaluated) -> list[str]:
    m = e.memory
    lines = [f"  parameters {gib(m['params']):8.2f} GiB   gradients {gib(m['grads']):8.2f}   fp32 master "
             f"{gib(m['master']):8.2f}   Adam moments {gib(m['optimizer']):8.2f}"
             + (f"   + whole gradients until reduced {gib(m['backward_grads']):.2f}" if m["backward_grads"] else ""),
             f"  activations {gib(m['activations']):7.2f} GiB + logits {gib(m['logits']):.2f} "
             f"({m['in_flight_micro_batches']} micro-batch(es) in flight, {gib(m['activations_per_micro_batch']):.2f}"
             f" each)   "
             f"backward transient {gib(m['transient']):.2f} (recompute {gib(m['recompute']):.2f}, loss "
             f"{gib(m['logits_backward']):.2f})",
             f"  buckets {gib(m['buckets']):.2f} GiB   ZeRO-3 gathered {gib(m['zero3_gathered']):.2f}   "
             f"optimizer-step copy {gib(m['step_transient']):.2f}   offloaded to host {gib(m['host']):.2f}",
             f"  total {gib(m['total']):.2f} GiB (peak in the {m['peak_at']}, pipeline stage {m['stage']}) of "
             f"{gib(e.usable_bytes):.2f} usable -> {'fits' if e.fits else 'DOES NOT FIT'}"]
    t = e.time
    lines.append(f"  step {t['step_s']:.3f} s (compute {t['compute_s']:.3f}, bubble {t['bubble_s']:.3f}, tp "
                 f"{t['tp_comm_s']:.3f}, pp {t['pp_comm_s']:.3f}, dp {t['dp_comm_s']:.3f}"
                 + (f", ep all-to-all {t['ep_comm_s']:.3f}" if t.get("ep_comm_s") else "") + ")   "
                 f"{t['tokens_per_s']:,.0f} tokens/s   MFU {100 * t['mfu']:.1f}%")
    return lines


def render(res: dict[str, Any], top: int) -> str:
    m, d = res["model"], res["device"]
    active = m.get("active_parameters")
    out = [f"model {m['name']} ({m['family']}): {m['parameters'] / 1e6:,.1f}M parameters"
           + (f" ({active / 1e6:,.1f}M active per token)" if active and active != m["parameters"] else "")
           + f", {m['layers']} layers, "
           f"vocab {m['vocab_size']}, {m['model_flops_per_token']:.3g} model FLOPs/token"
           + (f" [{m['vocab_note']}]" if m["vocab_note"] else ""),
           f"{res['gpus']} x {d['name']} ({gib(d['memory_bytes']):.1f} GiB, {d['peak_flops'] / 1e12:.0f} TFLOP/s "
           f"{res['precision']}) on {res['nodes']} node(s) x {res['gpus_per_node']}; global batch "
           f"{res['global_batch_size']}; headroom {100 * res['headroom']:.0f}% of memory kept free; matmul "
           f"efficiency {100 * res['efficiency']:.0f}% of peak"]
    if res["note"]:
        out.append(f"note: {res['note']}")
    c = res["configured"]
    out += ["", f"configured layout: {_layout_name(c)}", *breakdown(c)]
    layouts = res["layouts"]
    if layouts:
        shown = layouts if top <= 0 else layouts[:top]
        fit = sum(e.fits for e in layouts)
        out += ["", f"{len(layouts)} valid layouts, {fit} fit; ranked by tokens/s"
                + (f" (first {len(shown)}; --top 0 for all)" if len(shown) < len(layouts) else ""),
                f"{'#':>4}  {'layout':<38}{'GiB/GPU':>9}  {'fits':<5}{'step s':>9}{'tokens/s':>12}{'MFU':>7}"]
        for i, e in enumerate(shown, 1):
            mark = "  <- configured" if e.configured else ""
            out.append(f"{i:>4}  {_layout_name(e):<38}{gib(e.memory['total']):9.2f}  {'yes' if e.fits else 'NO':<5}"
                       f"{e.time['step_s']:9.3f}{e.time['tokens_per_s']:12,.0f}{100 * e.time['mfu']:6.1f}%{mark}")
        best = res["best"]
        out += ["", f"best: {' '.join(best.overrides)}" if best else
                "best: no layout fits; more GPUs, offload (parallel=zero3_offload) or a smaller micro-batch"]
    return "\n".join(out) + "\n"


def to_json(res: dict[str, Any]) -> dict[str, Any]:
    out = dict(res)
    out["configured"] = res["configured"].as_dict()
    out["layouts"] = [e.as_dict() for e in res["layouts"]]
    out["best"] = res["best"].as_dict() if res["best"] else None
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pretrain.plan", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpus", type=int, required=True, help="GPUs in all")
    p.add_argument("--gpu", default="h100", help=f"the GPU: {', '.join(DEVICES)} (default h100)")
    p.add_argument("--nodes", type=int, default=None, help="nodes the GPUs span (default: 8 GPUs per node)")
    p.add_argument("--best", action="store_true", help="print only the overrides of the best layout that fits")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument("--top", type=int, default=25, help="layouts to list (0: all; --json lists all)")
    p.add_argument("--headroom", type=float, default=DEFAULT_HEADROOM, help="fraction of memory kept free")
    p.add_argument("--efficiency", type=float, default=DEFAULT_EFFICIENCY, help="fraction of peak FLOP/s reached")
    p.add_argument("--vocab-size", type=int, default=None,
                   help="the tokenizer's vocabulary when model.vocab_size is null and data.path is not readable here")
    p.add_argument("overrides", nargs="*", help="training overrides (Hydra), as for pretrain.train")
    a = p.parse_args(argv)
    try:
        cfg = compose_train(a.overrides)
        res = make_plan(cfg, a.gpus, a.gpu, a.nodes, headroom=a.headroom, efficiency=a.efficiency,
                        vocab_size=a.vocab_size)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if a.best:
        if res["best"] is None:
            print(f"error: no layout of {a.gpus} x {a.gpu} fits this config", file=sys.stderr)
            return 1
        print(" ".join(res["best"].overrides))
    elif a.json:
        print(json.dumps(to_json(res), indent=1))
    else:
        sys.stdout.write(render(res, a.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
