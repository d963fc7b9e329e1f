"""Bytes one rank holds: model states by ZeRO stage, activations by recomputation mode, logits, buckets.

Model states follow what DeepSpeed 0.19 allocates, checked against ``pretrain.bench.parallel``'s byte counts
(``python -m pretrain.bench.plan``):

* ZeRO-0 (also what one data-parallel rank runs, see ``pretrain.engines.batch_plan``): parameters and gradients
  in the training precision; with bf16/fp16 an fp32 master copy (DeepSpeed's ``FP16_UnfusedOptimizer``), whose
  step also makes an fp32 copy of every gradient for a moment; Adam's two fp32 moments (+ a 4-byte step per
  tensor). bf16 with pipeline stages runs DeepSpeed's ``BF16_Optimizer`` instead: the gradients accumulate in
  fp32 (4 bytes per parameter), at ZeRO-1 with master and moments split over the data-parallel ranks.
* ZeRO-1/2: the parameters whole, flattened per optimizer group (weight decay / none) and padded to a multiple
  of ``2 x dp``; each rank steps its 1/dp slice: fp32 master + moments of the slice. The gradients a rank keeps
  after the backward are those of every parameter that *intersects* its slice, whole (DeepSpeed gathers them
  per parameter before flattening the slice), so a rank whose slice starts inside a large matrix holds a little
  more than 1/dp. ZeRO-1 holds every gradient whole until the step's last backward reduces them (across all the
  step's micro-batches: ``backward_grads``); ZeRO-2 reduces them bucket by bucket as they are produced.
* ZeRO-3: every parameter split into ``ceil(numel / dp)`` pieces (parameters, gradients, master, moments all
  1/dp), plus, whole on every rank, the parameters below ``stage3_param_persistence_threshold``, plus the
  parameters gathered for the layer being computed (and the one prefetched).
* offload: ``offload_optimizer`` moves master + moments to host memory, ``offload_param`` the parameter pieces.

Activations per micro-batch (what autograd keeps between a forward and its backward) follow the tensors our GPT
saves op by op: see :func:`gpt_layer_bytes`. Other families (BERT, T5) are counted with the same attention and
MLP blocks (T5's decoder layers with a second, cross, attention); that is an estimate, validated only for GPT.
Mixture-of-experts layers: expert parallelism splits the experts' weights (``shapes.EXPERTS_SHARDED``,
``Param.ep_split``): a rank holds 1/ep of them and ZeRO partitions them (and their gradients, master copy and
Adam moments) over the dp/ep ranks holding the same experts. Their activations replace the dense MLP's
in each MoE layer by those of the router and the experts (:func:`moe_layer_extra_bytes`, a term next to the
layers').
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from pretrain.planner.shapes import ModelFacts

CATEGORIES = ("params", "grads", "master", "optimizer")
# Transformer layers per ZeRO-3 gather DeepSpeed holds whole at once: the one computing and the one prefetched.
ZERO3_LIVE_LAYERS = 2


@dataclass(frozen=True)
class Setup:
    """One layout of one config: what the memory and time models take."""

    tp: int
    pp: int
    dp: int
    zero_stage: int  # the stage DeepSpeed runs (batch_plan: dp 1 without offload runs 0)
    micro_batch_size: int
    grad_accum_steps: int
    recompute: str | None  # None, "full" or "selective"
    sequence_parallel: bool
    precision: str
    offload_optimizer: bool = False
    offload_param: bool = False
    ep: int = 1  # expert-parallel size (parallel.expert_model_parallel_size): splits the experts, within dp


def precision_bytes(precision: str) -> int:
    return 2 if precision in ("bf16", "fp16") else 4


# ------------------------------------------------------------------------------------------------ model states


def _intersecting(sizes: list[int], dp: int) -> list[int]:
    """For each data-parallel rank, the elements of the tensors of one flattened ZeRO-1/2 group that intersect its
    slice, whole (DeepSpeed: the group padded to a multiple of 2 x dp, cut into dp equal slices). One pass."""
    aligned = math.ceil(sum(sizes) / (2 * dp)) * 2 * dp
    part = aligned // dp
    out = [0] * dp
    start = 0
    for n in sizes:
        if n:
            for r in range(start // part, min((start + n - 1) // part, dp - 1) + 1):
                out[r] += n
        start += n
    return out


def model_states(facts: ModelFacts, s: Setup, stage: int, ds_zero: dict[str, Any]) -> list[dict[str, int]]:
    """Model-state bytes of every data-parallel rank of pipeline stage ``stage``: a dict per rank with
    ``params, grads, master, optimizer`` (on the GPU), ``host`` (offloaded) and ``step_transient`` (held only
    during the optimizer step)."""
    held = facts.stage_params(s.tp, s.pp, stage, s.ep)
    P = precision_bytes(s.precision)
    groups = [[n for p, n in held if p.dim >= 2 and not p.ep_split], [n for p, n in held if p.dim < 2]]
    # ZeRO partitions each group over the ranks that hold the same parameters: the data-parallel group for dense
    # ones, the expert-data-parallel group (dp / ep ranks, the copies of the same experts) for expert ones
    parts = [s.dp for g in groups if g]
    groups = [g for g in groups if g]
    experts = [n for p, n in held if p.ep_split]
    if experts:
        groups.append(experts)
        parts.append(max(1, s.dp // s.ep))
    n = sum(len(g) for g in groups)
    N = sum(sum(g) for g in groups)
    dp = s.dp
    rows = []
    intersect = [_intersecting(g, d) for g, d in zip(groups, parts)] if s.zero_stage in (1, 2) else []
    for r in range(dp):
        b = {"params": 0, "grads": 0, "master": 0, "optimizer": 0, "host": 0, "step_transient": 0,
             "backward_grads": 0}
        bf16_pipeline = P != 4 and s.pp > 1  # DeepSpeed's BF16_Optimizer: gradients accumulate in fp32
        if s.zero_stage == 0:
            b["params"] = b["grads"] = P * N
            b["master"] = 4 * N if P != 4 else 0
            b["optimizer"] = 8 * N + 4 * n
            b["step_transient"] = 4 * N if P != 4 and not bf16_pipeline else 0
            if bf16_pipeline:
                b["grads"] = 4 * N
        elif s.zero_stage == 1 and bf16_pipeline:
            b["params"], b["grads"] = P * N, 4 * N
            b["master"] = 4 * math.ceil(N / dp)
            b["optimizer"] = 8 * math.ceil(N / dp) + 4 * n
        elif s.zero_stage in (1, 2):
            for g, inter, d in zip(groups, intersect, parts):
                aligned = math.ceil(sum(g) / (2 * d)) * 2 * d
                b["params"] += P * aligned
                b["grads"] += P * inter[r % d]
                b["master"] += 4 * (aligned // d)
                b["optimizer"] += 8 * (aligned // d) + 4
            if s.zero_stage == 1:  # every gradient is held whole until the step's last backward reduces them
                b["backward_grads"] = P * N - b["grads"]
        else:
            threshold = float(ds_zero.get("stage3_param_persistence_threshold", 1e5))
            pieces = sum(math.ceil(x / d) for g, d in zip(groups, parts) for x in g)
            persistent = sum(x for g in groups for x in g if x < threshold)
            b["params"] = P * (pieces + persistent)
            b["grads"] = P * pieces
            b["master"] = 4 * pieces
            b["optimizer"] = 8 * pieces + 4 * len(groups)
        if s.offload_optimizer:
            b["host"] += b["master"] + b["optimizer"]
            b["master"] = b["optimizer"] = 0
        if s.offload_param and s.zero_stage == 3:
            threshold = float(ds_zero.get("stage3_param_persistence_threshold", 1e5))
            persistent = sum(x for g in groups for x in g if x < threshold)
            b["host"] += b["params"] - P * persistent
            b["params"] = P * persistent
        rows.append(b)
    return rows


def zero3_gathered(facts: ModelFacts, s: Setup, stage: int, ds_zero: dict[str, Any]) -> int:
    """Bytes of parameters ZeRO-3 holds whole for the layers being computed (current + prefetched), capped by
    ``stage3_max_live_parameters``."""
    if s.zero_stage != 3:
        return 0
    per_layer: dict[str, int] = {}
    rest = 0
    for p, n in facts.stage_params(s.tp, s.pp, stage, s.ep):
        layer = next((w for w in p.stages if w.startswith("layer:")), None)
        if layer:
            per_layer[layer] = per_layer.get(layer, 0) + n
        else:
            rest = max(rest, n)
    largest = sorted(list(per_layer.values()) + [rest], reverse=True)[:ZERO3_LIVE_LAYERS]
    live = min(sum(largest), float(ds_zero.get("stage3_max_live_parameters", 1e9)))
    return int(precision_bytes(s.precision) * live)


def buckets(facts: ModelFacts, s: Setup, stage: int, ds_zero: dict[str, Any]) -> int:
    """Communication buffers of the gradient reduction: DeepSpeed's ``reduce_bucket_size`` elements (whatever the
    model's size: ``torch.empty`` of the configured size), two with ``overlap_comm`` at ZeRO-1/2; ZeRO-0 at
    dp > 1 flattens the gradients in chunks of up to that many elements."""
    if s.dp == 1 and s.zero_stage == 0:
        return 0
    grads = sum(n for _, n in facts.stage_params(s.tp, s.pp, stage, s.ep))
    P = precision_bytes(s.precision)
    reduce = int(float(ds_zero.get("reduce_bucket_size", 5e8)))
    if s.zero_stage == 0:
        return P * min(grads, reduce)
    if not ds_zero.get("contiguous_gradients", True):
        return 0
    # in the gradient-accumulation precision: the training precision unless data_types.grad_accum_dtype says fp32
    per = 4 if ds_zero.get("grad_accum_dtype") in ("fp32", "float32") else P
    if s.zero_stage in (1, 2):
        return per * reduce * (2 if ds_zero.get("overlap_comm") else 1)
    return per * reduce


# ------------------------------------------------------------------------------------------------ activations


def _norm_bytes(normalization: str, width: float, a: int) -> float:
    """Bytes per token a norm keeps: LayerNorm its input + fp32 mean and rstd; our RMSNorm (fp32 math) the fp32
    input, the fp32 rstd and the normalized input in the training precision."""
    if normalization == "rmsnorm":
        return 4 * width + (a * width if a != 4 else 4 * width) + 4
    return a * width + 8


def gpt_layer_bytes(args: Any, tp: int, sp: bool, a: int) -> dict[str, float]:
    """Bytes per token one transformer layer keeps for its backward, by recomputation mode, and what the
    recomputation brings back for a moment in the backward. Op by op (``pretrain/models/gpt/model.py``):

    * each norm: see :func:`_norm_bytes` (on the 1/tp sequence chunk under sequence parallelism);
    * the norm's output, input of q/k/v (up/gate): ``a h`` (whole: the linears of a tensor-parallel region read
      the gathered sequence);
    * q, k, v (this rank's heads): ``a (h + 2 kv) / tp``, kept by the fused attention kernel (flash / memory-
      efficient: no ``seq x seq`` matrix), with its output ``a h / tp`` (laid out ``[batch, seq, heads, dim]``,
      so the reshape for the output projection is a view of it) and log-sum-exp ``4 heads / tp``; rotary
      embeddings add nothing (``x cos + rot(x) sin`` keeps only the tables: q and k after it replace q and k);
    * the MLP: GELU its input and output (``2 a f / tp``), SwiGLU gate, SiLU(gate), up and their product
      (``4 a f / tp``);
    * dropout (``p > 0``): a one-byte mask of each of the two residual branches.
    """
    h, f, t = args.hidden_size, args.ffn_hidden_size, tp
    heads = args.num_attention_heads
    kv = getattr(args, "num_key_value_heads", heads) * (h // heads)
    chunk = h / t if sp else h
    norm = _norm_bytes(getattr(args, "normalization", "layernorm"), chunk, a)
    core_extra = 4 * heads / t  # the log-sum-exp: all the attention core keeps beyond its inputs and output
    attn = norm + a * h + a * (h + 2 * kv) / t + a * h / t + core_extra
    n_mats = 4 if args.activation in ("swiglu", "geglu") else 2
    mlp = norm + a * h + n_mats * a * f / t
    dropout = 2 * chunk if getattr(args, "hidden_dropout", 0.0) > 0 else 0
    full = attn + mlp + dropout
    return {"none": full, "selective": full - core_extra, "full": a * chunk,
            "recompute_selective": core_extra, "recompute_full": full - a * chunk}  # the layer's input is held


def activations(facts: ModelFacts, s: Setup, stage: int) -> dict[str, float]:
    """Activation bytes of pipeline stage ``stage``: ``layers`` (all micro-batches in flight), ``recompute``
    (the largest piece recomputation brings back during the backward), ``embedding`` and ``logits`` (the
    output layer's fp32 log-softmax kept for the backward, and the two fp32 ``tokens x vocab/tp`` gradients of
    the loss's backward), per micro-batch and in all, with ``in_flight`` micro-batches (1F1B)."""
    args = facts.args
    a = precision_bytes(s.precision)
    tokens = s.micro_batch_size * _tokens_per_sample(facts)
    per = gpt_layer_bytes(args, s.tp, s.sequence_parallel, a)
    layer_key = s.recompute or "none"
    layers_here = facts.num_layers // s.pp
    # T5's decoder layers carry a second (cross) attention block: count them as 1.5 layers
    weight = getattr(facts, "layer_weight", 1.0)
    saved_layers = per[layer_key] * layers_here * weight
    recompute = per.get(f"recompute_{s.recompute}", 0.0) if s.recompute else 0.0
    first, last = stage == 0, stage == s.pp - 1
    h = args.hidden_size
    V = args.vocab_size
    embedding = 8.0 if first else 0.0  # the token ids the embedding's backward reads
    head = 0.0
    logits_saved = logits_peak = 0.0
    if last:
        head = _norm_bytes(getattr(args, "normalization", "layernorm"), h / s.tp if s.sequence_parallel else h, a)
        head += a * h + 8  # the output layer's input, the labels
        logits_saved = 4.0 * V / s.tp
        logits_peak = 8.0 * V / s.tp  # the loss's gradient and the log-softmax's, both fp32, during the backward
    moe_layers = _moe_layers_on_stage(facts, s.pp, stage)
    if moe_layers:  # the router's and the experts' activations instead of a dense MLP's, in each MoE layer
        extra = moe_layer_extra_bytes(args, s.tp, a)
        if layer_key != "full":
            saved_layers += extra * moe_layers
        elif s.recompute == "full":
            recompute += extra
    in_flight = min(s.pp - stage, s.grad_accum_steps) if s.pp > 1 else 1
    per_micro = tokens * (saved_layers + embedding + head + logits_saved)
    return {
        "per_micro_batch": per_micro,
        "in_flight": in_flight,
        "layers": tokens * saved_layers * in_flight,
        "embedding_and_head": tokens * (embedding + head) * in_flight,
        "logits": tokens * logits_saved * in_flight,
        "logits_backward": tokens * logits_peak,
        "recompute": tokens * recompute * weight,
        "saved": per_micro * in_flight,
    }


def _tokens_per_sample(facts: ModelFacts) -> int:
    return facts.family.tokens_per_sample(facts.args)


def _moe_layers_on_stage(facts: ModelFacts, pp: int, stage: int) -> int:
    from pretrain.flops import moe_layer_indices

    if not facts.num_experts:
        return 0
    per_stage = facts.num_layers // pp
    return sum(1 for i in moe_layer_indices(facts.args) if i // per_stage == stage)


def moe_layer_extra_bytes(args: Any, tp: int, a: int) -> float:
    """Bytes per token a mixture-of-experts layer keeps beyond the dense MLP :func:`gpt_layer_bytes` counted for
    it: the router's fp32 logits and probabilities (``8 E``), and per routed copy of the token (``k``, times the
    capacity factor's padding when one is set) the dispatched input and the combined output (``2 a h``) and the
    expert's MLP activations (SwiGLU ``4 a f_e``, GELU ``2 a f_e``), less the dense MLP's (``4 a f / tp`` or
    ``2 a f / tp``). Experts are not split by tensor parallelism."""
    E, k = args.num_experts, args.moe_router_topk
    f_e = args.moe_ffn_hidden_size or args.ffn_hidden_size
    n_mats = 4 if args.activation in ("swiglu", "geglu") else 2
    copies = k * max(1.0, float(getattr(args, "moe_capacity_factor", None) or 1.0))
    return 8 * E + copies * (2 * a * args.hidden_size + n_mats * a * f_e) - n_mats * a * args.ffn_hidden_size / tp
