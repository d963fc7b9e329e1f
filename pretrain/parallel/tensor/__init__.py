"""Tensor-parallel building blocks, the Megatron way (Shoeybi et al. 2019), one concern per module:

* :mod:`~pretrain.parallel.tensor.mappings`: the collectives and the autograd functions that enter and leave a
  tensor-parallel region (copy / reduce / scatter / gather, and their sequence-parallel forms), shard/gather;
* :mod:`~pretrain.parallel.tensor.layers`: column-/row-parallel linears, the vocab-parallel embedding, and the
  tags DeepSpeed reads on sharded parameters;
* :mod:`~pretrain.parallel.tensor.cross_entropy`: the loss on vocabulary-split logits;
* :mod:`~pretrain.parallel.tensor.comm`: the byte counter of the collectives (:data:`TP_COMM`).

The names are re-exported here, so ``from pretrain.parallel.tensor import ColumnParallelLinear, TP_COMM``
works without knowing which module holds what.
"""

from pretrain.parallel.tensor.comm import TP_COMM, CommCounter
from pretrain.parallel.tensor.cross_entropy import vocab_parallel_cross_entropy
from pretrain.parallel.tensor.layers import (
    ColumnParallelLinear,
    RowParallelLinear,
    VocabParallelEmbedding,
    is_tensor_parallel,
    set_tensor_model_parallel_attributes,
)
from pretrain.parallel.tensor.mappings import (
    Group,
    copy_to_tensor_model_parallel_region,
    divide,
    gather_from_sequence_parallel_region,
    gather_from_tensor_model_parallel_region,
    gather_tensor_parallel,
    rank_in,
    reduce_from_tensor_model_parallel_region,
    reduce_scatter_to_sequence_parallel_region,
    scatter_to_sequence_parallel_region,
    scatter_to_tensor_model_parallel_region,
    shard,
    world_size,
)

__all__ = [
    "TP_COMM",
    "ColumnParallelLinear",
    "CommCounter",
    "Group",
    "RowParallelLinear",
    "VocabParallelEmbedding",
    "copy_to_tensor_model_parallel_region",
    "divide",
    "gather_from_sequence_parallel_region",
    "gather_from_tensor_model_parallel_region",
    "gather_tensor_parallel",
    "is_tensor_parallel",
    "rank_in",
    "reduce_from_tensor_model_parallel_region",
    "reduce_scatter_to_sequence_parallel_region",
    "scatter_to_sequence_parallel_region",
    "scatter_to_tensor_model_parallel_region",
    "set_tensor_model_parallel_attributes",
    "shard",
    "vocab_parallel_cross_entropy",
    "world_size",
]
