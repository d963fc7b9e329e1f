"""Expert parallelism for the MoE blocks (:mod:`pretrain.models.gpt.moe`): the experts of each block spread over
the ``ep`` ranks of an expert-parallel group, tokens sent to them and back with all-to-all.

The model is built whole on every rank from the same seed (as tensor parallelism does), then
:func:`expert_parallelize` keeps on expert-parallel rank ``r`` the contiguous slice ``[r * E/ep, (r+1) * E/ep)``
of every stacked expert tensor (dim 0 = global expert index) and installs :class:`AllToAllDispatcher`, so the
initial weights of an ep-N run are exactly the ep-1 model's.

Dispatch, per block and micro-batch (routing, capacity and the combine stay on the source rank, so the result
is the ep-1 block's on the same tokens): the rows grouped by global expert go to the rank holding that expert
(``all_to_all_single``, which gloo and nccl both implement), the receiver regroups them by local expert (source
rank order within an expert), runs its experts, restores the order and sends them back. Its backward is the
same two all-to-alls reversed.

Why not DeepSpeed's ``deepspeed.moe.layer.MoE`` (docs/moe.md): random token selection and Gumbel sampling of
the second expert by default, top-2 renormalised after dropping (Mixtral renormalises before), no z-loss,
dense ``[tokens, experts, capacity]`` dispatch tensors, and parameters named
``deepspeed_moe.experts.deepspeed_experts.N.*`` (one module per expert), not Mixtral's stacked layout, which
its engine's checkpoint code parses.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from pretrain.models.gpt.moe import Experts, moe_modules


class _AllToAll(torch.autograd.Function):
    """``all_to_all_single`` of rows with explicit split sizes; the backward sends the gradients back."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, out_splits: list[int], in_splits: list[int], group) -> torch.Tensor:
        ctx.splits, ctx.group = (out_splits, in_splits), group
        out = x.new_empty((sum(out_splits), *x.shape[1:]))
        dist.all_to_all_single(out, x.contiguous(), out_splits, in_splits, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        out_splits, in_splits = ctx.splits
        back = grad.new_empty((sum(in_splits), *grad.shape[1:]))
        dist.all_to_all_single(back, grad.contiguous(), in_splits, out_splits, group=ctx.group)
        return back, None, None, None


def all_to_all(x: torch.Tensor, out_splits: list[int], in_splits: list[int], group) -> torch.Tensor:
    return _AllToAll.apply(x, out_splits, in_splits, group)


class AllToAllDispatcher:
    """The ``dispatcher`` of an expert-parallel MoE block (see the module docstring)."""

    def __init__(self, group, ep_size: int, num_local: int):
        self.group, self.ep_size, self.num_local = group, ep_size, num_local

    def __call__(self, x: torch.Tensor, counts: torch.Tensor, experts: Experts) -> tuple[torch.Tensor, int]:
        ep, el = self.ep_size, self.num_local
        recv_counts = torch.empty_like(counts)
        dist.all_to_all_single(recv_counts, counts.contiguous(), group=self.group)  # [source rank, local expert]
        recv_counts = recv_counts.view(ep, el)
        send = counts.view(ep, el).sum(1).tolist()
        recv = recv_counts.sum(1).tolist()
        received = all_to_all(x, recv, send, self.group)
        # regroup (source, expert) segments to expert-major order
        offsets = torch.cumsum(recv_counts.reshape(-1), 0) - recv_counts.reshape(-1)
        starts, lengths = offsets.view(ep, el).t().reshape(-1).tolist(), recv_counts.t().reshape(-1).tolist()
        index = torch.cat([torch.arange(s, s + n, device=x.device) for s, n in zip(starts, lengths)]
                          + [torch.zeros(0, dtype=torch.long, device=x.device)])
        out = experts(received[index], recv_counts.sum(0).tolist())
        restored = torch.empty_like(out).index_copy_(0, index, out) if out.shape[0] else out
        back = all_to_all(restored, send, recv, self.group)
        row = x.shape[-1] * x.element_size()
        nbytes = 2 * (sum(send) + sum(recv)) * row + 2 * 2 * counts.numel() * counts.element_size()
        return back, nbytes


def expert_group_ranks(dp_ranks: list[int], ep: int) -> tuple[list[list[int]], list[list[int]]]:
    """The expert-parallel groups (``ep`` consecutive data-parallel ranks) and expert-data-parallel groups (the
    ranks holding the same experts: every ``ep``-th) of one data-parallel group, DeepSpeed's ``E + D`` layout
    (``deepspeed.utils.groups._get_expert_parallel_ranks``)."""
    if len(dp_ranks) % ep:
        raise ValueError(f"the data-parallel size {len(dp_ranks)} is not a multiple of the expert-parallel size {ep}")
    ep_groups = [dp_ranks[i:i + ep] for i in range(0, len(dp_ranks), ep)]
    return ep_groups, [list(g) for g in zip(*ep_groups)]


@torch.no_grad()
def expert_parallelize(model: nn.Module, group, ep_rank: int, ep_size: int, keep_all: bool = False) -> int:
    """Make expert-parallel rank ``ep_rank`` run the slice ``[ep_rank * E/ep, (ep_rank+1) * E/ep)`` of every MoE
    block's experts and dispatch to the others over ``group``; returns the number of blocks.

    ``keep_all=False``: the rank keeps only its slice of the stacked tensors (tagged ``expert_parallel``).
    ``keep_all=True`` (what the trainer uses, see docs/moe.md): it keeps every expert's weights, identical on
    all ranks, and computes only its own; the other rows get zero gradients, so the data-parallel all-reduce
    (and ZeRO's reduce-scatter) of the whole tensor over dp ranks sums exactly each expert's gradient from the
    ranks that ran it. ZeRO, clipping and checkpoints then see an ordinary replicated parameter, and a run
    resumes at any expert-parallel size."""
    blocks = moe_modules(model)
    for m in blocks:
        if m.num_experts % ep_size:
            raise ValueError(f"{m.num_experts} experts do not split over {ep_size} expert-parallel ranks")
        el = m.num_experts // ep_size
        lo = ep_rank * el
        if not keep_all:
            for name, p in list(m.experts.named_parameters(recurse=False)):
                new = nn.Parameter(p.data[lo:lo + el].clone())
                new.expert_parallel = True
                setattr(m.experts, name, new)
        m.experts.first_expert, m.experts.offset, m.experts.num_run = lo, (lo if keep_all else 0), el
        m.dispatcher = AllToAllDispatcher(group, ep_size, el)
    return len(blocks)
