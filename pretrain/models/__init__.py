"""The model zoo. ``build_model`` turns the ``model`` config group into an ``nn.Module`` whose forward
takes ``(input_ids, labels)`` and returns the loss."""

from __future__ import annotations

from omegaconf import DictConfig

from pretrain.errors import ConfigError
from pretrain.models.gpt import GPT, GPTArgs, default_ffn_hidden_size

FAMILIES = ("gpt",)


def padded_vocab_size(vocab: int, multiple: int) -> int:
    return ((vocab + multiple - 1) // multiple) * multiple


def resolve_args(model_cfg: DictConfig, tokenizer_vocab_size: int | None) -> GPTArgs:
    """Fill the ``null``s of the model config (vocabulary, KV heads, FFN size) and check the shape."""
    m = model_cfg
    if m.family not in FAMILIES:
        raise ConfigError(f"model.family={m.family!r} is not known; expected one of {', '.join(FAMILIES)}")
    if m.vocab_size is None:
        if tokenizer_vocab_size is None:
            raise ConfigError("model.vocab_size is null and no tokenizer is known to take it from")
        vocab = padded_vocab_size(tokenizer_vocab_size, m.make_vocab_size_divisible_by)
    else:
        vocab = int(m.vocab_size)
    if m.hidden_size % m.num_attention_heads:
        raise ConfigError(
            f"model.hidden_size={m.hidden_size} is not divisible by model.num_attention_heads={m.num_attention_heads}"
        )
    kv = m.num_key_value_heads or m.num_attention_heads
    if m.num_attention_heads % kv:
        raise ConfigError(
            f"model.num_attention_heads={m.num_attention_heads} is not a multiple of model.num_key_value_heads={kv}"
        )
    act = m.activation.value if hasattr(m.activation, "value") else str(m.activation)
    head_dim = m.hidden_size // m.num_attention_heads
    pos = m.position_embedding.value if hasattr(m.position_embedding, "value") else str(m.position_embedding)
    if pos == "rope" and head_dim % 2:
        raise ConfigError(f"rotary embeddings need an even head dimension; hidden_size/heads = {head_dim}")
    norm = m.normalization.value if hasattr(m.normalization, "value") else str(m.normalization)
    return GPTArgs(
        vocab_size=vocab,
        num_layers=m.num_layers,
        hidden_size=m.hidden_size,
        num_attention_heads=m.num_attention_heads,
        num_key_value_heads=kv,
        ffn_hidden_size=m.ffn_hidden_size or default_ffn_hidden_size(m.hidden_size, act),
        seq_length=m.seq_length,
        position_embedding=pos,
        rotary_base=m.rotary_base,
        normalization=norm,
        norm_eps=m.norm_eps,
        activation=act,
        bias=m.bias,
        tie_word_embeddings=m.tie_word_embeddings,
        hidden_dropout=m.hidden_dropout,
        attention_dropout=m.attention_dropout,
        init_method_std=m.init_method_std,
        activation_checkpointing=m.activation_checkpointing,
    )


def build_model(args: GPTArgs) -> GPT:
    return GPT(args)
