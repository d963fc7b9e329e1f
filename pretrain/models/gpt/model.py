"""GPT: a pre-norm decoder-only transformer, GPT-2 style or LLaMA style, selected by config.

GPT-2 style: learned positions, LayerNorm, GELU MLP, biases, tied input/output embeddings.
LLaMA style: rotary positions (rotate-half convention, as Hugging Face's Llama), RMSNorm, SwiGLU MLP,
grouped-query attention, no biases, untied output layer.

The file knows nothing about parallelism or recomputation: tensor/pipeline parallelism and activation
checkpointing are applied to the built model by separate steps (:mod:`pretrain.parallel`,
:mod:`pretrain.models.recompute`).
Parameter names follow the Hugging Face Llama layout (``embed_tokens``, ``layers.N.self_attn.q_proj``,
``layers.N.mlp.down_proj``, ``norm``, ``lm_head``), so export to ``LlamaForCausalLM`` is a rename and
to ``GPT2LMHeadModel`` a rename plus concatenating q/k/v into ``c_attn`` (and transposing for its Conv1D).
Core attention is :func:`pretrain.models.attention.attend` (``scaled_dot_product_attention`` for plain causal
attention: flash / memory-efficient kernels on CUDA); what it masks is the layer's
:class:`~pretrain.models.attention.AttentionSpec` (:meth:`Attention.spec`).

FLOPs per token: :func:`pretrain.flops.gpt_flops_per_token`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.models.attention import AttentionSpec, alibi_slopes, attend
from pretrain.models.gpt.config import GPTArgs, count_parameters  # noqa: F401  (count_parameters: re-exported)
from pretrain.models.gpt.moe import MoE, collect, moe_modules


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def make_norm(args: GPTArgs) -> nn.Module:
    if args.normalization == "rmsnorm":
        return RMSNorm(args.hidden_size, args.norm_eps)
    return nn.LayerNorm(args.hidden_size, eps=args.norm_eps, bias=args.bias)


def rotary_tables(seq_len: int, head_dim: int, base: float, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    t = torch.arange(seq_len, device=device, dtype=torch.float32)
    freqs = torch.outer(t, inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)  # rotate-half layout
    return emb.cos(), emb.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [batch, heads, seq, head_dim]; cos/sin: [seq, head_dim], or [batch, 1, seq, head_dim] (per-sample
    positions: document masking restarts them per document)."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)


def rope_for(cos: torch.Tensor, sin: torch.Tensor, seq: int, position_ids: torch.Tensor | None,
             dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The rotary tables of positions ``0..seq-1`` (``[seq, head_dim]``), or of ``position_ids`` ``[batch, seq]``
    (``[batch, 1, seq, head_dim]``)."""
    if position_ids is None:
        return cos[:seq].to(dtype), sin[:seq].to(dtype)
    return cos[position_ids].unsqueeze(1).to(dtype), sin[position_ids].unsqueeze(1).to(dtype)


class Attention(nn.Module):
    def __init__(self, args: GPTArgs, layer: int = 0):
        super().__init__()
        self.window = args.layer_window(layer)  # None: a global layer
        self.num_heads = args.num_attention_heads
        self.num_kv_heads = args.num_key_value_heads
        self.head_dim = args.head_dim
        self.dropout = args.attention_dropout
        h, kv = args.hidden_size, self.num_kv_heads * self.head_dim
        self.q_proj = nn.Linear(h, h, bias=args.bias)
        self.k_proj = nn.Linear(h, kv, bias=args.bias)
        self.v_proj = nn.Linear(h, kv, bias=args.bias)
        self.o_proj = nn.Linear(h, h, bias=args.bias)
        # the core attention function; a context-parallel wrapper (all-to-all over heads around it) replaces it
        self.attend = attend
        if args.position_embedding == "alibi":  # the slopes of all the model's heads (a TP rank slices its own)
            self.register_buffer("alibi_slopes", alibi_slopes(self.num_heads), persistent=False)
        else:
            self.alibi_slopes = None

    def spec(self, segment_ids: torch.Tensor | None = None) -> AttentionSpec:
        """What this layer's attention masks: causal, within its window (if a local layer) and within the
        documents of ``segment_ids`` (if given), with the ALiBi slopes of this rank's heads."""
        return AttentionSpec(causal=True, window=self.window, alibi_slopes=self.alibi_slopes,
                             head_start=self._head_start(), segment_ids=segment_ids)

    def _head_start(self) -> int:
        """Global index of this module's first query head: 0, or a tensor-parallel rank's first head (its q_proj
        holds the rank's slice of the heads' rows)."""
        group = getattr(self.q_proj, "group", None)
        if self.alibi_slopes is None or group is None:
            return 0
        from pretrain.parallel.tensor import rank_in

        return rank_in(group) * (self.q_proj.weight.shape[0] // self.head_dim)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None,
                segment_ids: torch.Tensor | None = None) -> torch.Tensor:
        y = self.core(self.q_proj(x), self.k_proj(x), self.v_proj(x), rope, self.spec(segment_ids),
                      self.dropout if self.training else 0.0)
        return self.o_proj(y)

    def core(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
             rope: tuple[torch.Tensor, torch.Tensor] | None, spec: AttentionSpec, dropout_p: float) -> torch.Tensor:
        """Core attention, ``[batch, seq, heads*head_dim]`` q/k/v projections to the same-shaped output: what
        selective recomputation checkpoints (no tensor-parallel collective in here). ``dropout_p`` stays the last
        argument (tensor parallelism forks the dropout stream by it)."""
        b, s, _ = q.shape
        # Head counts come from the weights so a tensor-parallel shard (fewer local heads) runs unchanged.
        q = q.view(b, s, -1, self.head_dim).transpose(1, 2)
        k = k.view(b, s, -1, self.head_dim).transpose(1, 2)
        v = v.view(b, s, -1, self.head_dim).transpose(1, 2)
        if rope is not None:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        y = self.attend(q, k, v, spec, dropout_p)
        return y.transpose(1, 2).reshape(b, s, -1)


class MLP(nn.Module):
    def __init__(self, args: GPTArgs):
        super().__init__()
        self.swiglu = args.activation == "swiglu"
        h, f = args.hidden_size, args.ffn_hidden_size
        if self.swiglu:
            self.gate_proj = nn.Linear(h, f, bias=args.bias)
        self.up_proj = nn.Linear(h, f, bias=args.bias)
        self.down_proj = nn.Linear(f, h, bias=args.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.swiglu:
            return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        return self.down_proj(F.gelu(self.up_proj(x), approximate="tanh"))


def make_mlp(args: GPTArgs, layer: int) -> nn.Module:
    """The dense MLP, or the mixture of experts on the layers ``args.is_moe_layer`` names."""
    if not args.is_moe_layer(layer):
        return MLP(args)
    return MoE(args.hidden_size, args.moe_ffn_hidden_size, args.num_experts, args.moe_router_topk,
               args.activation == "swiglu", args.moe_capacity_factor)


class Block(nn.Module):
    def __init__(self, args: GPTArgs, layer: int = 0):
        super().__init__()
        self.input_layernorm = make_norm(args)
        self.self_attn = Attention(args, layer)
        self.post_attention_layernorm = make_norm(args)
        self.mlp = make_mlp(args, layer)
        self.dropout = nn.Dropout(args.hidden_dropout)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None,
                segment_ids: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.dropout(self.self_attn(self.input_layernorm(x), rope, segment_ids))
        return x + self.dropout(self.mlp(self.post_attention_layernorm(x)))


class GPT(nn.Module):
    def __init__(self, args: GPTArgs):
        super().__init__()
        self.args = args
        self.embed_tokens = nn.Embedding(args.vocab_size, args.hidden_size)
        self.embed_positions = (
            nn.Embedding(args.seq_length, args.hidden_size) if args.position_embedding == "learned" else None
        )
        if args.embedding_norm:  # BLOOM's word_embeddings_layernorm (after the positions, if any)
            self.embed_norm = make_norm(args)
        self.embed_dropout = nn.Dropout(args.hidden_dropout)
        self.layers = nn.ModuleList(Block(args, i) for i in range(args.num_layers))
        self.norm = make_norm(args)
        self.lm_head = nn.Linear(args.hidden_size, args.vocab_size, bias=False)
        if args.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        if args.position_embedding == "rope":
            cos, sin = rotary_tables(args.seq_length, args.head_dim, args.rotary_base)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.loss_fn = F.cross_entropy  # tensor parallelism swaps in the vocabulary-parallel loss
        self.context_parallel = None  # pretrain.parallel.context: this rank's chunk of the sequence, the group's loss
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2 init: N(0, std) everywhere, output projections scaled by 1/sqrt(2 * layers)."""
        std = self.args.init_method_std
        out_std = std / math.sqrt(2.0 * self.args.num_layers)
        for name, p in self.named_parameters():
            if p.dim() < 2:
                if name.endswith("bias"):
                    nn.init.zeros_(p)
                else:
                    nn.init.ones_(p)
            elif name.endswith(("o_proj.weight", "down_proj.weight", "experts.down_proj")):
                nn.init.normal_(p, 0.0, out_std)
            else:
                nn.init.normal_(p, 0.0, std)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, segment_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``[batch, seq, vocab]``, or the mean cross-entropy when ``labels`` are given
        (label ``-100`` is ignored). Packed documents (``data.document_mask``): ``segment_ids`` ``[batch, seq]``
        confine attention to each document, ``position_ids`` (restarting per document) index the positions.
        Context-parallel: logits of this rank's chunk; the whole sequence's loss."""
        cp, start = self.context_parallel, 0
        if cp is not None:  # this rank's chunk; positions (and the documents attention sees) stay the whole sequence's
            input_ids, labels, start = cp.split(input_ids, labels)
            position_ids = cp.split(position_ids, None)[0] if position_ids is not None else None
        s = input_ids.shape[1]
        x = self.embed_tokens(input_ids)
        rope = None
        if self.embed_positions is not None:
            x = x + self.embed_positions(torch.arange(start, start + s, device=input_ids.device)
                                         if position_ids is None else position_ids)
        elif self.args.position_embedding == "rope":
            rope = rope_for(self.rope_cos[start:], self.rope_sin[start:], s, None, x.dtype) if position_ids is None \
                else rope_for(self.rope_cos, self.rope_sin, s, position_ids, x.dtype)
        if self.args.embedding_norm:
            x = self.embed_norm(x)
        x = self.embed_dropout(x)
        for layer in self.layers:
            x = layer(x, rope) if segment_ids is None else layer(x, rope, segment_ids)
        moe = collect(self._moe_layers(), self.training) if self.args.is_moe else None
        logits = self.lm_head(self.norm(x))
        if labels is None:
            return logits
        if cp is not None:
            return cp.loss(self.loss_fn, logits, labels)
        loss = self.loss_fn(logits.float().view(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-100)
        if moe is not None and self.training:  # the routers' auxiliary losses train, they are not evaluated
            loss = loss + self.args.moe_aux_loss_coeff * moe[0] + self.args.moe_z_loss_coeff * moe[1]
        return loss

    def _moe_layers(self) -> list[MoE]:
        if getattr(self, "_moe_cache", None) is None:
            self._moe_cache = moe_modules(self)
        return self._moe_cache
