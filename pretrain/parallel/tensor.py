"""Tensor-parallel building blocks, the Megatron way (Shoeybi et al. 2019).

Four autograd communication functions map activations in and out of a tensor-parallel ("TP") region:

=====================================  ==========================  ==========================
function                               forward                     backward
=====================================  ==========================  ==========================
copy_to_tensor_model_parallel_region   identity                    all-reduce
reduce_from_tensor_model_parallel_...  all-reduce                  identity
scatter_to_tensor_model_parallel_...   keep my slice of last dim   all-gather last dim
gather_from_tensor_model_parallel_...  all-gather last dim         keep my slice of last dim
=====================================  ==========================  ==========================

and the layers built on them: :class:`ColumnParallelLinear` (output features split: q/k/v by heads, MLP
up/gate), :class:`RowParallelLinear` (input features split: attention output, MLP down; one all-reduce of
the output), :class:`VocabParallelEmbedding` (vocabulary rows split) and :func:`vocab_parallel_cross_entropy`
(the loss on vocabulary-split logits without gathering them). A column layer followed by a row layer costs one
all-reduce forward and one backward.

Every sharded parameter carries ``tensor_model_parallel=True``, ``partition_dim`` and ``partition_stride``
(Megatron's attributes): DeepSpeed's grad norm (``deepspeed.runtime.utils.is_model_parallel_parameter``)
then sums a sharded parameter over the tensor ranks and counts a replicated one on tensor rank 0 only, and
:func:`gather_tensor_parallel` / :mod:`pretrain.parallel.parallelize` rebuild full tensors from shards.

A layer built on its own initialises its full weight as ``nn.Linear`` / ``nn.Embedding`` would and keeps its
slice, so for the same seed the shards are exactly the unsharded layer's (:meth:`ColumnParallelLinear.
from_dense` slices an existing layer). Groups of one rank make every function an identity.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

Group = Optional[dist.ProcessGroup]


# ------------------------------------------------------------------------------------------------ accounting


class CommCounter:
    """Bytes each tensor-parallel collective moved on this rank (payload size, forward and backward), for the
    per-step communication report. :meth:`take` returns the counts since the last call and resets them."""

    def __init__(self) -> None:
        self.bytes: dict[str, int] = defaultdict(int)

    def add(self, kind: str, t: torch.Tensor) -> None:
        self.bytes[kind] += t.numel() * t.element_size()

    def take(self) -> dict[str, int]:
        out = dict(self.bytes)
        self.bytes.clear()
        return out


TP_COMM = CommCounter()


# ------------------------------------------------------------------------------------------------ helpers


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


# ------------------------------------------------------------------------------------------------ parameters


def set_tensor_model_parallel_attributes(param: torch.Tensor, partition_dim: int, stride: int = 1) -> None:
    """Megatron's tags: DeepSpeed's ``is_model_parallel_parameter`` reads ``tensor_model_parallel``."""
    param.tensor_model_parallel = True
    param.partition_dim = partition_dim
    param.partition_stride = stride


def is_tensor_parallel(param: torch.Tensor) -> bool:
    return bool(getattr(param, "tensor_model_parallel", False))


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


def _sharded_parameter(full: torch.Tensor, dim: int, group: Group) -> nn.Parameter:
    p = nn.Parameter(shard(full, dim, group), requires_grad=full.requires_grad)
    set_tensor_model_parallel_attributes(p, dim)
    return p


# ------------------------------------------------------------------------------------------------ layers


class ColumnParallelLinear(nn.Module):
    """``y = x A^T + b`` with the rows of ``A`` (the output features) and ``b`` split across the group: each
    rank computes its slice of ``y``. q/k/v projections split this way hold whole heads when the head count
    divides by the group size (checked by :mod:`pretrain.parallel.validate`).

    ``copy_input``: enter the TP region here (identity forward, all-reduce of the input gradient backward);
    :func:`pretrain.parallel.parallelize.parallelize` turns it off when one region entry serves several
    column layers reading the same input (q, k and v), so their gradients are summed by one all-reduce.
    ``gather_output``: all-gather ``y`` (otherwise it stays split, as a row-parallel layer or
    :func:`vocab_parallel_cross_entropy` wants it).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, group: Group,
                 gather_output: bool = False, copy_input: bool = True, master: nn.Linear | None = None,
                 sequence_parallel: bool = False, device=None, dtype=None):
        super().__init__()
        self.group, self.gather_output, self.copy_input = group, gather_output, copy_input
        self.sequence_parallel = sequence_parallel  # copy_input all-gathers a sequence-split input
        self.in_features, self.out_features = in_features, out_features
        self.out_features_per_partition = divide(out_features, world_size(group), "out_features")
        if master is None:  # nn.Linear's own init of the full matrix, then this rank's rows
            master = nn.Linear(in_features, out_features, bias=bias, device=device, dtype=dtype)
        if master.weight.shape != (out_features, in_features) or (master.bias is not None) != bias:
            raise ValueError(f"master layer {master} does not match ({in_features} -> {out_features}, bias={bias})")
        self.weight = _sharded_parameter(master.weight, 0, group)
        self.bias = _sharded_parameter(master.bias, 0, group) if bias else None

    @classmethod
    def from_dense(cls, linear: nn.Linear, group: Group, **kwargs) -> "ColumnParallelLinear":
        return cls(linear.in_features, linear.out_features, linear.bias is not None, group=group, master=linear,
                   **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.copy_input:
            x = (gather_from_sequence_parallel_region(x, self.group) if self.sequence_parallel
                 else copy_to_tensor_model_parallel_region(x, self.group))
        y = F.linear(x, self.weight, self.bias)
        return gather_from_tensor_model_parallel_region(y, self.group) if self.gather_output else y

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features} "
                f"(local {self.out_features_per_partition}), bias={self.bias is not None}, "
                f"gather_output={self.gather_output}, copy_input={self.copy_input}")


class RowParallelLinear(nn.Module):
    """``y = x A^T + b`` with the columns of ``A`` (the input features) split: each rank multiplies its slice
    of ``x`` (the output of a column-parallel layer, ``input_is_parallel=True``) and the partial products are
    summed by one all-reduce; the bias is replicated and added once, after the sum."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, group: Group,
                 input_is_parallel: bool = True, master: nn.Linear | None = None, sequence_parallel: bool = False,
                 device=None, dtype=None):
        super().__init__()
        self.group, self.input_is_parallel = group, input_is_parallel
        self.sequence_parallel = sequence_parallel  # reduce-scatter the output along the sequence
        self.in_features, self.out_features = in_features, out_features
        self.in_features_per_partition = divide(in_features, world_size(group), "in_features")
        if master is None:
            master = nn.Linear(in_features, out_features, bias=bias, device=device, dtype=dtype)
        if master.weight.shape != (out_features, in_features) or (master.bias is not None) != bias:
            raise ValueError(f"master layer {master} does not match ({in_features} -> {out_features}, bias={bias})")
        self.weight = _sharded_parameter(master.weight, 1, group)
        self.bias = nn.Parameter(master.bias.detach().clone()) if bias else None

    @classmethod
    def from_dense(cls, linear: nn.Linear, group: Group, **kwargs) -> "RowParallelLinear":
        return cls(linear.in_features, linear.out_features, linear.bias is not None, group=group, master=linear,
                   **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.input_is_parallel:
            x = scatter_to_tensor_model_parallel_region(x, self.group)
        y = F.linear(x, self.weight)
        y = (reduce_scatter_to_sequence_parallel_region(y, self.group) if self.sequence_parallel
             else reduce_from_tensor_model_parallel_region(y, self.group))
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features} (local {self.in_features_per_partition}), "
                f"out_features={self.out_features}, bias={self.bias is not None}, "
                f"input_is_parallel={self.input_is_parallel}")


class VocabParallelEmbedding(nn.Module):
    """An embedding table whose vocabulary rows are split: each rank looks up the ids it holds, zeros the
    others, and one all-reduce sums the rows. Its weight has the shape and slicing of a vocabulary-split
    :class:`ColumnParallelLinear` output layer, so a tied output layer shares the shard."""

    def __init__(self, num_embeddings: int, embedding_dim: int, *, group: Group, master: nn.Embedding | None = None,
                 device=None, dtype=None):
        super().__init__()
        self.group = group
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        per = divide(num_embeddings, world_size(group), "num_embeddings (vocabulary size)")
        self.vocab_start = rank_in(group) * per
        self.vocab_end = self.vocab_start + per
        if master is None:
            master = nn.Embedding(num_embeddings, embedding_dim, device=device, dtype=dtype)
        if master.weight.shape != (num_embeddings, embedding_dim) or master.padding_idx is not None:
            raise ValueError(f"master embedding {master} must be ({num_embeddings}, {embedding_dim}) without padding_idx")
        self.weight = _sharded_parameter(master.weight, 0, group)

    @classmethod
    def from_dense(cls, emb: nn.Embedding, group: Group) -> "VocabParallelEmbedding":
        return cls(emb.num_embeddings, emb.embedding_dim, group=group, master=emb)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if world_size(self.group) == 1:
            return F.embedding(ids, self.weight)
        outside = (ids < self.vocab_start) | (ids >= self.vocab_end)
        local = (ids - self.vocab_start).masked_fill(outside, 0)
        out = F.embedding(local, self.weight).masked_fill(outside.unsqueeze(-1), 0.0)
        return reduce_from_tensor_model_parallel_region(out, self.group)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, local rows [{self.vocab_start}, {self.vocab_end})"


# ------------------------------------------------------------------------------------------------ loss


class _VocabParallelCrossEntropy(torch.autograd.Function):
    """Per-row ``logsumexp(z) - z[target]`` of logits split along the vocabulary: three all-reduces of one
    number per row (max, target logit, sum of exponentials) instead of gathering ``[rows, vocab]``."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, target: torch.Tensor, group: Group):
        vocab_local = logits.shape[-1]
        start = rank_in(group) * vocab_local
        row_max = _all_reduce(logits.max(dim=-1).values, group, op=dist.ReduceOp.MAX)
        shifted = logits - row_max.unsqueeze(-1)
        here = (target >= start) & (target < start + vocab_local)
        local_target = (target - start).masked_fill(~here, 0)
        picked = shifted.gather(-1, local_target.unsqueeze(-1)).squeeze(-1).masked_fill(~here, 0.0)
        picked = _all_reduce(picked, group)
        exp = shifted.exp()
        sum_exp = _all_reduce(exp.sum(dim=-1), group)
        exp.div_(sum_exp.unsqueeze(-1))  # softmax, kept for the backward
        ctx.save_for_backward(exp, here, local_target)
        return sum_exp.log() - picked

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        softmax, here, local_target = ctx.saved_tensors
        g = softmax.clone()
        rows = torch.arange(g.shape[0], device=g.device)
        g[rows, local_target] -= here.to(g.dtype)
        return g * grad.unsqueeze(-1), None, None


def vocab_parallel_cross_entropy(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = -100,
                                 reduction: str = "mean", *, group: Group) -> torch.Tensor:
    """``F.cross_entropy(full_logits, target, ignore_index=..., reduction=...)`` computed from this rank's
    vocabulary slice ``logits[..., V/tp]`` (rank ``r`` holds ids ``[r V/tp, (r+1) V/tp)``). Same call
    signature as ``F.cross_entropy`` for 2-D logits, so a model's ``loss_fn`` hook can take either; the mean
    over no valid target is NaN, as in PyTorch."""
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction={reduction!r}; expected mean, sum or none")
    flat_logits = logits.reshape(-1, logits.shape[-1])
    flat_target = target.reshape(-1)
    valid = flat_target != ignore_index
    safe = flat_target.masked_fill(~valid, 0)
    if world_size(group) == 1:
        losses = F.cross_entropy(flat_logits, safe, reduction="none")
    else:
        losses = _VocabParallelCrossEntropy.apply(flat_logits, safe, group)
    losses = losses * valid  # zero loss and gradient at ignored positions
    if reduction == "none":
        return losses.view(target.shape)
    if reduction == "sum":
        return losses.sum()
    return losses.sum() / valid.sum()
