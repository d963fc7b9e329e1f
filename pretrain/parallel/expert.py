"""Expert parallelism for the MoE blocks (:mod:`pretrain.models.gpt.moe`): the experts of each block spread over
the ``ep`` ranks of an expert-parallel group, tokens sent to them and back with all-to-all.

The model is built whole on every rank from the same seed (as tensor parallelism does), then
:func:`expert_parallelize` keeps on expert-parallel rank ``r`` only the contiguous slice ``[r * E/ep, (r+1) * E/ep)``
of every stacked expert tensor (dim 0 = global expert index) and installs :class:`AllToAllDispatcher`, so the
initial weights of an ep-N run are exactly the ep-1 model's and a rank holds 1/ep of the expert weights.

The slices carry DeepSpeed's expert-parameter tags (``allreduce=False``, ``group_name="ep_size_<ep>"``), so its
engine reduces their gradients over the expert-data-parallel group only (the dp/ep ranks holding the same experts,
``deepspeed.utils.groups``, built by :func:`expert_groups`) and ZeRO-1/2 partitions them, their master weights and
Adam moments over that group (``pretrain/engines/deepspeed.py``), plus our ``expert_slice = (first global expert,
ep)``, which the gradient norm (each expert counted once) and the layout-free checkpoint (slices gathered to
global indices, :func:`gather_experts`) read.

Dispatch, per block and micro-batch (routing, capacity and the combine stay on the source rank, so the result
is the ep-1 block's on the same tokens): the rows grouped by global expert go to the rank holding that expert
(``all_to_all_single``, which gloo and nccl both implement), the receiver regroups them by local expert (source
rank order within an expert), runs its experts, restores the order and sends them back. Its backward is the
same two all-to-alls reversed.

Why not DeepSpeed's ``deepspeed.moe.layer.MoE`` (docs/moe.md): random token selection and Gumbel sampling of
the second expert by default, top-2 renormalised after dropping (Mixtral renormalises before), no z-loss,
dense ``[tokens, experts, capacity]`` dispatch tensors, and parameters named
``deepspeed_moe.experts.deepspeed_experts.N.*`` (one module per expert), not Mixtral's stacked layout, which
its engine's checkpoint code parses. Its expert-group plumbing (groups, gradient reduction, ZeRO partitions) is
used as it is.
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


def expert_group_name(ep: int) -> str:
    """DeepSpeed's name of the expert-parallel size ``ep`` (``deepspeed.utils.groups``, ``param.group_name``)."""
    return f"ep_size_{ep}"


def expert_groups(grid, ep: int) -> tuple[dist.ProcessGroup | None, int]:
    """This rank's expert-parallel group and rank in it (``(None, 0)`` at ``ep == 1``), creating DeepSpeed's expert
    and expert-data-parallel groups of ``grid`` (a :class:`~pretrain.parallel.topology.ParallelGrid`, DeepSpeed's
    ``mpu``) once: ``E + D`` layout, ``ep`` consecutive ranks of each data-parallel group (one tensor rank), the
    ranks holding the same experts every ``ep``-th (:func:`expert_group_ranks`). Collective."""
    if ep == 1:
        return None, 0
    from deepspeed.utils import groups

    name = expert_group_name(ep)
    groups.mpu = grid  # what deepspeed.initialize(mpu=grid) sets too; the group builder asks it the dp size
    groups._create_expert_data_and_model_parallel(ep, mpu=grid)
    # DeepSpeed takes experts under tensor parallelism to be split over the tensor ranks (Megatron-DeepSpeed) and
    # would then sum their gradient norms over the tensor ranks too (deepspeed.runtime.utils
    # .get_global_norm_of_tensors, the bf16 optimizer); ours are whole on every tensor rank.
    groups.expert_tensor_parallel_world_size = 1
    theirs = list(groups._get_expert_parallel_group_ranks(name))
    rank = dist.get_rank()
    ours = next(g for g in expert_group_ranks(sorted(grid.dp_group), ep)[0] if rank in g)
    if theirs != ours:  # e.g. a grid axis DeepSpeed's builder does not know of
        raise RuntimeError(f"rank {rank}: DeepSpeed's expert-parallel group {theirs} is not this grid's {ours}")
    return groups._get_expert_parallel_group(name), groups._get_expert_parallel_rank(name)


def expert_slice(p: torch.Tensor) -> tuple[int, int] | None:
    """``(first global expert, ep)`` of an expert-parallel slice, None for any other parameter."""
    return getattr(p, "expert_slice", None)


def _expert_group(p: torch.Tensor):
    from deepspeed.utils import groups

    return groups._get_expert_parallel_group(p.group_name)


def gather_experts(t: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """The whole ``[E, ...]`` tensor (global expert order) from every expert-parallel rank's ``t``, a tensor shaped
    like the slice ``p``; collective over ``p``'s expert-parallel group. On ``p``'s device (nccl needs it)."""
    ep = expert_slice(p)[1]
    local = t.to(p.device).contiguous()
    parts = [torch.empty_like(local) for _ in range(ep)]
    dist.all_gather(parts, local, group=_expert_group(p))
    return torch.cat(parts)


def local_experts(full: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """This rank's rows of a whole ``[E, ...]`` expert tensor, for the slice ``p``."""
    return full.narrow(0, expert_slice(p)[0], p.shape[0])


def expert_sq_norm(sq: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """The sum of squares ``sq`` of this rank's expert-slice gradients summed over its expert-parallel group (the
    ranks holding the other experts: each expert once). Collective."""
    dist.all_reduce(sq, group=_expert_group(p))
    return sq


@torch.no_grad()
def expert_parallelize(model: nn.Module, group, ep_rank: int, ep_size: int, keep_all: bool = False) -> int:
    """Make expert-parallel rank ``ep_rank`` run the slice ``[ep_rank * E/ep, (ep_rank+1) * E/ep)`` of every MoE
    block's experts and dispatch to the others over ``group``; returns the number of blocks.

    ``keep_all=False`` (what the trainer uses, docs/moe.md): the rank keeps only its slice of the stacked tensors,
    tagged for DeepSpeed (``allreduce=False``, ``group_name``) and for us (``expert_slice``, see the module
    docstring). ``keep_all=True``: it keeps every expert's weights, identical on all ranks, and computes only its
    own; the other rows get zero gradients, so a data-parallel all-reduce of the whole tensor sums exactly each
    expert's gradient from the ranks that ran it (the dispatch test checks both; no memory saved)."""
    blocks = moe_modules(model)
    for m in blocks:
        if m.num_experts % ep_size:
            raise ValueError(f"{m.num_experts} experts do not split over {ep_size} expert-parallel ranks")
        el = m.num_experts // ep_size
        lo = ep_rank * el
        if not keep_all:
            for name, p in list(m.experts.named_parameters(recurse=False)):
                new = nn.Parameter(p.data[lo:lo + el].clone())
                new.expert_parallel, new.expert_slice = True, (lo, ep_size)
                new.allreduce, new.group_name = False, expert_group_name(ep_size)  # deepspeed.moe.utils.is_moe_param
                setattr(m.experts, name, new)
        m.experts.first_expert, m.experts.offset, m.experts.num_run = lo, (lo if keep_all else 0), el
        m.dispatcher = AllToAllDispatcher(group, ep_size, el)
    return len(blocks)
