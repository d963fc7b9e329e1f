"""The ``bow`` model: a causal bag of words. Knows nothing of parallelism or recomputation (applied from outside:
``pretrain.parallel.parallelize`` by the family's TP plan, ``pretrain.models.recompute.apply_ac`` on ``layers``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tests.extending.bow.family import BowArgs


class MLPLayer(nn.Module):
    def __init__(self, args: BowArgs):
        super().__init__()
        self.norm = nn.LayerNorm(args.hidden_size, eps=args.norm_eps)
        self.up_proj = nn.Linear(args.hidden_size, args.ffn_hidden_size)
        self.down_proj = nn.Linear(args.ffn_hidden_size, args.hidden_size)
        self.dropout = nn.Dropout(args.hidden_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.dropout(self.down_proj(F.gelu(self.up_proj(self.norm(x)))))


class BagOfWords(nn.Module):
    def __init__(self, args: BowArgs):
        super().__init__()
        self.args = args  # family_of(model.args) finds the family (parallelize, export)
        self.embed_tokens = nn.Embedding(args.vocab_size, args.hidden_size)
        self.layers = nn.ModuleList(MLPLayer(args) for _ in range(args.num_layers))
        self.norm = nn.LayerNorm(args.hidden_size, eps=args.norm_eps)
        self.lm_head = nn.Linear(args.hidden_size, args.vocab_size, bias=False)
        self.lm_head.weight = self.embed_tokens.weight
        self.loss_fn = F.cross_entropy  # tensor parallelism swaps in the vocabulary-parallel loss
        for name, p in self.named_parameters():
            if p.dim() > 1:
                nn.init.normal_(p, 0.0, args.init_method_std)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``[batch, seq, vocab]``, or the mean cross-entropy when ``labels`` are given (-100: ignored)."""
        x = self.embed_tokens(input_ids)
        seen = torch.arange(1, x.shape[1] + 1, device=x.device, dtype=x.dtype)
        x = x.cumsum(dim=1) / seen[:, None]  # position t: the mean of the embeddings of tokens 0..t
        for layer in self.layers:
            x = layer(x)
        logits = self.lm_head(self.norm(x))
        if labels is None:
            return logits
        return self.loss_fn(logits.float().view(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-100)
