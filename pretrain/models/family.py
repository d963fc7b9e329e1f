"""What a model family is: :class:`ModelFamily`, the one place where GPT, BERT and T5 differ, and the small
helpers the families share.

A family owns everything that differs between architectures, so the trainer, engine, checkpoints, data
pipeline, parallelism and export stay family-agnostic. It has:

* a typed config schema (``config_schema``, a :class:`~pretrain.models.schema.ModelConfigBase` subclass) and
  ``resolve_args``: the model config group (+ the tokenizer) -> a resolved args dataclass (``args_type``,
  stored in checkpoints as ``model_args``);
* ``build``: args -> ``nn.Module`` whose ``forward(**batch)`` returns the mean loss, with activation
  checkpointing applied from outside (``recompute``, :func:`pretrain.models.recompute.apply_ac`);
* the data side: ``sample_length`` (raw tokens per sample window), ``make_transform`` (the objective: (sample
  index, window) -> batch arrays, a function of (seed, index, window) only, so a resumed run sees the same
  batches), ``tokens_per_sample`` and ``flops_per_token`` for throughput and MFU;
* the parallel side: ``tp_plan`` (what tensor parallelism makes of each module), ``sequence_parallel``,
  ``shape_facts`` (what the layout checks need), ``pipeline_stages`` and ``to_pipe_batch``;
* ``hf``: its Hugging Face adapter (:class:`HFAdapter`: classes, parameter renames, configs).

A family is registered by one line in :data:`pretrain.models.FAMILY_PACKAGES`. This module and a family's
``family.py`` import no torch (``pretrain.config`` reads the schemas through them); the modules that need it
(model, pipeline stages, adapter) are imported where used.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from pretrain.core.errors import ConfigError, DataError
from pretrain.models.schema import ModelConfigBase

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

Transform = Callable[[int, "np.ndarray"], dict[str, "np.ndarray"]]


@dataclass
class TokenizerInfo:
    """What a family needs to know of the tokenizer the shards were written with."""

    path: Path | None
    vocab_size: int | None
    eod_id: int
    special_tokens: dict[str, int] = field(default_factory=dict)  # token text -> id

    @classmethod
    def load(cls, path: Path | None, vocab_size: int, eod_id: int) -> TokenizerInfo:
        special: dict[str, int] = {}
        if path is not None:
            try:
                data = json.loads(Path(path).read_text())
            except (OSError, json.JSONDecodeError) as e:
                raise DataError(f"cannot read the tokenizer {path}: {e}") from None
            special = {t["content"]: int(t["id"]) for t in data.get("added_tokens", []) if t.get("special", True)}
        return cls(Path(path) if path else None, vocab_size, eod_id, special)

    def require(self, *tokens: str, family: str) -> list[int]:
        missing = [t for t in tokens if t not in self.special_tokens]
        if missing:
            raise DataError(
                f"model.family={family} needs the special tokens {', '.join(missing)} in the tokenizer "
                f"{self.path}, which has {sorted(self.special_tokens) or 'none'}; build the data with a matching "
                f"tokenizer (e.g. tokenizer=wordpiece for BERT, tokenizer=unigram for T5)"
            )
        return [self.special_tokens[t] for t in tokens]


def require(tokenizer: TokenizerInfo, tokens: tuple[str, ...], family: str, sample_kind: str) -> list[int]:
    """``tokenizer.require`` with the hint for the built-in sample data (``data.path=null``)."""
    try:
        return tokenizer.require(*tokens, family=family)
    except DataError as e:
        raise DataError(f"{e}; for the built-in sample data set data.sample_tokenizer={sample_kind}") from None


def padded_vocab_size(vocab: int, multiple: int) -> int:
    return ((vocab + multiple - 1) // multiple) * multiple


def resolve_vocab(model_cfg: Any, tokenizer_vocab_size: int | None) -> int:
    if model_cfg.vocab_size is None:
        if tokenizer_vocab_size is None:
            raise ConfigError("model.vocab_size is null and no tokenizer is known to take it from")
        return padded_vocab_size(tokenizer_vocab_size, model_cfg.make_vocab_size_divisible_by)
    return int(model_cfg.vocab_size)


def enum_value(x: Any) -> Any:
    return x.value if hasattr(x, "value") else x


def check_heads(m: Any) -> int:
    """Head arithmetic shared by every family; returns the number of key/value heads."""
    if m.hidden_size % m.num_attention_heads:
        raise ConfigError(
            f"model.hidden_size={m.hidden_size} is not divisible by model.num_attention_heads={m.num_attention_heads}"
        )
    kv = m.num_key_value_heads or m.num_attention_heads
    if m.num_attention_heads % kv:
        raise ConfigError(
            f"model.num_attention_heads={m.num_attention_heads} is not a multiple of model.num_key_value_heads={kv}"
        )
    return kv


# Fields of an args dataclass that do not change the shape of the parameters (a checkpoint of any value of
# these resumes into any other); a family adds its own (objective settings: data, not parameters).
COMMON_NON_SHAPE_FIELDS = frozenset({"hidden_dropout", "attention_dropout", "init_method_std",
                                     "activation_checkpointing", "recompute_granularity", "norm_eps"})


@dataclass(frozen=True)
class ShapeFacts:
    """What the layout checks need of a model's shape (:mod:`pretrain.parallel.validate`, ``parallelize``)."""

    heads: int
    kv_heads: int
    ffn: int
    layers: dict[str, int]  # config key -> layer count each pipeline stage must split evenly


@dataclass(frozen=True)
class RecomputePlan:
    """Where activation checkpointing goes (:func:`pretrain.models.recompute.apply_ac`): ``layers`` name the
    ``ModuleList``s of transformer layers (each layer is one checkpoint under ``full``), ``attention`` the
    attributes of a layer holding attention modules, whose ``core`` method is checkpointed under ``selective``."""

    layers: tuple[str, ...] = ("layers",)
    attention: tuple[str, ...] = ("self_attn",)


class HFAdapter(ABC):
    """How a family's models map onto ``transformers`` classes (the generic export/import is :mod:`pretrain.hf`).
    Every mapping is a rename (plus, for some classes, a concatenation or transpose), so export and import are
    exact."""

    #: the classes this family exports to and imports from, in the order export prefers them
    architectures: tuple[str, ...] = ()
    #: prefixes of our parameters the classes have no place for: an import keeps their fresh init
    kept_fresh: tuple[str, ...] = ()

    def misfit(self, arch: str, args: Any) -> list[str]:
        """Why a model with ``args`` cannot be ``arch`` of this family (empty = it can)."""
        return []

    @abstractmethod
    def to_hf(self, arch: str, args: Any, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Our state dict -> the ``arch`` state dict (tied copies left out: Hugging Face re-ties them)."""

    @abstractmethod
    def from_hf(self, arch: str, args: Any, get: Callable[[str], torch.Tensor]) -> dict[str, torch.Tensor]:
        """The ``arch`` tensors (``get(key)``, CheckpointError when absent) -> our state dict."""

    @abstractmethod
    def hf_config(self, arch: str, args: Any, special: dict[str, int]) -> Any:
        """The ``transformers`` config object of ``arch`` for ``args``; ``special`` = token text -> id."""

    @abstractmethod
    def args_from_hf_config(self, arch: str, c: dict[str, Any], where: Path) -> dict[str, Any]:
        """The shape fields of our args that a ``config.json`` (as a dict) implies."""

    @abstractmethod
    def tokenizer_specials(self, arch: str, special: dict[str, int]) -> dict[str, Any]:
        """Keyword arguments of ``PreTrainedTokenizerFast`` naming the special tokens (values: token texts)."""

    def config_fixes(self, arch: str, args: Any) -> dict[str, Any]:
        """Keys to overwrite in the ``config.json`` that ``transformers`` wrote (empty: leave it as written)."""
        return {}


class ModelFamily(ABC):
    name: str = ""
    #: the keys of the ``model`` group this family reads (a ModelConfigBase subclass)
    config_schema: type = ModelConfigBase
    #: the resolved args dataclass
    args_type: type = object
    #: args fields that leave the parameter shapes alone
    non_shape_fields: frozenset[str] = COMMON_NON_SHAPE_FIELDS
    #: module-name pattern -> tensor-parallel style (:mod:`pretrain.parallel.plan`)
    tp_plan: Mapping[str, object] = {}
    #: where sequence parallelism splits (a :class:`pretrain.parallel.plan.SequenceParallel`); None: refused
    sequence_parallel: Any = None
    recompute: RecomputePlan = RecomputePlan()
    #: why the family has no pipeline stages (None: :meth:`pipeline_stages` builds them)
    pipeline_unsupported: str | None = None

    # ---------------------------------------------------------------------------------------------- config

    def resolve_args(self, model_cfg: Any, tokenizer: TokenizerInfo) -> Any:
        """Fill the config's nulls and check the shape (ConfigError naming the key)."""
        self.check_keys(model_cfg)
        return self.resolve(model_cfg, tokenizer)

    def check_keys(self, model_cfg: Any) -> None:
        """Refuse a key of another family's schema set for this one. The composed group holds every family's
        keys (their union types it at compose time), so a key counts as set when it differs from the default."""
        from pretrain.models import ModelConfig, owner_of

        if not hasattr(model_cfg, "keys"):
            return
        ours = set(self.config_schema.__dataclass_fields__)
        defaults = ModelConfig()
        for key in model_cfg.keys():
            if key in ours or not hasattr(defaults, key):
                continue
            value = model_cfg[key]
            if value != getattr(defaults, key):
                raise ConfigError(
                    f"model.{key}={enum_value(value)} is not a key of model.family={self.name} (only "
                    f"model.family={owner_of(key)} reads it); remove it or choose a {owner_of(key)} model")

    @abstractmethod
    def resolve(self, model_cfg: Any, tokenizer: TokenizerInfo) -> Any:
        """:meth:`resolve_args` after the key check."""

    @abstractmethod
    def shape_facts(self, m: Any) -> ShapeFacts:
        """Heads, MLP width and layer counts of a model config (nulls resolved as :meth:`resolve` does) or of
        resolved args."""

    # ---------------------------------------------------------------------------------------------- model

    @abstractmethod
    def make_model(self, args: Any) -> nn.Module:
        """The model as its file defines it (no recomputation, no parallelism)."""

    def build(self, args: Any) -> nn.Module:
        """The model with activation checkpointing applied (when ``args`` ask for it); ``forward(**batch)``
        returns the mean loss."""
        from pretrain.models.recompute import apply_ac

        return apply_ac(self.make_model(args), self.recompute, args)

    def num_parameters(self, args: Any) -> int:
        return sum(p.numel() for p in self.make_model(args).parameters())

    # ---------------------------------------------------------------------------------------------- data

    @abstractmethod
    def sample_length(self, args: Any) -> int:
        """Tokens per sample window read from the shards."""

    @abstractmethod
    def make_transform(self, args: Any, tokenizer: TokenizerInfo, seed: int) -> Transform | None:
        """The objective: (sample index, window) -> batch arrays; None = causal LM on the window."""

    @abstractmethod
    def flops_per_token(self, args: Any) -> dict[str, float]:
        """Model and hardware FLOPs per token of :meth:`tokens_per_sample` (fwd + bwd)."""

    @abstractmethod
    def tokens_per_sample(self, args: Any) -> int:
        """Tokens a sample counts for throughput (GPT: seq_length)."""

    def callbacks(self, args: Any) -> list:
        """Trainer callbacks the family's models need (e.g. GPT's mixture-of-experts metrics); none by default."""
        return []

    # ---------------------------------------------------------------------------------------------- pipeline

    def pipeline_stages(self, model: nn.Module, group: Any) -> tuple[list, Callable]:
        """DeepSpeed ``PipelineModule`` layers wrapping ``model``'s own modules, and the loss on the last stage."""
        raise ValueError(f"no pipeline stages for model family {self.name!r}: {self.pipeline_unsupported}")

    def to_pipe_batch(self, batch: dict[str, Any]) -> tuple[Any, Any]:
        """A loader batch as the pipeline engine takes it: ``(first-stage inputs, last-stage labels)``."""
        raise ValueError(f"no pipeline stages for model family {self.name!r}: {self.pipeline_unsupported}")

    # ---------------------------------------------------------------------------------------------- export

    @property
    def hf(self) -> HFAdapter | None:
        """The Hugging Face adapter (None: the family has no export)."""
        return None
