"""The typed schema of the ``model`` config group: the keys every family reads (:class:`ModelConfigBase`), the
enums they take, and :func:`union_schema`, which merges the families' own schemas into the one class Hydra
checks the group against at compose time.

Each family declares its schema as a subclass of :class:`ModelConfigBase` in ``pretrain/models/<family>/
config.py`` (``GPTConfig``, ``BERTConfig``, ``T5Config``), adding the keys only it reads. The composed ``model``
node is typed by their union (``pretrain.config.ModelConfig``), so a misspelt key or a value of the wrong
type anywhere in the group fails at compose time with Hydra's own message; the family then refuses a key of
another family set for it (:meth:`pretrain.models.family.ModelFamily.check_keys`).

Imported by ``pretrain.config``: no torch here (the SLURM launcher composes configs without it).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from enum import Enum
from typing import Any, Optional

from pretrain.core.errors import ConfigError


class PositionEmbedding(str, Enum):
    learned = "learned"
    rope = "rope"
    relative = "relative"  # T5's bucketed relative position bias (model.family=t5 only)
    alibi = "alibi"  # linear biases of the attention scores, no position embedding (model.family=gpt; BLOOM, MPT)


class Normalization(str, Enum):
    layernorm = "layernorm"
    rmsnorm = "rmsnorm"


class Activation(str, Enum):
    gelu = "gelu"  # tanh approximation (GPT-2, Hugging Face "gelu_new")
    swiglu = "swiglu"
    gelu_exact = "gelu_exact"  # erf GELU (BERT, Hugging Face "gelu")
    relu = "relu"  # T5 v1.0
    geglu = "geglu"  # gated tanh-GELU (T5 v1.1 "gated-gelu")


class RecomputeGranularity(str, Enum):
    full = "full"  # recompute each whole transformer layer
    selective = "selective"  # recompute only the core attention (Megatron's selective recomputation)


GRANULARITIES = tuple(g.value for g in RecomputeGranularity)


def check_granularity(value: Any) -> str:
    """``model.recompute_granularity`` as a plain string; ConfigError naming the key for anything else (a config
    that bypassed the schema)."""
    value = getattr(value, "value", value)  # the schema's enum
    if value not in GRANULARITIES:
        raise ConfigError(f"model.recompute_granularity={value!r}; expected one of {', '.join(GRANULARITIES)}")
    return value


# Defaults are those of the single flat schema this one replaced: the families' presets set what differs.
@dataclass
class ModelConfigBase:
    family: str = "gpt"
    # Informative name of the preset (gpt2-125m, llama-7b...); not used for anything but display.
    name: str = "custom"
    # null: take the tokenizer's vocabulary, padded up to a multiple of make_vocab_size_divisible_by.
    vocab_size: Optional[int] = None
    make_vocab_size_divisible_by: int = 128
    num_layers: int = 2
    hidden_size: int = 64
    num_attention_heads: int = 4
    # null: multi-head attention (= num_attention_heads); fewer gives grouped-query attention.
    num_key_value_heads: Optional[int] = None
    # null: the family's default (4*hidden for GELU/ReLU, LLaMA's 2/3*4*hidden rounded to 256 for SwiGLU).
    ffn_hidden_size: Optional[int] = None
    seq_length: int = 128
    position_embedding: PositionEmbedding = PositionEmbedding.learned
    normalization: Normalization = Normalization.layernorm
    norm_eps: float = 1e-5
    activation: Activation = Activation.gelu
    bias: bool = True
    tie_word_embeddings: bool = True
    hidden_dropout: float = 0.0
    attention_dropout: float = 0.0
    init_method_std: float = 0.02
    # Recompute each transformer layer in the backward pass (less activation memory, ~33% more compute).
    activation_checkpointing: bool = False
    # What activation_checkpointing recomputes: full = every layer; selective = only the core attention (scores,
    # softmax, weighted sum: the seq x seq part), keeping the linears' activations (pretrain/models/recompute.py).
    recompute_granularity: RecomputeGranularity = RecomputeGranularity.full
    # A local Hugging Face model directory (as written by `python -m pretrain.export`) whose weights initialise
    # the model before training; its architecture and shape must match this config (see pretrain/hf.py).
    init_from: Optional[str] = None


def own_keys(schema: type) -> list[str]:
    """The keys ``schema`` adds to :class:`ModelConfigBase` (what only its family reads)."""
    base = {f.name for f in dataclasses.fields(ModelConfigBase)}
    return [f.name for f in dataclasses.fields(schema) if f.name not in base]


def union_schema(schemas: dict[str, type], name: str = "ModelConfig", module: str = "pretrain.models") -> type:
    """One dataclass holding every key of ``schemas`` (family name -> schema), in order: the base keys, then each
    family's own. A key two families declare must have one type and one default (TypeError otherwise, at
    import: the union could not type it). The class must be importable as ``module.name`` (pickle finds a
    composed config's type by it: the Hydra SLURM launcher pickles the config)."""
    fields: dict[str, tuple[str, Any, dataclasses.Field]] = {}  # key -> (family, type, field)
    for family, schema in schemas.items():
        if not (isinstance(schema, type) and issubclass(schema, ModelConfigBase)):
            raise TypeError(f"the config schema of model family {family!r} must subclass ModelConfigBase")
        hints = typing.get_type_hints(schema)
        for f in dataclasses.fields(schema):
            if f.name not in fields:
                fields[f.name] = (family, hints[f.name], f)
                continue
            other, hint, g = fields[f.name]
            if f.name != "family" and (hint != hints[f.name] or g.default != f.default):
                raise TypeError(f"model.{f.name} is {hint} = {g.default!r} in {other}'s schema but "
                                f"{hints[f.name]} = {f.default!r} in {family}'s; one key has one type and default")
    union = dataclasses.make_dataclass(name, [
        (key, hint, dataclasses.field(default=f.default)) for key, (_, hint, f) in fields.items()])
    union.__module__ = module
    union.__doc__ = f"Every key of the model group: the union of {', '.join(s.__name__ for s in schemas.values())}."
    return union
