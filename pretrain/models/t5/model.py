"""T5: a pre-norm encoder-decoder with bucketed relative position biases, trained with span corruption.

Both published variants, chosen by config:

* **v1.0** (Raffel et al. 2020): ReLU MLP, input embedding tied to the output layer (the decoder output is
  scaled by ``hidden^-0.5`` before it), ``activation: relu, tie_word_embeddings: true``;
* **v1.1**: gated-GELU MLP (``wi_0``/``wi_1``, tanh GELU), untied output layer,
  ``activation: geglu, tie_word_embeddings: false``.

Common to both: RMSNorm without bias (T5's LayerNorm), no biases anywhere, no ``1/sqrt(d)`` in attention
(folded into the init), one relative-position-bias table per stack (bidirectional buckets in the encoder,
causal ones in the decoder) computed once and shared by all layers; cross-attention has no position bias.
The decoder reads the labels shifted right with ``<pad>`` (id 0) as the start token. Export to
``T5ForConditionalGeneration`` is a rename (:mod:`pretrain.models.t5.hf`). Parallelism and recomputation are
applied to the built model from outside (:mod:`pretrain.parallel`, :mod:`pretrain.models.recompute`).

FLOPs, counted per sample and divided by the ``seq_length + target_length`` positions it processes (fwd + bwd;
S = encoder length, T = decoder length, d = heads x kv_channels)::

    6 * S * N_enc                       (encoder layer weights)
  + 6 * T * (N_dec - N_cross_kv)        (decoder layer weights applied to decoder positions)
  + 6 * S * N_cross_kv                  (cross-attention k/v projections run over the encoder output)
  + 6 * T * hidden * vocab              (output layer)
  + 12 * d * (L_enc * S^2 + L_dec * T^2 + L_dec * T * S)   (self-attention of both stacks, cross-attention)

Hardware FLOPs add what activation checkpointing recomputes: one forward of every layer (a third of the
weight and attention terms) under ``recompute_granularity=full``, only the attention cores' forward (a third of
the attention term: ``4 * d * (...)``) under ``selective``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.models.gpt.model import RMSNorm
from pretrain.models.recompute import recompute_flops
from pretrain.models.t5.config import T5Args


def relative_position_bucket(relative_position: torch.Tensor, bidirectional: bool, num_buckets: int,
                             max_distance: int) -> torch.Tensor:
    """T5's buckets of ``key - query``: exact for small distances, logarithmic up to ``max_distance``."""
    buckets = torch.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets += (relative_position > 0).long() * num_buckets
        relative_position = relative_position.abs()
    else:
        relative_position = -torch.clamp(relative_position, max=0)
    max_exact = num_buckets // 2
    is_small = relative_position < max_exact
    large = max_exact + (
        torch.log(relative_position.float() / max_exact) / math.log(max_distance / max_exact)
        * (num_buckets - max_exact)
    ).long()
    large = torch.clamp(large, max=num_buckets - 1)
    return buckets + torch.where(is_small, relative_position, large)


class Attention(nn.Module):
    def __init__(self, args: T5Args):
        super().__init__()
        h, inner = args.hidden_size, args.inner_dim
        self.head_dim = args.kv_channels
        self.dropout = args.attention_dropout
        self.q, self.k, self.v = (nn.Linear(h, inner, bias=False) for _ in range(3))
        self.o = nn.Linear(inner, h, bias=False)

    def forward(self, x: torch.Tensor, kv: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """``bias``: additive ``[batch or 1, heads or 1, q, k]`` (position bias + masks)."""
        y = self.core(self.q(x), self.k(kv), self.v(kv), bias, self.dropout if self.training else 0.0)
        return self.o(y)

    def core(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
             dropout_p: float) -> torch.Tensor:
        """Core attention on this rank's heads (what selective recomputation checkpoints)."""
        b, s, _ = q.shape
        q = q.view(b, s, -1, self.head_dim).transpose(1, 2)
        k = k.view(b, k.shape[1], -1, self.head_dim).transpose(1, 2)
        v = v.view(b, v.shape[1], -1, self.head_dim).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), scale=1.0, dropout_p=dropout_p)
        return y.transpose(1, 2).reshape(b, s, -1)


class MLP(nn.Module):
    def __init__(self, args: T5Args):
        super().__init__()
        h, f = args.hidden_size, args.ffn_hidden_size
        self.gated = args.activation == "geglu"
        if self.gated:
            self.wi_0 = nn.Linear(h, f, bias=False)
            self.wi_1 = nn.Linear(h, f, bias=False)
        else:
            self.wi = nn.Linear(h, f, bias=False)
        self.wo = nn.Linear(f, h, bias=False)
        self.dropout = nn.Dropout(args.hidden_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gated:
            return self.wo(self.dropout(F.gelu(self.wi_0(x), approximate="tanh") * self.wi_1(x)))
        return self.wo(self.dropout(F.relu(self.wi(x))))


class Layer(nn.Module):
    def __init__(self, args: T5Args, cross: bool):
        super().__init__()
        self.self_attn = Attention(args)
        self.self_attn_norm = RMSNorm(args.hidden_size, args.norm_eps)
        if cross:
            self.cross_attn = Attention(args)
            self.cross_attn_norm = RMSNorm(args.hidden_size, args.norm_eps)
        self.mlp = MLP(args)
        self.mlp_norm = RMSNorm(args.hidden_size, args.norm_eps)
        self.dropout = nn.Dropout(args.hidden_dropout)

    def forward(self, x: torch.Tensor, bias: torch.Tensor, memory: torch.Tensor | None = None,
                cross_bias: torch.Tensor | None = None) -> torch.Tensor:
        h = self.self_attn_norm(x)
        x = x + self.dropout(self.self_attn(h, h, bias))
        if memory is not None:
            x = x + self.dropout(self.cross_attn(self.cross_attn_norm(x), memory, cross_bias))
        return x + self.dropout(self.mlp(self.mlp_norm(x)))


def _mask_bias(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | float:
    """[batch, k] of 1/0 -> additive [batch, 1, 1, k] (HF's finfo.min, so a fully masked row stays finite)."""
    if mask is None:
        return 0.0
    return (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


class Stack(nn.Module):
    def __init__(self, args: T5Args, decoder: bool):
        super().__init__()
        self.args, self.decoder = args, decoder
        self.relative_attention_bias = nn.Embedding(args.relative_attention_num_buckets, args.num_attention_heads)
        n = args.num_decoder_layers if decoder else args.num_layers
        self.layers = nn.ModuleList(Layer(args, cross=decoder) for _ in range(n))
        self.final_norm = RMSNorm(args.hidden_size, args.norm_eps)
        self.dropout = nn.Dropout(args.hidden_dropout)

    def position_bias(self, q_len: int, k_len: int, device) -> torch.Tensor:
        rel = torch.arange(k_len, device=device)[None, :] - torch.arange(q_len, device=device)[:, None]
        buckets = relative_position_bucket(rel, not self.decoder, self.args.relative_attention_num_buckets,
                                           self.args.relative_attention_max_distance)
        return self.relative_attention_bias(buckets).permute(2, 0, 1)[None]  # [1, heads, q, k]

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, memory: torch.Tensor | None = None,
                memory_mask: torch.Tensor | None = None) -> torch.Tensor:
        s = x.shape[1]
        dtype = torch.float32
        bias = self.position_bias(s, s, x.device).float() + _mask_bias(mask, dtype)
        if self.decoder:
            causal = torch.ones(s, s, dtype=torch.bool, device=x.device).tril()
            bias = bias.masked_fill(~causal, torch.finfo(dtype).min)
        cross = None
        if memory is not None:
            cross = torch.zeros(1, 1, 1, memory.shape[1], device=x.device) + _mask_bias(memory_mask, dtype)
        x = self.dropout(x)
        for layer in self.layers:
            x = layer(x, bias, memory, cross)
        return self.dropout(self.final_norm(x))


class T5(nn.Module):
    def __init__(self, args: T5Args):
        super().__init__()
        self.args = args
        self.pad_id = args.decoder_start_id
        self.shared = nn.Embedding(args.vocab_size, args.hidden_size)
        self.encoder = Stack(args, decoder=False)
        self.decoder = Stack(args, decoder=True)
        self.lm_head = nn.Linear(args.hidden_size, args.vocab_size, bias=False)
        if args.tie_word_embeddings:
            self.lm_head.weight = self.shared.weight
        self.loss_fn = F.cross_entropy  # tensor parallelism swaps in the vocabulary-parallel loss
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Mesh-TensorFlow T5 init (as Hugging Face's, factor = init_method_std): embeddings N(0, 1), q
        N(0, (d*d_kv)^-0.5) (the attention's missing 1/sqrt(d_kv)), k/v/wi N(0, d^-0.5), o N(0, inner^-0.5),
        wo N(0, d_ff^-0.5), position biases N(0, d^-0.5); an untied output layer N(0, d^-0.5) (logits of
        unit scale, like the tied layer after its d^-0.5 rescaling)."""
        c, a = self.args.init_method_std, self.args
        d, dkv, inner, ff = a.hidden_size, a.kv_channels, a.inner_dim, a.ffn_hidden_size
        std = {"q": (d * dkv) ** -0.5, "k": d**-0.5, "v": d**-0.5, "o": inner**-0.5, "wi": d**-0.5,
               "wi_0": d**-0.5, "wi_1": d**-0.5, "wo": ff**-0.5, "relative_attention_bias": d**-0.5,
               "shared": 1.0, "lm_head": d**-0.5}
        for name, p in self.named_parameters():
            if p.dim() == 1:
                nn.init.ones_(p)
            else:
                nn.init.normal_(p, 0.0, c * std[name.split(".")[-2]])

    def shift_right(self, labels: torch.Tensor) -> torch.Tensor:
        start = torch.full_like(labels[:, :1], self.pad_id)
        shifted = torch.cat([start, labels[:, :-1]], dim=1)
        return shifted.masked_fill(shifted == -100, self.pad_id)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, decoder_input_ids: torch.Tensor | None = None,
                decoder_attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """With ``labels``: the mean cross-entropy over the non-(-100) labels. Without: logits
        ``[batch, target, vocab]`` of ``decoder_input_ids``."""
        memory = self.encoder(self.shared(input_ids), attention_mask)
        if decoder_input_ids is None:
            if labels is None:
                raise ValueError("T5.forward needs labels or decoder_input_ids")
            decoder_input_ids = self.shift_right(labels)
        y = self.decoder(self.shared(decoder_input_ids), decoder_attention_mask, memory, attention_mask)
        if self.args.tie_word_embeddings:
            y = y * self.args.hidden_size**-0.5
        logits = self.lm_head(y)
        if labels is None:
            return logits
        return self.loss_fn(logits.float().view(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-100)


def count_parameters(args: T5Args) -> dict[str, int]:
    h, inner, f = args.hidden_size, args.inner_dim, args.ffn_hidden_size
    attn = 4 * h * inner
    mlp = (3 if args.activation == "geglu" else 2) * h * f
    enc_layer = attn + mlp + 2 * h
    dec_layer = 2 * attn + mlp + 3 * h
    rel = args.relative_attention_num_buckets * args.num_attention_heads
    enc = args.num_layers * enc_layer + rel + h
    dec = args.num_decoder_layers * dec_layer + rel + h
    embed = args.vocab_size * h
    head = 0 if args.tie_word_embeddings else args.vocab_size * h
    return {"total": embed + enc + dec + head, "embedding": embed, "encoder_layers": args.num_layers * enc_layer,
            "decoder_layers": args.num_decoder_layers * dec_layer, "cross_kv": args.num_decoder_layers * 2 * h * inner}


def t5_flops_per_token(args: T5Args) -> dict[str, float]:
    p = count_parameters(args)
    S, T, h, V, d = args.seq_length, args.target_length, args.hidden_size, args.vocab_size, args.inner_dim
    Le, Ld = args.num_layers, args.num_decoder_layers
    weights = 6 * S * p["encoder_layers"] + 6 * T * (p["decoder_layers"] - p["cross_kv"]) + 6 * S * p["cross_kv"]
    attn = 12 * d * (Le * S * S + Ld * T * T + Ld * T * S)
    model = (weights + 6 * T * h * V + attn) / (S + T)
    recompute = recompute_flops(args, layers_forward=(weights / 3 + attn / 3) / (S + T),
                                attention_core_forward=attn / 3 / (S + T))
    return {"model": float(model), "hardware": float(model + recompute)}
