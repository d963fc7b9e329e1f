"""Activation recomputation (checkpointing), Megatron's two granularities, applied to a built model from the
outside (as torchtitan's ``apply_ac``): the model files call nothing of it.

``model.activation_checkpointing=true`` turns it on; ``model.recompute_granularity`` chooses what is recomputed
in the backward pass:

* ``full``: each transformer layer is one checkpoint: only its input is kept, the whole layer forward runs again
  in the backward pass (least memory, one extra forward of every layer);
* ``selective``: only the *core attention* of each attention module is checkpointed (Korthikanti et al. 2022):
  the split into heads, rotary embedding where the model has one, ``q k^T``, softmax, attention dropout and the
  weighted sum of values, i.e. the ``[batch, heads, seq, seq]``-sized part. The linears' inputs and outputs are
  kept, so recomputing costs only the attention-core forward.

:func:`apply_ac` finds the layers and attention modules by the family's
:class:`~pretrain.models.family.RecomputePlan` and replaces the layer's ``forward`` (full) or the attention's
``core`` method (selective) *on the instance* by a :class:`Checkpointed` call of the original method, so module
and parameter names do not change. It runs as one checkpoint only while the module trains. Both use
``torch.utils.checkpoint`` non-reentrant, which restores the RNG state for the recomputation, so the dropout
masks of the recomputed forward are those of the original one.

Tensor parallelism (:mod:`pretrain.parallel.parallelize`), applied after this, replaces the linears by
column/row-parallel ones and hooks the attention/MLP modules' inputs:

* the selective region holds no collective: it starts from the column-parallel q/k/v outputs (this rank's
  heads, no communication in the forward) and ends before the row-parallel output projection (whose all-reduce
  is outside it), so it recomputes the local attention on this rank's heads only;
* the full region holds the layer's collectives (the row-parallel all-reduces in the forward, the region
  entries whose all-reduce is in the backward). The recomputation repeats those forward all-reduces on the
  same inputs, in the same order, on every rank of the group (every rank runs the same backward), so it
  returns the same sums as the original forward.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

from torch import nn
from torch.utils.checkpoint import checkpoint

from pretrain.models.family import RecomputePlan
from pretrain.models.schema import check_granularity


def granularity(args: Any, training: bool) -> str | None:
    """What ``args`` recompute now: ``"full"``, ``"selective"`` or None (not training, or checkpointing off)."""
    if not (training and getattr(args, "activation_checkpointing", False)):
        return None
    return check_granularity(getattr(args, "recompute_granularity", "full"))


class Checkpointed:
    """A module's bound method run as one non-reentrant checkpoint while the module trains, as it is otherwise.
    Holds the bound method (not a closure), so ``copy.deepcopy`` of the module rebinds it to the copy."""

    def __init__(self, method: Callable[..., Any]):
        self.method = method
        functools.update_wrapper(self, method)

    def __call__(self, *args: Any) -> Any:
        if self.method.__self__.training:
            return checkpoint(self.method, *args, use_reentrant=False)
        return self.method(*args)


def apply_ac(model: nn.Module, plan: RecomputePlan, args: Any) -> nn.Module:
    """Checkpoint ``model``'s layers (``full``) or attention cores (``selective``) as ``args`` ask, in place;
    returns ``model``. Nothing without ``args.activation_checkpointing``."""
    mode = granularity(args, training=True)
    if mode is None:
        return model
    for path in plan.layers:
        for layer in model.get_submodule(path):
            if mode == "full":
                layer.forward = Checkpointed(layer.forward)
                continue
            for name in plan.attention:
                attention = getattr(layer, name, None)
                if attention is not None:
                    attention.core = Checkpointed(attention.core)
    return model


def recompute_flops(args: Any, layers_forward: float, attention_core_forward: float) -> float:
    """Hardware FLOPs the recomputation adds: one forward of every layer (``layers_forward``, attention core
    included) under full, one forward of the attention core (the score and weighted-sum matmuls,
    ``attention_core_forward``) under selective, nothing without activation checkpointing."""
    return {"full": layers_forward, "selective": attention_core_forward, None: 0.0}[granularity(args, True)]
