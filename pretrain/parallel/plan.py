"""The vocabulary of tensor-parallel plans: what :func:`pretrain.parallel.parallelize.parallelize` makes of a
module, torchtitan style. A family's plan (``ModelFamily.tp_plan``) maps module-name patterns (``fnmatch``,
against ``named_modules()``) to these styles; its ``sequence_parallel`` says where sequence parallelism
splits. Plain data, no torch: the families declare their plans without importing the layers.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Region:
    """Enter the TP region once at this module's input: positional args ``args`` (same tensor object once).
    An attention module (one with a ``core`` method) also gets its own dropout stream per tensor rank."""

    args: tuple[int, ...] = (0,)


@dataclass(frozen=True)
class Column:
    """Column-parallel linear (output features split)."""

    copy_input: bool = True  # False: the enclosing Region already entered


@dataclass(frozen=True)
class Row:
    """Row-parallel linear (input features split, one all-reduce of the output)."""


@dataclass(frozen=True)
class VocabEmbedding:
    """Vocabulary-parallel token embedding."""


@dataclass(frozen=True)
class VocabOutput:
    """The output layer: column-parallel over the vocabulary, logits left split for the loss."""


@dataclass(frozen=True)
class HeadSplit:
    """A parameter (or an ``nn.Embedding``'s table) whose dimension ``dim`` indexes attention heads."""

    dim: int


@dataclass(frozen=True)
class SequenceParallel:
    """Megatron's sequence parallelism for a family: the activations are split along the sequence at the input
    of the module ``scatter_at``; the dropout modules whose names start with ``dropouts`` then see different
    chunks per rank (their own mask streams), and the replicated parameters whose names start with ``params``
    see one chunk each (their gradients are summed over the tensor ranks)."""

    scatter_at: str
    dropouts: tuple[str, ...]
    params: tuple[str, ...]
