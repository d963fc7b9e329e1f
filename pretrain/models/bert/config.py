"""BERT's config: the keys of the ``model`` group it reads (:class:`BERTConfig`), the resolved shape
(:class:`BERTArgs`; stored in checkpoints as ``model_args``) and :func:`resolve`, with the checks that name the
key. No torch here."""

from __future__ import annotations

from dataclasses import dataclass

from pretrain.core.errors import ConfigError
from pretrain.models.family import TokenizerInfo, check_heads, enum_value, require, resolve_vocab
from pretrain.models.schema import ModelConfigBase, check_granularity

BERT_SPECIALS = ("[CLS]", "[SEP]", "[MASK]", "[PAD]")


@dataclass
class BERTConfig(ModelConfigBase):
    """Post-norm bidirectional encoder: learned positions, LayerNorm, erf or tanh GELU, biases, the MLM decoder
    tied to the embeddings, multi-head attention (the shared style keys must say so)."""

    family: str = "bert"
    type_vocab_size: int = 2
    # Sentence-order prediction (ALBERT): [CLS] A [SEP] B [SEP] from two consecutive pieces of one document,
    # swapped half of the time; false = one segment [CLS] window [SEP].
    sop: bool = False
    # Masked LM: fraction of (non-special) tokens predicted; of those, the fraction replaced by [MASK] and by a
    # random token (the rest are kept), BERT's 80/10/10.
    mlm_probability: float = 0.15
    mask_replace_prob: float = 0.8
    random_replace_prob: float = 0.1


@dataclass
class BERTArgs:
    vocab_size: int
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    ffn_hidden_size: int
    seq_length: int  # = max positions
    type_vocab_size: int = 2
    activation: str = "gelu_exact"  # gelu_exact (BERT) | gelu (tanh approximation)
    norm_eps: float = 1e-12
    sop: bool = False
    mlm_probability: float = 0.15
    mask_replace_prob: float = 0.8
    random_replace_prob: float = 0.1
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    init_method_std: float = 0.02
    # applied by ModelFamily.build (pretrain.models.recompute.apply_ac), not by the BERT module itself
    activation_checkpointing: bool = False
    recompute_granularity: str = "full"  # full | selective (pretrain.models.recompute)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


def default_bert_ffn(hidden_size: int) -> int:
    return 4 * hidden_size


def check_probabilities(m) -> None:
    p, r, k = m.mlm_probability, m.mask_replace_prob, m.random_replace_prob
    if not (0.0 < p < 1.0) or r < 0 or k < 0 or r + k > 1.0:
        raise ConfigError(
            f"model.mlm_probability={p} must be in (0, 1), and model.mask_replace_prob={r} + "
            f"model.random_replace_prob={k} must be non-negative and sum to at most 1"
        )


def resolve(m, tokenizer: TokenizerInfo) -> BERTArgs:
    kv = check_heads(m)
    act, pos, norm = enum_value(m.activation), enum_value(m.position_embedding), enum_value(m.normalization)
    wrong = []
    if pos != "learned":
        wrong.append(f"model.position_embedding={pos} (BERT: learned)")
    if norm != "layernorm":
        wrong.append(f"model.normalization={norm} (BERT: layernorm)")
    if act not in ("gelu_exact", "gelu"):
        wrong.append(f"model.activation={act} (BERT: gelu_exact or gelu)")
    if not m.bias:
        wrong.append("model.bias=false (BERT has biases)")
    if not m.tie_word_embeddings:
        wrong.append("model.tie_word_embeddings=false (BERT ties the MLM decoder to the embeddings)")
    if kv != m.num_attention_heads:
        wrong.append(f"model.num_key_value_heads={kv} (BERT: multi-head attention)")
    if wrong:
        raise ConfigError("model.family=bert does not support " + "; ".join(wrong))
    check_probabilities(m)
    if m.type_vocab_size < (2 if m.sop else 1):
        raise ConfigError(f"model.type_vocab_size={m.type_vocab_size} must be >= 2 with model.sop=true (segments A/B)")
    if m.seq_length < 8:
        raise ConfigError(f"model.seq_length={m.seq_length} is too short for [CLS] A [SEP] B [SEP] samples (>= 8)")
    if tokenizer.path is not None:  # a config-only resolve (benchmarks, tests) has no tokenizer to check
        require(tokenizer, BERT_SPECIALS, "bert", "wordpiece")
    return BERTArgs(
        vocab_size=resolve_vocab(m, tokenizer.vocab_size), num_layers=m.num_layers, hidden_size=m.hidden_size,
        num_attention_heads=m.num_attention_heads, ffn_hidden_size=m.ffn_hidden_size or default_bert_ffn(m.hidden_size),
        seq_length=m.seq_length, type_vocab_size=m.type_vocab_size, activation=act, norm_eps=m.norm_eps,
        sop=m.sop, mlm_probability=m.mlm_probability, mask_replace_prob=m.mask_replace_prob,
        random_replace_prob=m.random_replace_prob, hidden_dropout=m.hidden_dropout,
        attention_dropout=m.attention_dropout, init_method_std=m.init_method_std,
        activation_checkpointing=m.activation_checkpointing,
        recompute_granularity=check_granularity(getattr(m, "recompute_granularity", "full")),
    )
