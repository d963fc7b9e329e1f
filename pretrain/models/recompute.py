"""Activation recomputation (checkpointing), Megatron's two granularities, shared by every model family and by
pipeline-stage wrappers.

``model.activation_checkpointing=true`` turns it on; ``model.recompute_granularity`` chooses what is recomputed
in the backward pass:

* ``full``: each transformer layer is one checkpoint: only its input is kept, the whole layer forward runs again
  in the backward pass (least memory, one extra forward of every layer). Call sites: :func:`run_layer`.
* ``selective``: only the *core attention* of each attention module is checkpointed (Korthikanti et al. 2022):
  the split into heads, rotary embedding where the model has one, ``q k^T``, softmax, attention dropout and the
  weighted sum of values, i.e. the ``[batch, heads, seq, seq]``-sized part. The linears' inputs and outputs are
  kept, so recomputing costs only the attention-core forward. Call sites: :func:`core_attention`.

Both use ``torch.utils.checkpoint`` non-reentrant, which restores the RNG state for the recomputation, so the
dropout masks of the recomputed forward are those of the original one.

Tensor parallelism (:mod:`pretrain.parallel.parallelize`) replaces the linears by column/row-parallel ones and
hooks the attention/MLP modules' inputs:

* the selective region holds no collective: it starts from the column-parallel q/k/v outputs (this rank's
  heads, no communication in the forward) and ends before the row-parallel output projection (whose all-reduce
  is outside it), so it recomputes the local attention on this rank's heads only;
* the full region holds the layer's collectives (the row-parallel all-reduces in the forward, the region
  entries whose all-reduce is in the backward). The recomputation repeats those forward all-reduces on the
  same inputs, in the same order, on every rank of the group (every rank runs the same backward), so it
  returns the same sums as the original forward.
"""

from __future__ import annotations

from typing import Any, Callable

from torch import nn
from torch.utils.checkpoint import checkpoint

from pretrain.core.errors import ConfigError

GRANULARITIES = ("full", "selective")


def check_granularity(value: Any) -> str:
    """``model.recompute_granularity`` as a plain string; ConfigError naming the key for anything else."""
    value = getattr(value, "value", value)  # the schema's enum
    if value not in GRANULARITIES:
        raise ConfigError(f"model.recompute_granularity={value!r}; expected one of {', '.join(GRANULARITIES)}")
    return value


def granularity(args: Any, training: bool) -> str | None:
    """What ``args`` recompute now: ``"full"``, ``"selective"`` or None (not training, or checkpointing off)."""
    if not (training and getattr(args, "activation_checkpointing", False)):
        return None
    return check_granularity(getattr(args, "recompute_granularity", "full"))


def run_layer(layer: nn.Module | Callable[..., Any], *inputs: Any, args: Any, training: bool) -> Any:
    """``layer(*inputs)``, as one checkpoint when ``args`` ask for full recomputation and ``training``."""
    if granularity(args, training) == "full":
        return checkpoint(layer, *inputs, use_reentrant=False)
    return layer(*inputs)


def core_attention(fn: Callable[..., Any], *inputs: Any, args: Any, training: bool) -> Any:
    """``fn(*inputs)`` (the core attention: heads in, attention output out), as one checkpoint when ``args``
    ask for selective recomputation and ``training``. ``fn`` must hold no tensor-parallel collective."""
    if granularity(args, training) == "selective":
        return checkpoint(fn, *inputs, use_reentrant=False)
    return fn(*inputs)


def recompute_flops(args: Any, layers_forward: float, attention_core_forward: float) -> float:
    """Hardware FLOPs the recomputation adds: one forward of every layer (``layers_forward``, attention core
    included) under full, one forward of the attention core (the score and weighted-sum matmuls,
    ``attention_core_forward``) under selective, nothing without activation checkpointing."""
    return {"full": layers_forward, "selective": attention_core_forward, None: 0.0}[granularity(args, True)]
