"""BERT: a post-norm bidirectional encoder with learned positions and token types, trained with masked LM
and, optionally, sentence-order prediction (ALBERT's SOP, on the pooled ``[CLS]``).

Post-norm as in the paper (``x = LN(x + sublayer(x))``), LayerNorm after the embedding sum, GELU MLP, the MLM
head ``dense -> GELU -> LayerNorm -> decoder`` with the decoder tied to the word embeddings plus an output
bias. Export to ``BertForMaskedLM`` is a rename (:mod:`pretrain.models.bert.hf`); the pooler and SOP head have
no place there and are left out of the export. Parallelism and recomputation are applied to the built model from
outside (:mod:`pretrain.parallel`, :mod:`pretrain.models.recompute`).

FLOPs per token (fwd + bwd; per position of the ``seq_length`` window, as in :mod:`pretrain.flops`)::

    6 * N_layers                      (every weight of the encoder layers, biases and norms included)
  + 6 * p * (hidden^2 + hidden*vocab) (MLM head: transform dense + decoder, computed only at the masked
                                       positions, a fraction p = mlm_probability of the tokens)
  + 12 * layers * hidden * seq        (attention scores and weighted sum, bidirectional: all seq keys)
  + 6 * hidden^2 / seq                (pooler, once per sample; only with SOP)

Hardware FLOPs add what activation checkpointing recomputes: one more forward of every layer
(``2 * N_layers + 4 * layers * hidden * seq``) under ``recompute_granularity=full``, only the attention core's
forward (``4 * layers * hidden * seq``) under ``selective``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.models.attention import AttentionSpec, attend
from pretrain.models.bert.config import BERTArgs
from pretrain.models.recompute import recompute_flops


def gelu(x: torch.Tensor, kind: str) -> torch.Tensor:
    return F.gelu(x, approximate="tanh" if kind == "gelu" else "none")


class SelfAttention(nn.Module):
    def __init__(self, args: BERTArgs):
        super().__init__()
        h = args.hidden_size
        self.head_dim = args.head_dim
        self.dropout = args.attention_dropout
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(h, h) for _ in range(4))

    def forward(self, x: torch.Tensor, spec: AttentionSpec) -> torch.Tensor:
        y = self.core(self.q_proj(x), self.k_proj(x), self.v_proj(x), spec, self.dropout if self.training else 0.0)
        return self.o_proj(y)

    def core(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spec: AttentionSpec,
             dropout_p: float) -> torch.Tensor:
        """Core attention on this rank's heads (what selective recomputation checkpoints)."""
        b, s, _ = q.shape
        q, k, v = (t.view(b, s, -1, self.head_dim).transpose(1, 2) for t in (q, k, v))
        y = attend(q, k, v, spec, dropout_p)
        return y.transpose(1, 2).reshape(b, s, -1)


def attention_spec(attention_mask: torch.Tensor | None, segment_ids: torch.Tensor | None = None) -> AttentionSpec:
    """Bidirectional attention over the real keys (``attention_mask`` 1; padded queries still see the real
    tokens), within each document of ``segment_ids`` when given (``data.document_mask``)."""
    return AttentionSpec(causal=False, key_mask=None if attention_mask is None else attention_mask.bool(),
                         segment_ids=segment_ids)


class Layer(nn.Module):
    def __init__(self, args: BERTArgs):
        super().__init__()
        self.act = args.activation
        self.self_attn = SelfAttention(args)
        self.attn_norm = nn.LayerNorm(args.hidden_size, eps=args.norm_eps)
        self.up_proj = nn.Linear(args.hidden_size, args.ffn_hidden_size)
        self.down_proj = nn.Linear(args.ffn_hidden_size, args.hidden_size)
        self.mlp_norm = nn.LayerNorm(args.hidden_size, eps=args.norm_eps)
        self.dropout = nn.Dropout(args.hidden_dropout)

    def forward(self, x: torch.Tensor, spec: AttentionSpec) -> torch.Tensor:
        x = self.attn_norm(x + self.dropout(self.self_attn(x, spec)))
        return self.mlp_norm(x + self.dropout(self.down_proj(gelu(self.up_proj(x), self.act))))


class BERT(nn.Module):
    def __init__(self, args: BERTArgs):
        super().__init__()
        self.args = args
        h = args.hidden_size
        self.embed_tokens = nn.Embedding(args.vocab_size, h)
        self.embed_positions = nn.Embedding(args.seq_length, h)
        self.embed_types = nn.Embedding(args.type_vocab_size, h)
        self.embed_norm = nn.LayerNorm(h, eps=args.norm_eps)
        self.embed_dropout = nn.Dropout(args.hidden_dropout)
        self.layers = nn.ModuleList(Layer(args) for _ in range(args.num_layers))
        self.head_dense = nn.Linear(h, h)
        self.head_norm = nn.LayerNorm(h, eps=args.norm_eps)
        self.lm_head = nn.Linear(h, args.vocab_size)
        self.lm_head.weight = self.embed_tokens.weight
        if args.sop:
            self.pooler = nn.Linear(h, h)
            self.sop_head = nn.Linear(h, 2)
        self.loss_fn = F.cross_entropy  # the MLM loss; tensor parallelism swaps in the vocabulary-parallel one
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """BERT init: N(0, 0.02) for matrices and embeddings, zero biases, unit LayerNorm."""
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                nn.init.normal_(p, 0.0, self.args.init_method_std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)
            else:
                nn.init.ones_(p)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               token_type_ids: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
               segment_ids: torch.Tensor | None = None) -> torch.Tensor:
        s = input_ids.shape[1]
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        if position_ids is None:
            position_ids = torch.arange(s, device=input_ids.device)
        x = self.embed_tokens(input_ids) + self.embed_positions(position_ids)
        x = self.embed_dropout(self.embed_norm(x + self.embed_types(token_type_ids)))
        spec = attention_spec(attention_mask, segment_ids)
        for layer in self.layers:
            x = layer(x, spec)
        return x

    def mlm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.head_norm(gelu(self.head_dense(hidden), self.args.activation)))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                sop_labels: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                segment_ids: torch.Tensor | None = None) -> torch.Tensor:
        """MLM logits ``[batch, seq, vocab]``; with ``labels`` the mean MLM cross-entropy over the masked
        positions (+ the SOP cross-entropy when the model has the head and ``sop_labels`` are given). Packed
        documents (``data.document_mask``): ``segment_ids`` confine attention to each document, ``position_ids``
        restart per document."""
        x = self.encode(input_ids, attention_mask, token_type_ids, position_ids, segment_ids)
        if labels is None:
            return self.mlm_logits(x)
        # the vocabulary projection only where there is something to predict (~15% of positions)
        picked = labels.reshape(-1) != -100
        logits = self.mlm_logits(x.reshape(-1, x.size(-1))[picked])
        loss = self.loss_fn(logits.float(), labels.reshape(-1)[picked])
        if self.args.sop and sop_labels is not None:
            pooled = torch.tanh(self.pooler(x[:, 0]))
            loss = loss + F.cross_entropy(self.sop_head(pooled).float(), sop_labels.reshape(-1), ignore_index=-100)
        return loss


def count_parameters(args: BERTArgs) -> dict[str, int]:
    h, f, L, V = args.hidden_size, args.ffn_hidden_size, args.num_layers, args.vocab_size
    per_layer = 4 * (h * h + h) + 2 * h * f + f + h + 4 * h
    embed = (V + args.seq_length + args.type_vocab_size) * h + 2 * h
    head = h * h + h + 2 * h + V  # transform dense, its LayerNorm, decoder bias (decoder weight is tied)
    sop = (h * h + h + 2 * h + 2) if args.sop else 0
    total = embed + L * per_layer + head + sop
    return {"total": total, "embedding": embed, "layers": L * per_layer, "head": head + sop}


def bert_flops_per_token(args: BERTArgs) -> dict[str, float]:
    h, L, s, V = args.hidden_size, args.num_layers, args.seq_length, args.vocab_size
    layers = count_parameters(args)["layers"]
    attn = 12 * L * h * s
    model = 6 * layers + 6 * args.mlm_probability * (h * h + h * V) + attn + (6 * h * h / s if args.sop else 0)
    recompute = recompute_flops(args, layers_forward=2 * layers + attn / 3, attention_core_forward=attn / 3)
    return {"model": float(model), "hardware": float(model + recompute)}
