"""Pipeline parallelism through DeepSpeed's :class:`~deepspeed.pipe.PipelineModule` (1F1B schedule).

The model is built whole (seeded, tensor-parallelized if tp > 1) exactly as without pipelining, then cut into
a flat list of stage layers that *wrap the model's own modules*: the parameters of the pipeline are the very
``Parameter`` objects of the built model, so the initial weights equal the one-process model's and every
local parameter keeps its name in the unsharded model (:func:`parameter_names`, used by the layout-free
checkpoint and the export). DeepSpeed keeps the layers of this rank's stage and drops the rest.

Which layers a model is cut into is its family's (``ModelFamily.pipeline_stages``, e.g.
:mod:`pretrain.models.gpt.pipeline`; a family without stages says why in ``pipeline_unsupported``), and so is
the batch conversion (``ModelFamily.to_pipe_batch``). Stage layers pass one tensor or a tuple of tensors to
the next (DeepSpeed sends them point to point). This module holds the engine wrapper and the stage layers
families share:

* tied embeddings: the token embedding is a :class:`~deepspeed.pipe.TiedLayerSpec` of :class:`TokenEmbedding`
  on the first and the last stage (there with :func:`tied_logits` as its forward); DeepSpeed all-reduces its
  gradient between the two and counts it once in the gradient norm;
* :class:`Wrap`: a module applied to the activation (a final norm, an untied output layer).

Layers are partitioned by ``parallel.pipeline_partition``: ``type:TransformerLayer`` (the same number of
transformer layers per stage, the default: the families name their layer wrappers ``*TransformerLayer``),
``parameters`` (balanced parameter counts) or ``uniform`` (layer count).
"""

from __future__ import annotations

import contextlib
import io
import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.parallel.tensor import (
    Group,
    copy_to_tensor_model_parallel_region,
    gather_from_sequence_parallel_region,
)

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------ shared stage layers


class TokenEmbedding(nn.Module):
    """The token embedding (tied between the first and the last stage). ``forward`` embeds the first element
    of its input; :func:`tied_logits` uses the same weight as the output layer."""

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


def tied_logits(module: TokenEmbedding, inputs):
    """Output layer sharing the embedding's (vocabulary-split) weight: logits of this rank's vocabulary slice,
    as :class:`~pretrain.parallel.tensor.ColumnParallelLinear` with ``gather_output=False`` computes them."""
    x, rest = (inputs[0], inputs[1:]) if isinstance(inputs, tuple) else (inputs, ())
    if module.group is not None:
        x = (gather_from_sequence_parallel_region(x, module.group) if module.sequence_parallel
             else copy_to_tensor_model_parallel_region(x, module.group))
    logits = F.linear(x, module.embed_tokens.weight)
    return (logits, *rest) if rest else logits


class Wrap(nn.Module):
    """A module applied to the (first) activation, e.g. the final norm or an untied output layer."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


def to_pipe_batch(family: str, batch: dict[str, torch.Tensor]) -> tuple[Any, Any]:
    """A loader batch (dict) as DeepSpeed's pipeline engine takes it: ``(first-stage inputs, last-stage labels)``."""
    from pretrain.models import get_family

    return get_family(family).to_pipe_batch(batch)


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

    from pretrain.models import get_family

    tp_group = grid.get_tensor_model_parallel_group() if grid.tp > 1 else None  # None: no TP region at all
    layers, loss_fn = get_family(family).pipeline_stages(model, tp_group)
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
