"""The model zoo: one :class:`ModelFamily` per architecture, chosen by ``model.family``.

A family owns everything that differs between GPT, BERT and T5 — so the trainer, engine, checkpoints and
data pipeline stay family-agnostic:

* ``resolve_args``: the model config group (+ the tokenizer) -> a resolved args dataclass;
* ``build``: args -> ``nn.Module`` whose ``forward(**batch)`` returns the mean loss;
* ``sample_length``: raw tokens per sample window read from the token shards;
* ``make_transform``: the pretraining objective, turning (sample index, window) into the model's batch
  arrays; it must depend only on (seed, index, window), so a resumed run sees the same batches;
* ``flops_per_token`` / ``tokens_per_sample``: for throughput and MFU.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from omegaconf import DictConfig
from torch import nn

from pretrain.core.errors import ConfigError, DataError
from pretrain.models.gpt import GPT, GPTArgs, count_parameters, default_ffn_hidden_size
from pretrain.models.recompute import check_granularity

Transform = Callable[[int, np.ndarray], dict[str, np.ndarray]]


@dataclass
class TokenizerInfo:
    """What a family needs to know of the tokenizer the shards were written with."""

    path: Path | None
    vocab_size: int | None
    eod_id: int
    special_tokens: dict[str, int] = field(default_factory=dict)  # token text -> id

    @classmethod
    def load(cls, path: Path | None, vocab_size: int, eod_id: int) -> "TokenizerInfo":
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


def padded_vocab_size(vocab: int, multiple: int) -> int:
    return ((vocab + multiple - 1) // multiple) * multiple


def resolve_vocab(model_cfg: DictConfig, tokenizer_vocab_size: int | None) -> int:
    if model_cfg.vocab_size is None:
        if tokenizer_vocab_size is None:
            raise ConfigError("model.vocab_size is null and no tokenizer is known to take it from")
        return padded_vocab_size(tokenizer_vocab_size, model_cfg.make_vocab_size_divisible_by)
    return int(model_cfg.vocab_size)


def enum_value(x: Any) -> Any:
    return x.value if hasattr(x, "value") else x


def check_heads(m: DictConfig) -> int:
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


# Fields of an args dataclass that do not change the shape of the parameters (a checkpoint of any value
# of these resumes into any other).
NON_SHAPE_FIELDS = {"hidden_dropout", "attention_dropout", "init_method_std", "activation_checkpointing",
                    "recompute_granularity",
                    "norm_eps", "rotary_base",
                    # objective settings (BERT masking, T5 span corruption): data, not parameters
                    "mlm_probability", "mask_replace_prob", "random_replace_prob", "noise_density",
                    "mean_noise_span_length", "decoder_start_id"}


def shape_of(args: Any) -> dict[str, Any]:
    return {k: v for k, v in asdict(args).items() if k not in NON_SHAPE_FIELDS}


class ModelFamily(ABC):
    name: str = ""
    args_type: type = object

    @abstractmethod
    def resolve_args(self, model_cfg: DictConfig, tokenizer: TokenizerInfo) -> Any:
        """Fill the config's nulls and check the shape (ConfigError naming the key)."""

    @abstractmethod
    def build(self, args: Any) -> nn.Module:
        """The model; ``forward(**batch)`` returns the mean loss."""

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

    def num_parameters(self, args: Any) -> int:
        return sum(p.numel() for p in self.build(args).parameters())


class GPTFamily(ModelFamily):
    name = "gpt"
    args_type = GPTArgs

    def resolve_args(self, model_cfg: DictConfig, tokenizer: TokenizerInfo) -> GPTArgs:
        m = model_cfg
        kv = check_heads(m)
        act = enum_value(m.activation)
        pos = enum_value(m.position_embedding)
        if pos not in ("learned", "rope") or act not in ("gelu", "swiglu"):
            raise ConfigError(
                f"model.family=gpt takes model.position_embedding learned|rope and model.activation gelu|swiglu, "
                f"got {pos} and {act} (relative positions, relu and geglu are T5's; gelu_exact is BERT's)"
            )
        if pos == "rope" and (m.hidden_size // m.num_attention_heads) % 2:
            raise ConfigError(
                f"rotary embeddings need an even head dimension; hidden_size/heads = {m.hidden_size // m.num_attention_heads}"
            )
        return GPTArgs(
            vocab_size=resolve_vocab(m, tokenizer.vocab_size),
            num_layers=m.num_layers,
            hidden_size=m.hidden_size,
            num_attention_heads=m.num_attention_heads,
            num_key_value_heads=kv,
            ffn_hidden_size=m.ffn_hidden_size or default_ffn_hidden_size(m.hidden_size, act),
            seq_length=m.seq_length,
            position_embedding=pos,
            rotary_base=m.rotary_base,
            normalization=enum_value(m.normalization),
            norm_eps=m.norm_eps,
            activation=act,
            bias=m.bias,
            tie_word_embeddings=m.tie_word_embeddings,
            hidden_dropout=m.hidden_dropout,
            attention_dropout=m.attention_dropout,
            init_method_std=m.init_method_std,
            activation_checkpointing=m.activation_checkpointing,
            recompute_granularity=check_granularity(m.get("recompute_granularity", "full")),
        )

    def build(self, args: GPTArgs) -> GPT:
        return GPT(args)

    def sample_length(self, args: GPTArgs) -> int:
        return args.seq_length + 1

    def make_transform(self, args: GPTArgs, tokenizer: TokenizerInfo, seed: int) -> Transform | None:
        return None

    def flops_per_token(self, args: GPTArgs) -> dict[str, float]:
        from pretrain.flops import gpt_flops_per_token

        return gpt_flops_per_token(args)

    def tokens_per_sample(self, args: GPTArgs) -> int:
        return args.seq_length

    def num_parameters(self, args: GPTArgs) -> int:
        return count_parameters(args)["total"]


from pretrain.models.bert import BERTFamily  # noqa: E402  (the families build on the classes above)
from pretrain.models.t5 import T5Family  # noqa: E402

FAMILIES: dict[str, ModelFamily] = {"gpt": GPTFamily(), "bert": BERTFamily(), "t5": T5Family()}


def get_family(name: str) -> ModelFamily:
    if name not in FAMILIES:
        raise ConfigError(f"model.family={name!r} is not known; expected one of {', '.join(sorted(FAMILIES))}")
    return FAMILIES[name]


def resolve_args(model_cfg: DictConfig, tokenizer_vocab_size: int | None) -> GPTArgs:
    """GPT args from the model config and a vocabulary size (kept for callers that have no tokenizer file:
    the benchmark and config tests)."""
    family = get_family(model_cfg.family)
    return family.resolve_args(model_cfg, TokenizerInfo(None, tokenizer_vocab_size, 0))


def family_of(args: Any) -> ModelFamily:
    for family in FAMILIES.values():
        if type(args) is family.args_type:
            return family
    raise TypeError(f"no model family takes {type(args).__name__}")


def build_model(args: Any) -> nn.Module:
    return family_of(args).build(args)
