"""The collectives of tensor parallelism and the autograd functions that map activations in and out of a
tensor-parallel ("TP") region, the Megatron way (Shoeybi et al. 2019):

=====================================  ==========================  ==========================
function                               forward                     backward
=====================================  ==========================  ==========================
copy_to_tensor_model_parallel_region   identity                    all-reduce
reduce_from_tensor_model_parallel_...  all-reduce                  identity
scatter_to_tensor_model_parallel_...   keep my slice of last dim   all-gather last dim
gather_from_tensor_model_parallel_...  all-gather last dim         keep my slice of last dim
=====================================  ==========================  ==========================

plus their sequence-parallel counterparts (split along the sequence instead of replicated), and
:func:`shard` / :func:`gather_tensor_parallel`, which slice a full tensor and rebuild it from the shards.
Every collective counts its bytes in :data:`pretrain.parallel.tensor.comm.TP_COMM`. Groups of one rank make
every function an identity.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from pretrain.parallel.tensor.comm import TP_COMM

Group = dist.ProcessGroup | None


def world_size(group: Group) -> int:
    return dist.get_world_size(group) if dist.is_available() and dist.is_initialized() else 1


def rank_in(group: Group) -> int:
    return dist.get_rank(group) if dist.is_available() and dist.is_initialized() else 0


def divide(n: int, d: int, what: str) -> int:
    if n % d:
        raise ValueError(f"{what}={n} is not divisible by the tensor-parallel size {d}")
    return n // d


def _all_reduce(x: torch.Tensor, group: Group, op=dist.ReduceOp.SUM) -> torch.Tensor:
    """Out of place: autograd may hand the same gradient buffer to several consumers (``a + b``)."""
    if world_size(group) == 1:
        return x
    y = x.clone(memory_format=torch.contiguous_format)
    dist.all_reduce(y, op=op, group=group)
    TP_COMM.add("all_reduce", y)
    return y


def _all_gather_last(x: torch.Tensor, group: Group) -> torch.Tensor:
    n = world_size(group)
    if n == 1:
        return x
    x = x.contiguous()
    parts = [torch.empty_like(x) for _ in range(n)]
    dist.all_gather(parts, x, group=group)
    TP_COMM.add("all_gather", x)
    return torch.cat(parts, dim=-1)


def _split_last(x: torch.Tensor, group: Group) -> torch.Tensor:
    n = world_size(group)
    if n == 1:
        return x
    size = divide(x.shape[-1], n, "last dimension")
    r = rank_in(group)
    return x[..., r * size:(r + 1) * size].contiguous()


class _CopyToRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x

    @staticmethod
    def backward(ctx, grad):
        return _all_reduce(grad, ctx.group), None


class _ReduceFromRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        return _all_reduce(x, group)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class _ScatterToRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _split_last(x, group)

    @staticmethod
    def backward(ctx, grad):
        return _all_gather_last(grad, ctx.group), None


class _GatherFromRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _all_gather_last(x, group)

    @staticmethod
    def backward(ctx, grad):
        return _split_last(grad, ctx.group), None


def copy_to_tensor_model_parallel_region(x: torch.Tensor, group: Group) -> torch.Tensor:
    """Enter a TP region with a replicated activation: each rank's partial input-gradient is summed."""
    return x if world_size(group) == 1 else _CopyToRegion.apply(x, group)


def reduce_from_tensor_model_parallel_region(x: torch.Tensor, group: Group) -> torch.Tensor:
    """Leave a TP region by summing the ranks' partial results (row-parallel output)."""
    return x if world_size(group) == 1 else _ReduceFromRegion.apply(x, group)


def scatter_to_tensor_model_parallel_region(x: torch.Tensor, group: Group) -> torch.Tensor:
    """Keep this rank's slice of the last dimension (a row-parallel layer fed a replicated input)."""
    return x if world_size(group) == 1 else _ScatterToRegion.apply(x, group)


def gather_from_tensor_model_parallel_region(x: torch.Tensor, group: Group) -> torch.Tensor:
    """Concatenate the ranks' slices of the last dimension (a column-parallel output wanted whole)."""
    return x if world_size(group) == 1 else _GatherFromRegion.apply(x, group)


# ------------------------------------------------------------------------------------------------ sequence parallel
# Megatron's sequence parallelism (Korthikanti et al. 2022): outside the TP regions (norms, dropout, residual
# adds) activations are split along the sequence (dim 1 of [batch, seq, hidden]) instead of replicated; a
# region is entered by an all-gather along the sequence and left by a reduce-scatter along it, which move the
# same bytes as the all-reduce they replace.

_SEQ_DIM = 1


def _all_gather_seq(x: torch.Tensor, group: Group) -> torch.Tensor:
    n = world_size(group)
    if n == 1:
        return x
    x = x.contiguous()
    parts = [torch.empty_like(x) for _ in range(n)]
    dist.all_gather(parts, x, group=group)
    TP_COMM.add("all_gather", x)
    return torch.cat(parts, dim=_SEQ_DIM)


def _split_seq(x: torch.Tensor, group: Group) -> torch.Tensor:
    n = world_size(group)
    if n == 1:
        return x
    size = divide(x.shape[_SEQ_DIM], n, "sequence length")
    return x.narrow(_SEQ_DIM, rank_in(group) * size, size).contiguous()


def _reduce_scatter_seq(x: torch.Tensor, group: Group) -> torch.Tensor:
    n = world_size(group)
    if n == 1:
        return x
    if dist.get_backend(group) == "gloo":  # gloo has no reduce-scatter: all-reduce, keep my chunk
        y = x.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(y, group=group)
        TP_COMM.add("reduce_scatter", y)
        return _split_seq(y, group)
    chunks = [c.contiguous() for c in x.chunk(n, dim=_SEQ_DIM)]
    out = torch.empty_like(chunks[0])
    dist.reduce_scatter(out, chunks, group=group)
    TP_COMM.add("reduce_scatter", x)
    return out


class _GatherFromSequence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _all_gather_seq(x, group)

    @staticmethod
    def backward(ctx, grad):
        return _reduce_scatter_seq(grad, ctx.group), None


class _ReduceScatterToSequence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _reduce_scatter_seq(x, group)

    @staticmethod
    def backward(ctx, grad):
        return _all_gather_seq(grad, ctx.group), None


class _ScatterToSequence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _split_seq(x, group)

    @staticmethod
    def backward(ctx, grad):
        return _all_gather_seq(grad, ctx.group), None


def gather_from_sequence_parallel_region(x: torch.Tensor, group: Group) -> torch.Tensor:
    """Enter a TP region from sequence-split activations: all-gather the sequence (reduce-scatter backward)."""
    return x if world_size(group) == 1 else _GatherFromSequence.apply(x, group)


def reduce_scatter_to_sequence_parallel_region(x: torch.Tensor, group: Group) -> torch.Tensor:
    """Leave a TP region into sequence-split activations: sum the partial results, keep my sequence chunk."""
    return x if world_size(group) == 1 else _ReduceScatterToSequence.apply(x, group)


def scatter_to_sequence_parallel_region(x: torch.Tensor, group: Group) -> torch.Tensor:
    """Split a replicated activation along the sequence (all-gather of the gradient backward)."""
    return x if world_size(group) == 1 else _ScatterToSequence.apply(x, group)


# ------------------------------------------------------------------------------------------------ shards


def shard(full: torch.Tensor, dim: int, group: Group) -> torch.Tensor:
    """This rank's contiguous slice of ``full`` along ``dim`` (a copy, detached)."""
    n, r = world_size(group), rank_in(group)
    size = divide(full.shape[dim], n, f"dimension {dim} of a {tuple(full.shape)} tensor")
    return full.detach().narrow(dim, r * size, size).clone()


def gather_tensor_parallel(t: torch.Tensor, partition_dim: int, group: Group) -> torch.Tensor:
    """The full tensor from every rank's shard ``t`` along ``partition_dim`` (collective, no autograd)."""
    n = world_size(group)
    if n == 1:
        return t.detach().clone()
    t = t.detach().contiguous()
    parts = [torch.empty_like(t) for _ in range(n)]
    dist.all_gather(parts, t, group=group)
    return torch.cat(parts, dim=partition_dim)
