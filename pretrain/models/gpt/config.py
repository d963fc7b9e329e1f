"""GPT's config: the keys of the ``model`` group it reads (:class:`GPTConfig`), the resolved shape
(:class:`GPTArgs`, every null filled in; stored in checkpoints as ``model_args``) and :func:`resolve`, from one
to the other with the checks that name the key. No torch here."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

from pretrain.core.errors import ConfigError
from pretrain.models.family import TokenizerInfo, check_heads, enum_value, resolve_vocab
from pretrain.models.schema import ModelConfigBase, check_granularity


@dataclass
class GPTConfig(ModelConfigBase):
    """Decoder-only, GPT-2 style (learned positions, LayerNorm, GELU, biases, tied) or LLaMA style (rope,
    rmsnorm, swiglu, no biases, untied, grouped-query attention through num_key_value_heads)."""

    family: str = "gpt"
    # Base of the rotary embedding's frequencies (position_embedding: rope).
    rotary_base: float = 10000.0
    # Mixture of experts (pretrain/models/gpt/moe.py, docs/moe.md). 0: every MLP dense (the default).
    num_experts: int = 0
    # Every N-th layer is an MoE layer, counting from layer 0 (layer i when i % N == 0; 1 = every layer).
    moe_layer_freq: int = 1
    # Experts per token: 1 = Switch (the top probability weighs the expert), 2 = Mixtral (top-k renormalised).
    moe_router_topk: int = 2
    # Width of each expert's MLP; null: model.ffn_hidden_size.
    moe_ffn_hidden_size: Optional[int] = None
    # Tokens an expert takes per micro-batch = ceil(factor * tokens * topk / num_experts); null: no dropping.
    moe_capacity_factor: Optional[float] = None
    # Switch/GShard load-balancing loss and ST-MoE router z-loss, added to the training loss with these weights.
    moe_aux_loss_coeff: float = 0.01
    moe_z_loss_coeff: float = 0.001
    # Sliding-window attention (docs/attention.md): each token attends to the last W positions, itself included
    # (keys j with i - W < j <= i, Mistral's convention). null: full causal attention.
    sliding_window: Optional[int] = None
    # With sliding_window: N-1 windowed layers, then one global layer, repeated (Gemma 2: 2, Gemma 3: 6); layer i
    # is global when (i + 1) % N == 0. null: every layer windowed (Mistral).
    sliding_window_pattern: Optional[int] = None
    # A LayerNorm right after the embedding (BLOOM's word_embeddings_layernorm).
    embedding_norm: bool = False


@dataclass
class GPTArgs:
    """Resolved model shape (every ``null`` of the config filled in)."""

    vocab_size: int
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_key_value_heads: int
    ffn_hidden_size: int
    seq_length: int
    position_embedding: str = "learned"  # learned | rope | alibi
    rotary_base: float = 10000.0
    normalization: str = "layernorm"  # layernorm | rmsnorm
    norm_eps: float = 1e-5
    activation: str = "gelu"  # gelu | swiglu
    bias: bool = True
    tie_word_embeddings: bool = True
    hidden_dropout: float = 0.0
    attention_dropout: float = 0.0
    init_method_std: float = 0.02
    # applied by ModelFamily.build (pretrain.models.recompute.apply_ac), not by the GPT module itself
    activation_checkpointing: bool = False
    recompute_granularity: str = "full"  # full | selective (pretrain.models.recompute)
    # Mixture of experts (pretrain.models.gpt.moe). Fields marked DENSE_DEFAULT leave a dense model's shape
    # (pretrain.models.shape_of) as before MoE existed, so older checkpoints resume.
    num_experts: int = field(default=0, metadata={"dense_default": True})
    moe_layer_freq: int = field(default=1, metadata={"dense_default": True})
    moe_ffn_hidden_size: int = field(default=0, metadata={"dense_default": True})
    moe_router_topk: int = 2
    moe_capacity_factor: Optional[float] = None
    moe_aux_loss_coeff: float = 0.01
    moe_z_loss_coeff: float = 0.001
    # Attention variants (pretrain.models.attention, docs/attention.md); no parameters
    sliding_window: Optional[int] = None
    sliding_window_pattern: Optional[int] = None
    embedding_norm: bool = field(default=False, metadata={"dense_default": True})

    def layer_window(self, i: int) -> Optional[int]:
        """The sliding window of layer ``i`` (from 0), None for a global (full causal) layer."""
        if self.sliding_window is None:
            return None
        n = self.sliding_window_pattern
        return None if n is not None and (i + 1) % n == 0 else self.sliding_window

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    def is_moe_layer(self, i: int) -> bool:
        """Whether layer ``i`` (from 0) has an MoE MLP: every ``moe_layer_freq``-th layer, from layer 0."""
        return self.num_experts > 0 and i % self.moe_layer_freq == 0

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


def default_ffn_hidden_size(hidden_size: int, activation: str) -> int:
    if activation == "swiglu":  # LLaMA: 2/3 of 4h, rounded up to a multiple of 256
        return 256 * math.ceil(int(8 * hidden_size / 3) / 256)
    return 4 * hidden_size


def resolve(m, tokenizer: TokenizerInfo) -> GPTArgs:
    kv = check_heads(m)
    act = enum_value(m.activation)
    pos = enum_value(m.position_embedding)
    if pos not in ("learned", "rope", "alibi") or act not in ("gelu", "swiglu"):
        raise ConfigError(
            f"model.family=gpt takes model.position_embedding learned|rope|alibi and model.activation gelu|swiglu, "
            f"got {pos} and {act} (relative positions, relu and geglu are T5's; gelu_exact is BERT's)"
        )
    if pos == "rope" and (m.hidden_size // m.num_attention_heads) % 2:
        raise ConfigError(
            "rotary embeddings need an even head dimension; hidden_size/heads = "
            f"{m.hidden_size // m.num_attention_heads}"
        )
    moe = resolve_moe(m)
    return GPTArgs(
        **moe,
        **resolve_attention(m),
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
        recompute_granularity=check_granularity(getattr(m, "recompute_granularity", "full")),
    )


def resolve_attention(m) -> dict:
    """The sliding-window fields of :class:`GPTArgs` and ``embedding_norm``, checked (ConfigError naming the key)."""
    w, n = getattr(m, "sliding_window", None), getattr(m, "sliding_window_pattern", None)
    out = {"embedding_norm": bool(getattr(m, "embedding_norm", False))}
    if w is None:
        if n is not None:
            raise ConfigError(f"model.sliding_window_pattern={n} needs model.sliding_window (the window of its local "
                              "layers); set both, or neither for full attention")
        return out
    if int(w) < 1:
        raise ConfigError(f"model.sliding_window={w}; expected a window of >= 1 positions (the token itself and the "
                          "W-1 before it), or null for full causal attention")
    if n is not None and not 1 <= int(n) <= m.num_layers:
        raise ConfigError(f"model.sliding_window_pattern={n}; expected 1..model.num_layers={m.num_layers} (N-1 "
                          "windowed layers, then a global one; 1 = every layer global), or null: every layer windowed")
    return {**out, "sliding_window": int(w), "sliding_window_pattern": None if n is None else int(n)}


def resolve_moe(m) -> dict:
    """The MoE fields of :class:`GPTArgs` from the model group, checked (ConfigError naming the key)."""
    e = int(getattr(m, "num_experts", 0) or 0)
    if e < 0:
        raise ConfigError(f"model.num_experts={e}; expected 0 (dense) or the number of experts (>= 1)")
    if e == 0:
        return {}
    k, freq = int(m.moe_router_topk), int(m.moe_layer_freq)
    problems = []
    if not 1 <= k <= e:
        problems.append(f"model.moe_router_topk={k} must be between 1 and model.num_experts={e}")
    if freq < 1:
        problems.append(f"model.moe_layer_freq={freq} must be >= 1 (1 = every layer is MoE)")
    f = m.moe_ffn_hidden_size
    if f is not None and f < 1:
        problems.append(f"model.moe_ffn_hidden_size={f} must be >= 1 (null: model.ffn_hidden_size)")
    cf = m.moe_capacity_factor
    if cf is not None and cf <= 0:
        problems.append(f"model.moe_capacity_factor={cf} must be > 0 (null: no token dropping)")
    for key in ("moe_aux_loss_coeff", "moe_z_loss_coeff"):
        if getattr(m, key) < 0:
            problems.append(f"model.{key}={getattr(m, key)} must be >= 0")
    if problems:
        raise ConfigError("invalid mixture-of-experts config: " + "; ".join(problems))
    act = enum_value(m.activation)
    return dict(num_experts=e, moe_layer_freq=freq, moe_router_topk=k,
                moe_ffn_hidden_size=int(f or m.ffn_hidden_size or default_ffn_hidden_size(m.hidden_size, act)),
                moe_capacity_factor=None if cf is None else float(cf),
                moe_aux_loss_coeff=float(m.moe_aux_loss_coeff), moe_z_loss_coeff=float(m.moe_z_loss_coeff))


def count_parameters(args: GPTArgs) -> dict[str, int]:
    """Parameter counts from the shape alone (no model built): used for FLOPs/MFU of real-size presets.
    ``active``: the parameters one token passes through (an MoE layer counts its router and top-k experts)."""
    h, f, L, V = args.hidden_size, args.ffn_hidden_size, args.num_layers, args.vocab_size
    kv = args.num_key_value_heads * args.head_dim
    b = 1 if args.bias else 0
    attn = h * h + 2 * h * kv + h * h + b * (h + 2 * kv + h)
    n_mats = 3 if args.activation == "swiglu" else 2
    mlp = n_mats * h * f + b * ((n_mats - 1) * f + h)
    norm = h * (2 if args.normalization == "layernorm" and args.bias else 1)
    per_layer = attn + mlp + 2 * norm
    embed = V * h + (args.seq_length * h if args.position_embedding == "learned" else 0)
    embed += norm if args.embedding_norm else 0
    head = 0 if args.tie_word_embeddings else V * h
    total = embed + L * per_layer + norm + head
    out = {"total": total, "embedding": embed, "non_embedding": total - embed - head, "lm_head": head,
           "active": total}
    n_moe = sum(args.is_moe_layer(i) for i in range(L))
    if n_moe:  # experts carry no biases (Switch, Mixtral); the router is one [E, h] matrix
        expert = n_mats * h * args.moe_ffn_hidden_size
        moe = args.num_experts * expert + args.num_experts * h
        out["total"] = total + n_moe * (moe - mlp)
        out["non_embedding"] = out["total"] - embed - head
        out["active"] = total + n_moe * (args.moe_router_topk * expert + args.num_experts * h - mlp)
        out["experts"] = n_moe * args.num_experts * expert
    return out
