"""Tensor-parallel layers built on :mod:`~pretrain.parallel.tensor.mappings`: :class:`ColumnParallelLinear`
(output features split: q/k/v by heads, MLP up/gate), :class:`RowParallelLinear` (input features split:
attention output, MLP down; one all-reduce of the output) and :class:`VocabParallelEmbedding` (vocabulary
rows split). A column layer followed by a row layer costs one all-reduce forward and one backward.

Every sharded parameter carries ``tensor_model_parallel=True``, ``partition_dim`` and ``partition_stride``
(Megatron's attributes): DeepSpeed's grad norm (``deepspeed.runtime.utils.is_model_parallel_parameter``)
then sums a sharded parameter over the tensor ranks and counts a replicated one on tensor rank 0 only, and
:func:`~pretrain.parallel.tensor.mappings.gather_tensor_parallel` / :mod:`pretrain.parallel.parallelize`
rebuild full tensors from shards.

A layer built on its own initialises its full weight as ``nn.Linear`` / ``nn.Embedding`` would and keeps its
slice, so for the same seed the shards are exactly the unsharded layer's (:meth:`ColumnParallelLinear.
from_dense` slices an existing layer).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.parallel.tensor.mappings import (
    Group,
    copy_to_tensor_model_parallel_region,
    divide,
    gather_from_sequence_parallel_region,
    gather_from_tensor_model_parallel_region,
    rank_in,
    reduce_from_tensor_model_parallel_region,
    reduce_scatter_to_sequence_parallel_region,
    scatter_to_tensor_model_parallel_region,
    shard,
    world_size,
)

# ------------------------------------------------------------------------------------------------ parameters


def set_tensor_model_parallel_attributes(param: torch.Tensor, partition_dim: int, stride: int = 1) -> None:
    """Megatron's tags: DeepSpeed's ``is_model_parallel_parameter`` reads ``tensor_model_parallel``."""
    param.tensor_model_parallel = True
    param.partition_dim = partition_dim
    param.partition_stride = stride


def is_tensor_parallel(param: torch.Tensor) -> bool:
    return bool(getattr(param, "tensor_model_parallel", False))


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
    def from_dense(cls, linear: nn.Linear, group: Group, **kwargs) -> ColumnParallelLinear:
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
    def from_dense(cls, linear: nn.Linear, group: Group, **kwargs) -> RowParallelLinear:
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
    def from_dense(cls, emb: nn.Embedding, group: Group) -> VocabParallelEmbedding:
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
