"""T5's config: the keys of the ``model`` group it reads (:class:`T5Config`), the resolved shape
(:class:`T5Args`; stored in checkpoints as ``model_args``) and :func:`resolve`, with the checks that name the
key. No torch here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from pretrain.core.errors import ConfigError
from pretrain.models.family import TokenizerInfo, enum_value, require, resolve_vocab
from pretrain.models.schema import ModelConfigBase, check_granularity


@dataclass
class T5Config(ModelConfigBase):
    """Pre-norm encoder-decoder with relative position buckets, RMSNorm and no biases (the shared style keys
    must say so); v1.0 = relu + tied output layer, v1.1 = geglu + untied."""

    family: str = "t5"
    # Decoder layers; null = num_layers.
    num_decoder_layers: Optional[int] = None
    # Per-head dimension; null = hidden_size / num_attention_heads (T5 v1.1 small: 6 heads x 64 on hidden 512).
    kv_channels: Optional[int] = None
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    # Span corruption: fraction of raw tokens noised, mean noise-span length; the raw window is sized so the
    # corrupted inputs fill seq_length exactly. target_length null = the length the targets need.
    noise_density: float = 0.15
    mean_noise_span_length: float = 3.0
    target_length: Optional[int] = None


@dataclass
class T5Args:
    vocab_size: int
    num_layers: int  # encoder
    num_decoder_layers: int
    hidden_size: int
    num_attention_heads: int
    kv_channels: int
    ffn_hidden_size: int
    seq_length: int  # encoder input length
    target_length: int  # decoder length
    activation: str = "geglu"  # relu (v1.0) | geglu (v1.1)
    tie_word_embeddings: bool = False
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    norm_eps: float = 1e-6
    noise_density: float = 0.15
    mean_noise_span_length: float = 3.0
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.0
    init_method_std: float = 1.0  # T5's initializer_factor
    # applied by ModelFamily.build (pretrain.models.recompute.apply_ac), not by the T5 module itself
    activation_checkpointing: bool = False
    recompute_granularity: str = "full"  # full | selective (pretrain.models.recompute)
    decoder_start_id: int = 0  # <pad>, T5's decoder start token

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.kv_channels


def sentinel_ids(tokenizer: TokenizerInfo):
    """Ids of ``<extra_id_0>``, ``<extra_id_1>``, ... as long as the tokenizer has them (an int64 array)."""
    import numpy as np

    out = []
    while f"<extra_id_{len(out)}>" in tokenizer.special_tokens:
        out.append(tokenizer.special_tokens[f"<extra_id_{len(out)}>"])
    return np.array(out, dtype=np.int64)


def resolve(m, tokenizer: TokenizerInfo) -> T5Args:
    from pretrain.models.t5.objective import _span_counts, t5_lengths

    act, pos, norm = enum_value(m.activation), enum_value(m.position_embedding), enum_value(m.normalization)
    wrong = []
    if pos != "relative":
        wrong.append(f"model.position_embedding={pos} (T5: relative)")
    if norm != "rmsnorm":
        wrong.append(f"model.normalization={norm} (T5: rmsnorm)")
    if act not in ("relu", "geglu"):
        wrong.append(f"model.activation={act} (T5: relu for v1.0, geglu for v1.1)")
    if m.bias:
        wrong.append("model.bias=true (T5 has no biases)")
    if m.num_key_value_heads not in (None, m.num_attention_heads):
        wrong.append(f"model.num_key_value_heads={m.num_key_value_heads} (T5: multi-head attention)")
    if wrong:
        raise ConfigError("model.family=t5 does not support " + "; ".join(wrong))
    kv_channels = m.kv_channels
    if kv_channels is None:
        if m.hidden_size % m.num_attention_heads:
            raise ConfigError(
                f"model.hidden_size={m.hidden_size} is not divisible by model.num_attention_heads="
                f"{m.num_attention_heads}; set model.kv_channels (the per-head dimension)"
            )
        kv_channels = m.hidden_size // m.num_attention_heads
    if not (0.0 < m.noise_density < 1.0) or m.mean_noise_span_length < 1:
        raise ConfigError(
            f"model.noise_density={m.noise_density} must be in (0, 1) and model.mean_noise_span_length="
            f"{m.mean_noise_span_length} >= 1"
        )
    if m.seq_length < 8:
        raise ConfigError(f"model.seq_length={m.seq_length} is too short for span corruption (>= 8)")
    raw, needed = t5_lengths(m.seq_length, m.noise_density, m.mean_noise_span_length)
    target = needed if m.target_length is None else m.target_length
    if target < needed:
        raise ConfigError(
            f"model.target_length={m.target_length} is shorter than the {needed} tokens span corruption of "
            f"{raw} raw tokens into model.seq_length={m.seq_length} inputs produces; set it >= {needed} or null"
        )
    start = 0
    if tokenizer.path is not None:  # a config-only resolve (benchmarks, tests) has no tokenizer to check
        start, _ = require(tokenizer, ("<pad>", "</s>"), "t5", "unigram")
        have = len(sentinel_ids(tokenizer))
        spans = _span_counts(raw, m.noise_density, m.mean_noise_span_length)[1]
        if have < spans:
            raise ConfigError(
                f"span corruption of {raw} tokens makes {spans} noise spans but the tokenizer {tokenizer.path} "
                f"has {have} sentinels <extra_id_N>; train it with tokenizer.sentinel_tokens >= {spans} (built-in "
                "sample data: data.sample_tokenizer=unigram)"
            )
    return T5Args(
        vocab_size=resolve_vocab(m, tokenizer.vocab_size), num_layers=m.num_layers,
        num_decoder_layers=m.num_decoder_layers or m.num_layers, hidden_size=m.hidden_size,
        num_attention_heads=m.num_attention_heads, kv_channels=kv_channels,
        ffn_hidden_size=m.ffn_hidden_size or 4 * m.hidden_size, seq_length=m.seq_length, target_length=target,
        activation=act, tie_word_embeddings=m.tie_word_embeddings,
        relative_attention_num_buckets=m.relative_attention_num_buckets,
        relative_attention_max_distance=m.relative_attention_max_distance, norm_eps=m.norm_eps,
        noise_density=m.noise_density, mean_noise_span_length=m.mean_noise_span_length,
        hidden_dropout=m.hidden_dropout, attention_dropout=m.attention_dropout,
        init_method_std=m.init_method_std, activation_checkpointing=m.activation_checkpointing,
        recompute_granularity=check_granularity(getattr(m, "recompute_granularity", "full")),
        decoder_start_id=start,
    )
