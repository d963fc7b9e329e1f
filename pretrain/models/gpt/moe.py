"""The mixture-of-experts MLP block of the GPT family (Switch top-1, Mixtral top-2), and its statistics.

Parameter layout = Hugging Face's ``MixtralSparseMoeBlock`` (transformers 5): ``gate.weight`` ``[E, h]`` (the
router, no bias), ``experts.gate_up_proj`` ``[E, 2f, h]`` (SwiGLU: gate rows first, then up) or
``experts.up_proj`` ``[E, f, h]`` (GELU), and ``experts.down_proj`` ``[E, h, f]``; experts carry no biases.
Dim 0 is the GLOBAL expert index; under expert parallelism (:mod:`pretrain.parallel.expert`) a rank holds the
contiguous slice ``[first_expert, first_expert + E_local)`` of it.

The rules (docs/moe.md):

* Router in fp32: logits ``x.float() @ gate.weight.float().T``, softmax over experts.
* Top-k by a stable descending sort of the probabilities: on a tie the LOWER expert index wins (``torch.topk``
  documents no order for ties). k = 1 (Switch): the expert's weight is its probability; k > 1 (Mixtral): the
  k probabilities are renormalised to sum to 1.
* Capacity (``moe_capacity_factor`` = c): each expert takes at most ``ceil(c * T * k / E)`` of the ``T * k``
  assignments of a micro-batch's ``T`` tokens on this rank (GShard's rule): first every token's first choice,
  in token order, then every second choice, and so on; an assignment past the capacity is dropped (the token
  keeps its residual path, the expert's share adds nothing). Capacity is per source rank, so expert
  parallelism drops exactly what one rank would. ``None``: nothing is dropped.
* Load-balancing loss (Switch eq. 4, GShard): ``E * sum_e f_e * P_e``, ``f_e`` = fraction of the ``T * k``
  assignments the router gives expert e (before dropping), ``P_e`` = mean router probability of e; 1 when
  perfectly balanced. Router z-loss (ST-MoE): ``mean_t logsumexp(logits_t)^2``. The model adds
  ``coeff * mean over its MoE layers`` of each to the training loss (training mode only: eval losses are the
  plain cross-entropy).

The model file knows no process groups: expert parallelism installs a ``dispatcher`` on each block (the
all-to-all), which otherwise runs every expert locally.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def route(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(probs [T, E], experts [T, k], weights [T, k])`` from fp32 router logits: the k most probable
    experts of each token, ties to the lower index, weights renormalised when k > 1."""
    probs = torch.softmax(logits.float(), dim=-1)
    experts = torch.sort(probs, dim=-1, descending=True, stable=True).indices[:, :k]
    weights = probs.gather(1, experts)
    if k > 1:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return probs, experts, weights


def capacity(tokens: int, k: int, num_experts: int, factor: float | None) -> int | None:
    """Assignments an expert takes per micro-batch, or None (no dropping)."""
    if factor is None:
        return None
    return max(1, math.ceil(factor * tokens * k / num_experts))


def keep_mask(experts: torch.Tensor, num_experts: int, cap: int | None) -> torch.Tensor:
    """``[T, k]`` bool: which assignments fit their expert's capacity ``cap``, first choices before second
    ones, each in token order (GShard); all True without a capacity."""
    if cap is None:
        return torch.ones_like(experts, dtype=torch.bool)
    slot_major = experts.t().reshape(-1)  # [k * T]: every first choice, then every second choice...
    one_hot = F.one_hot(slot_major, num_experts)
    position = (one_hot.cumsum(0) * one_hot).sum(-1) - 1  # arrival number at its expert, from 0
    return (position < cap).view(experts.shape[1], -1).t()


def load_balancing_loss(probs: torch.Tensor, experts: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Switch/GShard auxiliary loss ``E * sum_e f_e * P_e`` (1.0 at perfect balance)."""
    counts = torch.bincount(experts.reshape(-1), minlength=num_experts).to(probs.dtype)
    f = counts / experts.numel()
    return num_experts * (f * probs.mean(0)).sum()


def z_loss(logits: torch.Tensor) -> torch.Tensor:
    """ST-MoE router z-loss: mean squared log-partition of the router logits."""
    return torch.logsumexp(logits.float(), dim=-1).pow(2).mean()


class Experts(nn.Module):
    """``num_experts`` SwiGLU or GELU MLPs stacked on dim 0 (Mixtral's layout). ``first_expert``: the global
    index of the first expert this rank runs; ``offset``: its row in the stored tensors (0 when the rank stores
    only its slice, ``first_expert`` when it stores every expert); ``num_run``: how many it runs."""

    def __init__(self, num_experts: int, hidden: int, ffn: int, swiglu: bool):
        super().__init__()
        self.swiglu = swiglu
        self.first_expert, self.offset, self.num_run = 0, 0, num_experts
        if swiglu:
            self.gate_up_proj = nn.Parameter(torch.empty(num_experts, 2 * ffn, hidden))
        else:
            self.up_proj = nn.Parameter(torch.empty(num_experts, ffn, hidden))
        self.down_proj = nn.Parameter(torch.empty(num_experts, hidden, ffn))

    def forward(self, x: torch.Tensor, counts: list[int]) -> torch.Tensor:
        """``x``: rows grouped by local expert, ``counts[e]`` rows for local expert e, in order."""
        outs = []
        for e, chunk in enumerate(x.split(counts), start=self.offset):
            if self.swiglu:
                gate, up = F.linear(chunk, self.gate_up_proj[e]).chunk(2, dim=-1)
                h = F.silu(gate) * up
            else:
                h = F.gelu(F.linear(chunk, self.up_proj[e]), approximate="tanh")
            outs.append(F.linear(h, self.down_proj[e]))
        return torch.cat(outs) if outs else x.new_zeros(0, self.down_proj.shape[1])


def local_dispatch(x: torch.Tensor, counts: torch.Tensor, experts: Experts) -> tuple[torch.Tensor, int]:
    """Every expert on this rank: ``x`` grouped by global expert, ``counts [E]``; returns (outputs, bytes sent
    by all-to-all = 0)."""
    return experts(x, counts.tolist()), 0


class MoE(nn.Module):
    """The MoE MLP: router, dispatch to the top-k experts (with capacity), weighted combine.

    Each forward leaves its auxiliary losses and counts in ``pending``; :class:`~pretrain.models.gpt.model.GPT`
    takes them after its layers ran (adding the losses to the training loss and the counts to ``stats``), so a
    recomputed forward (activation checkpointing, inside backward) counts nothing twice.

    Under tensor parallelism the block stays whole on every tensor rank (``tensor_parallel_replicated``): its
    input is the full activation there, so every rank routes the same tokens to the same experts."""

    tensor_parallel_replicated = True

    def __init__(self, hidden: int, ffn: int, num_experts: int, topk: int, swiglu: bool,
                 capacity_factor: float | None):
        super().__init__()
        self.num_experts, self.topk, self.capacity_factor = num_experts, topk, capacity_factor
        self.gate = nn.Linear(hidden, num_experts, bias=False)
        self.experts = Experts(num_experts, hidden, ffn, swiglu)
        self.dispatcher = local_dispatch  # expert parallelism installs the all-to-all
        self.pending: list[dict[str, Any]] = []
        self.stats = new_stats(num_experts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        T, E, k = x.shape[0], self.num_experts, self.topk
        logits = F.linear(x.float(), self.gate.weight.float())
        probs, chosen, weights = route(logits, k)
        keep = keep_mask(chosen, E, capacity(T, k, E, self.capacity_factor))
        flat_expert = chosen.reshape(-1)[keep.reshape(-1)]
        flat_token = torch.arange(T, device=x.device).repeat_interleave(k)[keep.reshape(-1)]
        flat_weight = weights.reshape(-1)[keep.reshape(-1)]
        order = torch.sort(flat_expert, stable=True).indices  # grouped by expert, token order within
        token, weight = flat_token[order], flat_weight[order]
        counts = torch.bincount(flat_expert, minlength=E)
        out, a2a_bytes = self.dispatcher(x[token], counts, self.experts)
        y = torch.zeros_like(x).index_add_(0, token, out * weight.unsqueeze(-1).to(out.dtype))
        with torch.no_grad():
            load = torch.bincount(chosen.reshape(-1), minlength=E)
        self.pending.append({"aux_loss": load_balancing_loss(probs, chosen, E), "z_loss": z_loss(logits),
                             "tokens": T, "assignments": T * k, "dropped": T * k - int(flat_expert.numel()),
                             "load": load, "a2a_bytes": a2a_bytes})
        return y.view(shape)


def new_stats(num_experts: int) -> dict[str, Any]:
    return {"aux_loss": 0.0, "z_loss": 0.0, "forwards": 0, "tokens": 0, "assignments": 0, "dropped": 0,
            "load": torch.zeros(num_experts, dtype=torch.long), "a2a_bytes": 0}


def moe_modules(module: nn.Module) -> list[MoE]:
    return [m for m in module.modules() if isinstance(m, MoE)]


def collect(layers: list[MoE], training: bool) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The mean aux and z losses over ``layers`` of the forward that just ran, counted into each layer's
    ``stats`` when ``training``; None without MoE layers. Clears every layer's ``pending``."""
    if not layers:
        return None
    aux, z = [], []
    for m in layers:
        if not m.pending:
            continue
        p = m.pending[-1]
        m.pending.clear()
        aux.append(p["aux_loss"])
        z.append(p["z_loss"])
        if training:
            s = m.stats
            s["aux_loss"] += float(p["aux_loss"].detach())
            s["z_loss"] += float(p["z_loss"].detach())
            s["forwards"] += 1
            for key in ("tokens", "assignments", "dropped", "a2a_bytes"):
                s[key] += p[key]
            s["load"] += p["load"].cpu()
    if not aux:
        return None
    return torch.stack(aux).mean(), torch.stack(z).mean()


def take_moe_stats(module: nn.Module) -> dict[str, Any]:
    """The MoE statistics of this rank's ``module`` (all its MoE layers, every training forward since the last
    call), and reset them: ``aux_loss`` and ``z_loss`` (means over layers and forwards), ``tokens`` (tokens
    routed, summed over layers), ``assignments`` (tokens x topk), ``dropped`` (assignments dropped by the
    capacity), ``expert_load`` (assignments the router gave each GLOBAL expert, before dropping, summed over
    layers), ``a2a_bytes`` (bytes this rank sent + received by all-to-all). Empty dict without MoE layers."""
    layers = moe_modules(module)
    if not layers:
        return {}
    E = layers[0].num_experts
    out = {"aux_loss": 0.0, "z_loss": 0.0, "tokens": 0, "assignments": 0, "dropped": 0,
           "expert_load": [0] * E, "a2a_bytes": 0}
    forwards = 0
    for m in layers:
        s = m.stats
        forwards += s["forwards"]
        out["aux_loss"] += s["aux_loss"]
        out["z_loss"] += s["z_loss"]
        for key in ("tokens", "assignments", "dropped", "a2a_bytes"):
            out[key] += s[key]
        out["expert_load"] = [a + int(b) for a, b in zip(out["expert_load"], s["load"].tolist())]
        m.stats = new_stats(m.num_experts)
    if forwards:
        out["aux_loss"] /= forwards
        out["z_loss"] /= forwards
    return out
