"""BERT's pipeline stages (DeepSpeed ``PipelineModule`` layers wrapping the built model's own modules):
``(input_ids, token_type_ids, attention_mask)`` → token embedding → positions, types, LayerNorm, dropout →
``TransformerLayer`` x L carrying ``(hidden, attention_mask)`` → MLM transform (+ SOP head) → tied decoder →
decoder bias; MLM + SOP loss on the last stage. The decoder runs on every position and the loss picks the
masked ones (the one-stage model picks first: same values, more FLOPs on the last stage). With packed-document
masking the inputs also hold ``position_ids`` and ``segment_ids``; the layers carry the latter on with the mask."""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.models.bert.model import attention_spec, gelu
from pretrain.parallel.pipeline import TokenEmbedding, tied_logits
from pretrain.parallel.tensor import Group


class BERTInput(nn.Module):
    """Positions, token types, embedding LayerNorm and dropout; passes ``(hidden, attention_mask)`` on."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.embed_positions = model.embed_positions
        self.embed_types = model.embed_types
        self.embed_norm = model.embed_norm
        self.embed_dropout = model.embed_dropout

    def forward(self, inputs: tuple) -> tuple:
        x, token_type_ids, attention_mask, *docs = inputs  # docs: (position_ids, segment_ids) of packed documents
        x = x + self.embed_positions(docs[0] if docs else torch.arange(x.shape[1], device=x.device))
        x = self.embed_dropout(self.embed_norm(x + self.embed_types(token_type_ids)))
        return (x, attention_mask, docs[1]) if docs else (x, attention_mask)


class BERTTransformerLayer(nn.Module):
    """One layer (activation checkpointing, if any, is the layer's own)."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, inputs: tuple) -> tuple:
        x, attention_mask, *segment_ids = inputs
        spec = attention_spec(attention_mask, *segment_ids)  # as BERT.encode
        return (self.layer(x, spec), attention_mask, *segment_ids)


class BERTHead(nn.Module):
    """MLM transform (dense, GELU, LayerNorm) of every position, and the SOP logits from the first token."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.activation = model.args.activation
        self.head_dense, self.head_norm = model.head_dense, model.head_norm
        self.sop = model.args.sop
        if self.sop:
            self.pooler, self.sop_head = model.pooler, model.sop_head

    def forward(self, inputs: tuple):
        x = inputs[0]
        h = self.head_norm(gelu(self.head_dense(x), self.activation))
        if not self.sop:
            return h
        return h, self.sop_head(torch.tanh(self.pooler(x[:, 0])))


class BERTDecoderBias(nn.Module):
    """The MLM decoder's bias (the decoder weight is the tied embedding); shares the model's parameter."""

    def __init__(self, lm_head: nn.Module):
        super().__init__()
        self.bias = lm_head.bias

    def forward(self, inputs):
        if isinstance(inputs, tuple):
            logits, *rest = inputs
            return (logits + self.bias, *rest)
        return inputs + self.bias


class BERTLoss:
    def __init__(self, loss_fn: Callable, sop: bool):
        self.loss_fn, self.sop = loss_fn, sop
        self.__name__ = "bert_loss"

    def __call__(self, outputs, labels) -> torch.Tensor:
        logits, sop_logits = outputs if self.sop else (outputs, None)
        mlm_labels, sop_labels = labels if self.sop else (labels, None)
        picked = mlm_labels.reshape(-1) != -100
        loss = self.loss_fn(logits.reshape(-1, logits.size(-1))[picked].float(), mlm_labels.reshape(-1)[picked])
        if sop_logits is not None:
            loss = loss + F.cross_entropy(sop_logits.float(), sop_labels.reshape(-1), ignore_index=-100)
        return loss


def stages(model: nn.Module, group: Group) -> tuple[list, Callable]:
    from deepspeed.pipe import TiedLayerSpec

    def tied(**kw: Any):
        return TiedLayerSpec("embed", TokenEmbedding, model.embed_tokens, group,
                             tied_weight_attr=["embed_tokens.weight"], **kw)

    layers = [tied(), BERTInput(model), *(BERTTransformerLayer(layer) for layer in model.layers),
              BERTHead(model), tied(forward_fn=tied_logits), BERTDecoderBias(model.lm_head)]
    return layers, BERTLoss(model.loss_fn, model.args.sop)
