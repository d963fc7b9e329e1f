"""The planner's figures against measurement: ``pretrain.planner`` predicted vs what our stack allocates.

    python -m pretrain.bench.plan                        # runs pretrain.bench.parallel --tiny for the bytes
    python -m pretrain.bench.plan --from-json res.json   # ... or reads a run of it (--json of that bench)

1. **Model-state bytes per rank** (parameters + gradients + fp32 master + Adam moments): predicted by
   :func:`pretrain.planner.memory.model_states` for every rank of ``pretrain.bench.parallel``'s runs (its tiny
   5.2M GPT: dp1, ZeRO 0-3 at dp2, tp2, pp2; bf16 and fp32) against the bytes that bench counts on the live
   DeepSpeed engines after a backward.
2. **Activation bytes per micro-batch** (what autograd keeps for the backward) of the tiny test model
   (``experiment=gpt_tiny``, micro-batch 4) and the bench-sized 29.5M GPT of ``pretrain.bench.train``, without
   recomputation, selective and full, fp32 and bf16: predicted by :func:`pretrain.planner.memory.activations`
   against a measurement in this process. There is no ``torch.cuda.max_memory_allocated`` on a CPU, and the
   profiler's memory events are not recorded by this torch build on CPU, so the measurement is
   ``torch.autograd.graph.saved_tensors_hooks``: every tensor autograd saves in the forward, each storage
   counted once, parameters and buffers left out (exact and deterministic, independent of the allocator). The
   *peak* adds what recomputation brings back for a moment in the backward: the saved tensors of the
   checkpointed region (one layer under ``full``, one attention core under ``selective``) run without the
   checkpoint under the same hooks, less its inputs and output (which are held anyway).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
from typing import Any

import torch

# The tiny test model (tests/conftest.py TINY: experiment=gpt_tiny, micro-batch 4; the sample tokenizer's 4096
# tokens) and the bench-sized GPT (pretrain.bench.train, pretrain.bench.parallel's default shape).
ACTIVATION_MODELS = {
    "tiny": ["experiment=gpt_tiny", "trainer.micro_batch_size=4", "model.vocab_size=4096"],
    "bench": ["model=gpt/tiny", "model.num_layers=8", "model.hidden_size=512", "model.num_attention_heads=8",
              "model.vocab_size=8192", "model.seq_length=256", "trainer.micro_batch_size=4"],
}
RECOMPUTE = (None, "selective", "full")
_MODELS: dict = {}  # the last model measure_activations made (see there)


def _compose(overrides: list[str]):
    from pretrain.plan import compose_train

    return compose_train(["trainer.device=cpu", "run_dir=/tmp/pretrain-bench-plan", *overrides])


def _setup(tp=1, pp=1, dp=1, stage=0, micro=1, accum=1, recompute=None, precision="fp32", sp=False):
    from pretrain.planner.memory import Setup

    return Setup(tp, pp, dp, stage, micro, accum, recompute, sp, precision)


# ------------------------------------------------------------------------------------------------ model states


def model_state_rows(bench: dict[str, Any]) -> list[dict[str, Any]]:
    """Predicted vs measured model-state bytes of every rank of every run of a ``pretrain.bench.parallel`` result."""
    from pretrain.bench.parallel import model_states
    from pretrain.planner import model_facts
    from pretrain.planner.memory import CATEGORIES
    from pretrain.planner.memory import model_states as predict

    facts = model_facts(_bench_cfg(bench))
    zero = {"stage3_param_persistence_threshold": 1e5}
    rows = []
    for prec, runs in bench["memory"].items():
        for name, r in runs.items():
            if name == "dp1":
                cases = [("dp1", _setup(stage=0, precision=prec), 0, 0, model_states(r["bytes"]))]
            elif "tp" in r:
                tp, pp, sp = r["tp"], r["pp"], r.get("sp", False)
                cases = [(f"tp{tp}{' sp' if sp else ''} pp{pp} rank {k}",
                          _setup(tp=tp, pp=pp, stage=r["stage"], precision=prec, sp=sp),
                          rk["pipeline_stage"], 0, model_states(rk["bytes"])) for k, rk in enumerate(r["per_rank"])]
            else:
                cases = [(f"ZeRO-{r['stage']} dp2 rank {k}", _setup(dp=2, stage=r["stage"], precision=prec), 0, k,
                          total) for k, total in enumerate(r["per_rank_total"])]
            for label, s, stage, dp_rank, measured in cases:
                b = predict(facts, s, stage, zero)[dp_rank]
                predicted = sum(b[k] for k in CATEGORIES)
                rows.append({"precision": prec, "run": label, "predicted": predicted, "measured": measured,
                             "ratio": predicted / measured})
    return rows


def engine_activation_rows(bench: dict[str, Any]) -> list[dict[str, Any]]:
    """Predicted vs measured activation bytes of one micro-batch per rank in ``pretrain.bench.parallel``'s ZeRO-0
    DeepSpeed runs (dp1, tp2 and tp2 with sequence parallelism: the tensor-parallel shares of every term, and the
    vocabulary-parallel loss)."""
    from pretrain.planner import model_facts
    from pretrain.planner.memory import activations

    facts = model_facts(_bench_cfg(bench))
    rows = []
    for prec, runs in bench["memory"].items():
        cases = [("dp1", 1, False, runs["dp1"].get("activation_bytes"))]
        for key, sp in (("tp2_pp1", False), ("tp2_pp1_sp", True)):
            if key in runs:
                cases += [(f"tp2{' sp' if sp else ''} rank {k}", 2, sp, r.get("activation_bytes"))
                          for k, r in enumerate(runs[key]["per_rank"])]
        for label, tp, sp, measured in cases:
            if not measured:
                continue
            pred = activations(facts, _setup(tp=tp, micro=1, precision=prec, sp=sp), 0)["saved"]
            rows.append({"precision": prec, "run": label, "predicted": pred, "measured": measured,
                         "ratio": pred / measured})
    return rows


def _bench_cfg(bench: dict[str, Any]):
    from pretrain.bench.parallel import BASE

    sh = bench["shape"]
    return _compose(BASE + [
        f"model.num_layers={sh['layers']}", f"model.hidden_size={sh['hidden']}",
        f"model.num_attention_heads={sh['heads']}", f"model.vocab_size={sh['vocab']}",
        f"model.seq_length={sh['seq']}", *bench.get("overrides", [])])


# ------------------------------------------------------------------------------------------------ activations


def saved_bytes(fn, exclude: set[int], exclude_output: bool = False) -> int:
    """Bytes of the tensors autograd saves while ``fn()`` runs (the forward only: what it saves is known then),
    each storage once, ``exclude`` (data pointers of parameters, buffers, inputs) left out, and with
    ``exclude_output`` the storage of what ``fn`` returns."""
    seen: dict[int, int] = {}
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        st = t.untyped_storage()
        ptr = st.data_ptr()
        if ptr not in seen and ptr not in exclude and t.device.type != "meta":
            seen[ptr] = st.nbytes()
            total += st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    if exclude_output and isinstance(out, torch.Tensor):
        total -= seen.get(out.untyped_storage().data_ptr(), 0)
    return total


def _ptrs(*tensors) -> set[int]:
    return {t.untyped_storage().data_ptr() for t in tensors}


def measure_activations(facts, recompute: str | None, precision: str, micro: int, seed: int = 0) -> dict[str, int]:
    """(saved bytes of one micro-batch's forward, bytes its recomputation brings back) of the family's model
    built as the trainer builds it (``ModelFamily.build``, recomputation applied), in ``precision``."""
    import dataclasses

    from pretrain.models.recompute import apply_ac

    family = facts.family
    args = dataclasses.replace(facts.args, activation_checkpointing=recompute is not None,
                               recompute_granularity=recompute or "full")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
    # ModelFamily.build = apply_ac(make_model(args)); the model is made once per shape and precision (its
    # initialization is most of the time of a measurement) and copied for each recomputation mode
    key = (id(facts), precision, seed)
    if key not in _MODELS:
        torch.manual_seed(seed)
        _MODELS.clear()
        _MODELS[key] = family.make_model(facts.args).to(dtype)
    model = apply_ac(copy.deepcopy(_MODELS[key]), family.recompute, args).train()
    fixed = _ptrs(*model.parameters(), *model.buffers())
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, args.vocab_size, (micro, args.seq_length), generator=g)
    saved = saved_bytes(lambda: model(x, x), fixed)
    back = 0
    if recompute is not None:
        layer = model.layers[-1]
        h = torch.randn(micro, args.seq_length, args.hidden_size, dtype=dtype, requires_grad=True)
        rope = (model.rope_cos.to(dtype), model.rope_sin.to(dtype)) if args.position_embedding == "rope" else None
        if recompute == "full":  # the layer's own forward, not the checkpointed one
            back = saved_bytes(lambda: type(layer).forward(layer, h, rope), fixed | _ptrs(h))
        else:
            attn = layer.self_attn
            q = attn.q_proj(h).detach().requires_grad_()
            k = attn.k_proj(h).detach().requires_grad_()
            v = attn.v_proj(h).detach().requires_grad_()
            back = saved_bytes(lambda: type(attn).core(attn, q, k, v, rope, attn.spec(), 0.0), fixed | _ptrs(q, k, v),
                               exclude_output=True)
    return {"saved": saved, "recompute": back}


def activation_rows(models=("tiny", "bench"), precisions=("fp32", "bf16"),
                    micro_batch: int | None = None) -> list[dict[str, Any]]:
    """Predicted vs measured activation rows; ``micro_batch`` replaces the models' own (the test's shortcut)."""
    from pretrain.planner import model_facts
    from pretrain.planner.memory import activations

    rows = []
    for name in models:
        cfg = _compose(ACTIVATION_MODELS[name])
        facts = model_facts(cfg)
        micro = micro_batch or int(cfg.trainer.micro_batch_size)
        for prec in precisions:
            for rc in RECOMPUTE:
                pred = activations(facts, _setup(micro=micro, recompute=rc, precision=prec), 0)
                meas = measure_activations(facts, rc, prec, micro)
                p_peak, m_peak = pred["saved"] + pred["recompute"], meas["saved"] + meas["recompute"]
                rows.append({"model": name, "precision": prec, "recompute": rc or "none",
                             "predicted_saved": pred["saved"], "measured_saved": meas["saved"],
                             "predicted_peak": p_peak, "measured_peak": m_peak, "ratio": p_peak / m_peak,
                             "ratio_saved": pred["saved"] / meas["saved"]})
    return rows


# ------------------------------------------------------------------------------------------------ main


def run_bench_parallel(path: str) -> dict[str, Any]:
    """``pretrain.bench.parallel --tiny`` (memory part only) in its own processes; its JSON."""
    env = dict(os.environ, DS_ACCELERATOR="cpu", PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, "-m", "pretrain.bench.parallel", "--tiny", "--steps", "0", "--json", path],
                          env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"pretrain.bench.parallel failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    with open(path) as f:
        return json.load(f)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--from-json", help="a pretrain.bench.parallel --json result (else it runs --tiny)")
    ap.add_argument("--json", help="also write the rows to this file")
    a = ap.parse_args(argv)
    if a.from_json:
        with open(a.from_json) as f:
            bench = json.load(f)
    else:
        with tempfile.TemporaryDirectory() as d:
            bench = run_bench_parallel(os.path.join(d, "bench.json"))
    states, engine_acts, acts = model_state_rows(bench), engine_activation_rows(bench), activation_rows()
    print(f"model-state bytes per rank (params + grads + fp32 master + Adam), pretrain.bench.parallel's "
          f"{bench['parameters'] / 1e6:.2f}M GPT; measured on the live DeepSpeed engines")
    print(f"{'':6}{'run':<22}{'predicted MiB':>15}{'measured MiB':>14}{'ratio':>8}")
    for r in states:
        print(f"{r['precision']:6}{r['run']:<22}{r['predicted'] / 2**20:15.3f}{r['measured'] / 2**20:14.3f}"
              f"{r['ratio']:8.3f}")
    print("\nactivation bytes of one micro-batch (micro-batch 1) per rank in the ZeRO-0 DeepSpeed runs of that bench")
    print(f"{'':6}{'run':<22}{'predicted MiB':>15}{'measured MiB':>14}{'ratio':>8}")
    for r in engine_acts:
        print(f"{r['precision']:6}{r['run']:<22}{r['predicted'] / 2**20:15.3f}{r['measured'] / 2**20:14.3f}"
              f"{r['ratio']:8.3f}")
    print("\nactivation bytes per micro-batch (saved for the backward; peak = + what recomputation brings back), "
          "measured with saved_tensors_hooks")
    print(f"{'':7}{'':6}{'recompute':<11}{'saved pred':>12}{'saved meas':>12}{'peak pred':>12}{'peak meas':>12}"
          f"{'ratio':>8}")
    for r in acts:
        print(f"{r['model']:7}{r['precision']:6}{r['recompute']:<11}{r['predicted_saved'] / 2**20:12.3f}"
              f"{r['measured_saved'] / 2**20:12.3f}{r['predicted_peak'] / 2**20:12.3f}"
              f"{r['measured_peak'] / 2**20:12.3f}{r['ratio']:8.3f}")
    worst_s = max(abs(r["ratio"] - 1) for r in states)
    worst_a = max(abs(r["ratio"] - 1) for r in acts + engine_acts)
    print(f"\nsummary: model states within {100 * worst_s:.2f}% (target 5%), activation peaks within "
          f"{100 * worst_a:.2f}% (target 15%)")
    res = {"model_states": states, "engine_activations": engine_acts, "activations": acts}
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    return res


if __name__ == "__main__":
    main()
