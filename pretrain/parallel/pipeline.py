"""Pipeline parallelism through DeepSpeed's :class:`~deepspeed.pipe.PipelineModule` (1F1B schedule).

The model is built whole (seeded, tensor-parallelized if tp > 1) exactly as without pipelining, then cut into
a flat list of stage layers that *wrap the model's own modules*: the parameters of the pipeline are the very
``Parameter`` objects of the built model, so the initial weights equal the one-process model's and every
local parameter keeps its name in the unsharded model (:func:`parameter_names`, used by the layout-free
checkpoint and the export). DeepSpeed keeps the layers of this rank's stage and drops the rest.

Stage layers pass one tensor or a tuple of tensors to the next (DeepSpeed sends them point to point):

* GPT: ``input_ids`` → token embedding → positions + dropout → ``TransformerLayer`` x L → final norm →
  output layer (tied to the token embedding unless ``tie_word_embeddings=false``); loss on the last stage
  from the labels DeepSpeed loads there.
* BERT: ``(input_ids, token_type_ids, attention_mask)`` → token embedding → positions, types, LayerNorm,
  dropout → ``TransformerLayer`` x L carrying ``(hidden, attention_mask)`` → MLM transform (+ SOP head) →
  tied decoder → decoder bias; MLM + SOP loss on the last stage. The decoder runs on every position and the
  loss picks the masked ones (the one-stage model picks first: same values, more FLOPs on the last stage).
* T5 is refused (see :data:`T5_REASON`).

Tied embeddings: the token embedding is a :class:`~deepspeed.pipe.TiedLayerSpec` on the first and the last
stage; DeepSpeed all-reduces its gradient between the two and counts it once in the gradient norm. Layers
are partitioned by ``parallel.pipeline_partition``: ``type:TransformerLayer`` (the same number of transformer
layers per stage, the default), ``parameters`` (balanced parameter counts) or ``uniform`` (layer count).
"""

from __future__ import annotations

import contextlib
import io
import logging
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.models.recompute import run_layer
from pretrain.parallel.tensor import (
    Group, copy_to_tensor_model_parallel_region, gather_from_sequence_parallel_region,
)

log = logging.getLogger(__name__)

T5_REASON = (
    "T5's relative-position bias table lives in the first encoder and the first decoder layer and is used by "
    "every layer of its stack, so it would have to be tied across all stages, and the encoder output has to "
    "travel through every decoder stage and collect gradients from each cross-attention; DeepSpeed's "
    "PipelineModule (one linear chain of layers) cannot express that cleanly"
)
PIPELINE_FAMILIES = ("gpt", "bert")


# ------------------------------------------------------------------------------------------------ stage layers


class TokenEmbedding(nn.Module):
    """The token embedding (tied between the first and the last stage). ``forward`` embeds the first element
    of its input; :func:`_tied_logits` uses the same weight as the output layer."""

    def __init__(self, embed_tokens: nn.Module, group: Group, sequence_parallel: bool = False):
        super().__init__()
        self.embed_tokens = embed_tokens
        self.group = group
        self.sequence_parallel = sequence_parallel  # the output layer's input is split along the sequence

    def forward(self, inputs):
        if isinstance(inputs, tuple):
            ids, *rest = inputs
            return (self.embed_tokens(ids), *rest)
        return self.embed_tokens(inputs)


def _tied_logits(module: TokenEmbedding, inputs):
    """Output layer sharing the embedding's (vocabulary-split) weight: logits of this rank's vocabulary slice,
    as :class:`~pretrain.parallel.tensor.ColumnParallelLinear` with ``gather_output=False`` computes them."""
    x, rest = (inputs[0], inputs[1:]) if isinstance(inputs, tuple) else (inputs, ())
    if module.group is not None:
        x = (gather_from_sequence_parallel_region(x, module.group) if module.sequence_parallel
             else copy_to_tensor_model_parallel_region(x, module.group))
    logits = F.linear(x, module.embed_tokens.weight)
    return (logits, *rest) if rest else logits


class GPTInput(nn.Module):
    """Learned positions (if any) and embedding dropout."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.embed_positions = model.embed_positions
        self.embed_dropout = model.embed_dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.embed_positions is not None:
            x = x + self.embed_positions(torch.arange(x.shape[1], device=x.device))
        return self.embed_dropout(x)


class GPTTransformerLayer(nn.Module):
    def __init__(self, block: nn.Module, model: nn.Module):
        super().__init__()
        self.block = block
        self.args = model.args  # activation checkpointing (full or selective) as in the model's own forward
        self.rope = model.args.position_embedding == "rope"
        if self.rope:
            self.register_buffer("rope_cos", model.rope_cos, persistent=False)
            self.register_buffer("rope_sin", model.rope_sin, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.shape[1]
        rope = (self.rope_cos[:s].to(x.dtype), self.rope_sin[:s].to(x.dtype)) if self.rope else None
        return run_layer(self.block, x, rope, args=self.args, training=self.training)


class Wrap(nn.Module):
    """A module applied to the (first) activation, e.g. the final norm or an untied output layer."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


class GPTLoss:
    def __init__(self, loss_fn: Callable):
        self.loss_fn = loss_fn
        self.__name__ = "gpt_loss"

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(logits.float().view(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-100)


class BERTInput(nn.Module):
    """Positions, token types, embedding LayerNorm and dropout; passes ``(hidden, attention_mask)`` on."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.embed_positions = model.embed_positions
        self.embed_types = model.embed_types
        self.embed_norm = model.embed_norm
        self.embed_dropout = model.embed_dropout

    def forward(self, inputs: tuple) -> tuple:
        x, token_type_ids, attention_mask = inputs
        x = x + self.embed_positions(torch.arange(x.shape[1], device=x.device))
        x = self.embed_dropout(self.embed_norm(x + self.embed_types(token_type_ids)))
        return x, attention_mask


class BERTTransformerLayer(nn.Module):
    def __init__(self, layer: nn.Module, model: nn.Module):
        super().__init__()
        self.layer = layer
        self.args = model.args

    def forward(self, inputs: tuple) -> tuple:
        x, attention_mask = inputs
        mask = attention_mask[:, None, None, :].bool()  # as BERT.encode: True = attend
        return run_layer(self.layer, x, mask, args=self.args, training=self.training), attention_mask


class BERTHead(nn.Module):
    """MLM transform (dense, GELU, LayerNorm) of every position, and the SOP logits from the first token."""

    def __init__(self, model: nn.Module):
        super().__init__()
        from pretrain.models.bert import gelu

        self.gelu, self.activation = gelu, model.args.activation
        self.head_dense, self.head_norm = model.head_dense, model.head_norm
        self.sop = model.args.sop
        if self.sop:
            self.pooler, self.sop_head = model.pooler, model.sop_head

    def forward(self, inputs: tuple):
        x, _mask = inputs
        h = self.head_norm(self.gelu(self.head_dense(x), self.activation))
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


# ------------------------------------------------------------------------------------------------ per family


def gpt_stages(model: nn.Module, group: Group) -> tuple[list, Callable]:
    from deepspeed.pipe import TiedLayerSpec

    tied, sp = model.args.tie_word_embeddings, getattr(model, "sequence_parallel", False)
    embed = (TiedLayerSpec("embed", TokenEmbedding, model.embed_tokens, group, sp,
                           tied_weight_attr=["embed_tokens.weight"]) if tied else TokenEmbedding(model.embed_tokens, group))
    head = (TiedLayerSpec("embed", TokenEmbedding, model.embed_tokens, group, sp, forward_fn=_tied_logits,
                          tied_weight_attr=["embed_tokens.weight"]) if tied else Wrap(model.lm_head))
    layers = [embed, GPTInput(model), *(GPTTransformerLayer(b, model) for b in model.layers), Wrap(model.norm), head]
    return layers, GPTLoss(model.loss_fn)


def bert_stages(model: nn.Module, group: Group) -> tuple[list, Callable]:
    from deepspeed.pipe import TiedLayerSpec

    def tied(**kw):
        return TiedLayerSpec("embed", TokenEmbedding, model.embed_tokens, group, tied_weight_attr=["embed_tokens.weight"], **kw)

    layers = [tied(), BERTInput(model), *(BERTTransformerLayer(layer, model) for layer in model.layers),
              BERTHead(model), tied(forward_fn=_tied_logits), BERTDecoderBias(model.lm_head)]
    return layers, BERTLoss(model.loss_fn, model.args.sop)


STAGES = {"gpt": gpt_stages, "bert": bert_stages}


def to_pipe_batch(family: str, batch: dict[str, torch.Tensor]) -> tuple[Any, Any]:
    """A loader batch (dict) as DeepSpeed's pipeline engine takes it: ``(first-stage inputs, last-stage labels)``."""
    if family == "gpt":
        return batch["input_ids"], batch["labels"]
    inputs = (batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
    return inputs, ((batch["labels"], batch["sop_labels"]) if "sop_labels" in batch else batch["labels"])


# ------------------------------------------------------------------------------------------------ build


def parameter_names(model: nn.Module) -> dict[int, str]:
    """``id(parameter) -> name`` in the unsharded model (the first name of a tied parameter)."""
    names: dict[int, str] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), name)
    return names


def build_pipeline(model: nn.Module, family: str, grid, partition: str):
    """The :class:`PipelineModule` of ``model`` over ``grid`` (a :class:`~pretrain.parallel.topology.
    ParallelGrid`, which then serves as the engine's ``mpu``). Collective: every rank calls it."""
    from deepspeed.pipe import PipelineModule

    if family not in STAGES:
        raise ValueError(f"no pipeline stages for model family {family!r}: {T5_REASON}")
    tp_group = grid.get_tensor_model_parallel_group() if grid.tp > 1 else None  # None: no TP region at all
    layers, loss_fn = STAGES[family](model, tp_group)
    with contextlib.redirect_stdout(io.StringIO()) as printed:  # DeepSpeed prints the partition on rank 0
        module = PipelineModule(layers=layers, topology=grid._topo, loss_fn=loss_fn, partition_method=partition,
                                activation_checkpoint_interval=0)
    module._grid = grid  # the same ranks and groups, plus the tensor-parallel names DeepSpeed's ZeRO asks for
    for line in printed.getvalue().splitlines():
        log.debug("%s", line)
    parts = module.parts
    names = [type(layer).__name__ if isinstance(layer, nn.Module) else layer.typename.__name__ for layer in layers]
    log.info("pipeline: %d stages, layers per stage: %s", grid.pp, "; ".join(
        f"stage {s}: {', '.join(names[parts[s]:parts[s + 1]])}" for s in range(grid.pp)))
    return module


class PipeComm:
    """Bytes this rank sends point to point in the pipeline (activations forward, their gradients backward),
    counted by wrapping DeepSpeed's ``p2p.send``."""

    def __init__(self) -> None:
        self.bytes = 0
        self._installed = False

    def install(self) -> None:
        if self._installed:
            return
        from deepspeed.runtime.pipe import p2p

        send = p2p.send

        def counting_send(tensor, dest_stage, async_op=False):
            self.bytes += tensor.numel() * tensor.element_size()
            return send(tensor, dest_stage, async_op=async_op)

        p2p.send = counting_send
        self._installed = True

    def take(self) -> int:
        n, self.bytes = self.bytes, 0
        return n


PP_COMM = PipeComm()
