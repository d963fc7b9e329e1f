"""GPT's pipeline stages (DeepSpeed ``PipelineModule`` layers wrapping the built model's own modules):
``input_ids`` → token embedding → positions + dropout → ``TransformerLayer`` x L → final norm → output layer
(tied to the token embedding unless ``tie_word_embeddings=false``); the loss on the last stage from the labels
DeepSpeed loads there. With packed-document masking (``data.document_mask``) the first stage takes
``(input_ids, position_ids, segment_ids)`` and every stage up to the final norm passes ``(hidden, position_ids,
segment_ids)`` on, so each stage's layers mask and position by the documents."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from pretrain.models.gpt.model import rope_for
from pretrain.parallel.pipeline import TokenEmbedding, Wrap, tied_logits
from pretrain.parallel.tensor import Group


class GPTInput(nn.Module):
    """Learned positions (if any), the embedding norm (if any) and embedding dropout."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.embed_positions = model.embed_positions
        self.embed_norm = getattr(model, "embed_norm", None)
        self.embed_dropout = model.embed_dropout

    def forward(self, inputs):
        x, docs = (inputs[0], inputs[1:]) if isinstance(inputs, tuple) else (inputs, ())
        if self.embed_positions is not None:
            x = x + self.embed_positions(docs[0] if docs else torch.arange(x.shape[1], device=x.device))
        if self.embed_norm is not None:
            x = self.embed_norm(x)
        x = self.embed_dropout(x)
        return (x, *docs) if docs else x


class GPTTransformerLayer(nn.Module):
    """One block with the model's rotary tables (activation checkpointing, if any, is the block's own); takes and
    returns the hidden state, or ``(hidden, position_ids, segment_ids)`` of packed documents."""

    def __init__(self, block: nn.Module, model: nn.Module):
        super().__init__()
        self.block = block
        self.rope = model.args.position_embedding == "rope"
        if self.rope:
            self.register_buffer("rope_cos", model.rope_cos, persistent=False)
            self.register_buffer("rope_sin", model.rope_sin, persistent=False)

    def forward(self, inputs):
        if not isinstance(inputs, tuple):
            s = inputs.shape[1]
            rope = (self.rope_cos[:s].to(inputs.dtype), self.rope_sin[:s].to(inputs.dtype)) if self.rope else None
            return self.block(inputs, rope)
        x, position_ids, segment_ids = inputs
        rope = rope_for(self.rope_cos, self.rope_sin, x.shape[1], position_ids, x.dtype) if self.rope else None
        return self.block(x, rope, segment_ids), position_ids, segment_ids


class GPTFinalNorm(Wrap):
    """The final norm; drops the documents' ids that the layers carried."""

    def forward(self, inputs):
        return self.module(inputs[0] if isinstance(inputs, tuple) else inputs)


class GPTLoss:
    def __init__(self, loss_fn: Callable):
        self.loss_fn = loss_fn
        self.__name__ = "gpt_loss"

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(logits.float().view(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-100)


def stages(model: nn.Module, group: Group) -> tuple[list, Callable]:
    from deepspeed.pipe import TiedLayerSpec

    tied, sp = model.args.tie_word_embeddings, getattr(model, "sequence_parallel", False)
    weight = ["embed_tokens.weight"]
    embed = (TiedLayerSpec("embed", TokenEmbedding, model.embed_tokens, group, sp, tied_weight_attr=weight)
             if tied else TokenEmbedding(model.embed_tokens, group))
    head = (TiedLayerSpec("embed", TokenEmbedding, model.embed_tokens, group, sp, forward_fn=tied_logits,
                          tied_weight_attr=["embed_tokens.weight"]) if tied else Wrap(model.lm_head))
    layers = [embed, GPTInput(model), *(GPTTransformerLayer(b, model) for b in model.layers), GPTFinalNorm(model.norm),
              head]
    return layers, GPTLoss(model.loss_fn)
