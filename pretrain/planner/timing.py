"""Time per step and MFU of a layout: compute from the FLOP formulas the trainer logs, communication from the
bytes each parallel dimension moves over the links it spans.

* compute: the family's hardware FLOPs per token (``ModelFamily.flops_per_token``, recomputation included) x the
  step's tokens / the world size, at ``efficiency`` x the device's dense peak (``pretrain.flops.PEAK_FLOPS``),
  plus ``LAYER_OVERHEAD_S`` per layer and micro-batch (kernel launches); the 1F1B pipeline adds its bubble,
  ``(pp - 1) / micro-batches`` of it.
* tensor parallelism: per layer and micro-batch, Megatron's four all-reduces of the ``[micro, seq, hidden]``
  activations (two forward, two backward; two more forward under full recomputation; sequence parallelism
  moves the same bytes as all-gathers and reduce-scatters); not overlapped.
* pipeline: each micro-batch's activations sent forward and their gradients back across every stage boundary
  (bytes + ``P2P_LATENCY_S``); on the critical path ``micro-batches + pp - 1`` times.
* data parallelism, in ring reduce-scatters / all-gathers of ``(dp-1)/dp`` x the rank's gradient bytes: ZeRO-0 one
  all-reduce (two of them) after the last backward; ZeRO-1 a reduce-scatter in the last backward and an
  all-gather of the updated parameters; ZeRO-2 a reduce-scatter in every micro-batch's backward and the
  all-gather; ZeRO-3 per micro-batch a gather in the forward, a gather and a reduce-scatter in the backward, plus
  a latency per collective and layer. With ``overlap_comm`` (GPU runs) what runs inside a forward/backward
  hides behind that micro-batch's compute (a third of it forward, two thirds backward).
* expert parallelism: per MoE layer and micro-batch, four all-to-alls of the routed token copies (dispatch and
  combine, forward and backward) over the ep ranks; not overlapped. The compute counts active parameters only
  (the experts a token runs through), as the trainer's MFU does.
* A group stays on NVLink while its ranks fit in one node (tensor ranks innermost, then data, then pipeline,
  as ``pretrain.parallel.topology`` orders them); otherwise it runs at the inter-node bandwidth.

Not modelled: kernel launch overheads, the optimizer step's memory traffic, stragglers, the data loader.
"""

from __future__ import annotations

from typing import Any

from pretrain.planner.devices import BUS_EFFICIENCY, Device
from pretrain.planner.memory import Setup, precision_bytes
from pretrain.planner.shapes import ModelFacts

# The fraction of the dense peak large transformer matmuls reach in practice (what good runs report as MFU
# before communication); a command-line flag (--efficiency) overrides it.
DEFAULT_EFFICIENCY = 0.6
# Seconds each layer costs per micro-batch beyond its FLOPs: ~20 kernel launches forward and backward at ~5 us
# each; what makes many small micro-batches slower than few large ones.
LAYER_OVERHEAD_S = 1e-4
# ZeRO-3 runs three collectives per layer and micro-batch (gather forward, gather backward, reduce-scatter),
# each with a latency of its own that overlap cannot hide.
ZERO3_COLLECTIVE_LATENCY_S = 3e-5
# The pipeline's send/receive of one micro-batch between two stages, beyond its bytes.
P2P_LATENCY_S = 5e-5


def _bandwidth(device: Device, group_span: int, gpus_per_node: int) -> float:
    """Bus bandwidth of a group whose ranks span ``group_span`` consecutive ranks."""
    bw = device.intra_node_bw if group_span <= gpus_per_node else device.inter_node_bw
    return bw * BUS_EFFICIENCY


def step_time(facts: ModelFacts, s: Setup, device: Device, global_batch: int, gpus_per_node: int,
              efficiency: float = DEFAULT_EFFICIENCY, overlap_comm: bool = True) -> dict[str, Any]:
    """Seconds per optimizer step by part, tokens/s and MFU."""
    world = s.tp * s.pp * s.dp
    tokens_per_sample = facts.family.tokens_per_sample(facts.args)
    tokens = global_batch * tokens_per_sample
    model_fpt, hw_fpt = facts.flops["model"], _hardware_flops(facts, s)
    peak = device.peak_flops(s.precision)
    m = s.grad_accum_steps
    compute = hw_fpt * tokens / world / (peak * efficiency)
    compute += LAYER_OVERHEAD_S * (facts.num_layers // s.pp) * m * (1.5 if s.recompute == "full" else 1.0)
    bubble = compute * (s.pp - 1) / m if s.pp > 1 else 0.0
    a = precision_bytes(s.precision)
    args = facts.args
    micro_act = s.micro_batch_size * tokens_per_sample * args.hidden_size * a
    layers_here = facts.num_layers // s.pp
    tp_comm = 0.0
    if s.tp > 1:
        per_allreduce = 2 * (s.tp - 1) / s.tp * micro_act / _bandwidth(device, s.tp, gpus_per_node)
        n = 4 + (2 if s.recompute == "full" else 0)
        tp_comm = n * layers_here * m * per_allreduce
    pp_comm = 0.0
    if s.pp > 1:
        send = micro_act / s.tp / _bandwidth(device, s.tp * s.dp * 2, gpus_per_node)
        pp_comm = 2 * (m + s.pp - 1) * (send + P2P_LATENCY_S)
    ep_comm = 0.0
    if s.ep > 1 and facts.num_experts:
        ep_comm = _all_to_all_s(facts, s, device, tokens_per_sample, gpus_per_node, a)
    dp_comm = 0.0
    if s.dp > 1:
        # a reduce-scatter or an all-gather of the rank's gradient (parameter) bytes over the ring: dense ones over
        # the dp ranks, expert ones over the dp / ep ranks that hold the same experts
        half = 0.0
        for st in range(s.pp):
            held = facts.stage_params(s.tp, s.pp, st, s.ep)
            dense = sum(n for p, n in held if not p.ep_split)
            expert = sum(n for p, n in held if p.ep_split)
            dpe = max(1, s.dp // s.ep)
            t = (s.dp - 1) / s.dp * dense * a / _bandwidth(device, s.tp * s.dp, gpus_per_node)
            if expert and dpe > 1:  # the copies of one expert are ep ranks apart
                t += (dpe - 1) / dpe * expert * a / _bandwidth(device, s.tp * s.dp, gpus_per_node)
            half = max(half, t)
        fwd_micro, bwd_micro = compute / m / 3, compute / m * 2 / 3
        hide = overlap_comm

        def exposed(t: float, behind: float) -> float:
            return max(0.0, t - behind) if hide else t

        if s.zero_stage == 0:  # one all-reduce after the step's last backward
            dp_comm = 2 * half
        elif s.zero_stage == 1:  # reduce-scatter in the last backward, all-gather of the updated parameters
            dp_comm = exposed(half, bwd_micro) + half
        elif s.zero_stage == 2:  # reduce-scatter in every micro-batch's backward, all-gather after the step
            dp_comm = m * exposed(half, bwd_micro) + half
        else:  # parameters gathered in every forward and backward, gradients reduce-scattered in every backward
            dp_comm = m * (exposed(half, fwd_micro) + exposed(2 * half, bwd_micro))
            dp_comm += m * ZERO3_COLLECTIVE_LATENCY_S * 3 * (facts.num_layers // s.pp)
    total = compute + bubble + tp_comm + pp_comm + dp_comm + ep_comm
    return {
        "step_s": total, "compute_s": compute, "bubble_s": bubble, "tp_comm_s": tp_comm, "pp_comm_s": pp_comm,
        "dp_comm_s": dp_comm, "ep_comm_s": ep_comm, "tokens_per_s": tokens / total, "tokens_per_step": tokens,
        "mfu": model_fpt * tokens / (total * world * peak), "hfu": hw_fpt * tokens / (total * world * peak),
        "efficiency": efficiency,
    }


def _all_to_all_s(facts: ModelFacts, s: Setup, device: Device, tokens_per_sample: int, gpus_per_node: int,
                  a: int) -> float:
    """Seconds of the expert-parallel all-to-alls of one step: per MoE layer and micro-batch, four of them (dispatch
    and combine forward, their gradients backward; two more forward under full recomputation), each moving the
    ``(ep - 1) / ep`` of the micro-batch's routed token copies (``k`` per token, padded by the capacity factor when
    one is set) that live on other ranks. Not overlapped with compute."""
    from pretrain.flops import moe_layer_indices

    args = facts.args
    copies = args.moe_router_topk * max(1.0, float(getattr(args, "moe_capacity_factor", None) or 1.0))
    moved = s.micro_batch_size * tokens_per_sample * copies * args.hidden_size * a * (s.ep - 1) / s.ep
    per_stage = max(len(moe_layer_indices(args)) // s.pp, 1) if s.pp > 1 else len(moe_layer_indices(args))
    n = 4 + (2 if s.recompute == "full" else 0)
    # the expert-parallel ranks sit next to each other inside the data-parallel group (tensor ranks innermost)
    return n * per_stage * s.grad_accum_steps * moved / _bandwidth(device, s.tp * s.ep, gpus_per_node)


def _hardware_flops(facts: ModelFacts, s: Setup) -> float:
    """Hardware FLOPs per token under this layout's recomputation: the family's own formula, asked with the
    layout's ``activation_checkpointing`` / ``recompute_granularity`` (the args are a dataclass)."""
    import dataclasses

    args = facts.args
    if hasattr(args, "activation_checkpointing"):
        on = s.recompute is not None
        args = dataclasses.replace(args, activation_checkpointing=on,
                                   recompute_granularity=s.recompute or args.recompute_granularity)
    return facts.family.flops_per_token(args)["hardware"]
