"""``trainer.compile=true``: ``torch.compile`` of each transformer block, applied to a built model from outside
(as torchtitan's ``apply_compile``), for every family and engine.

Why blocks, not the whole model: the blocks of a model are copies of one or two classes, so dynamo traces one
graph per block class and every layer reuses it (parameters are graph inputs, not constants), which keeps the
compile time independent of the depth; the embedding, the loss and whatever an engine does around the model
(DeepSpeed's hooks, FSDP's all-gathers) stay eager, where graph breaks would otherwise land.

Each block is compiled in place with :meth:`torch.nn.Module.compile`, so module and parameter names do not
change (checkpoints, the layout-free copy and the Hugging Face export see the same names as without compile).
An engine calls :func:`compile_blocks` once, on the model after tensor parallelism and activation checkpointing
were applied (both are inside the blocks; dynamo traces the checkpoint as one region) and before it wraps the
model (DeepSpeed's engine, FSDP's ``fully_shard``). Pipeline parallelism is refused by :func:`compile_problem`.

The blocks are the ``ModuleList``s the family names for activation checkpointing
(:attr:`pretrain.models.family.ModelFamily.recompute`): one list of layers for GPT and BERT, the encoder's and
the decoder's for T5.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from torch import nn

from pretrain.callbacks import Callback, StepOutput

log = logging.getLogger("pretrain")

BACKENDS = ("inductor", "aot_eager", "eager")


def compile_problem(cfg: Any) -> str | None:
    """Why ``cfg`` cannot run with ``trainer.compile=true`` (None: it can); the validation calls this."""
    t = cfg.trainer
    if not t.compile:
        return None
    if t.compile_backend not in BACKENDS:
        return (f"trainer.compile_backend={t.compile_backend!r} is not known; expected one of "
                f"{', '.join(BACKENDS)}")
    if cfg.parallel.pipeline_model_parallel_size > 1:
        return ("trainer.compile=true is not supported with pipeline parallelism (parallel."
                "pipeline_model_parallel_size>1: DeepSpeed's PipelineModule runs the layers itself); use "
                "tensor or data parallelism, or set trainer.compile=false")
    return None


def transformer_blocks(model: nn.Module, family: Any) -> list[nn.Module]:
    """The transformer blocks of ``model``: every layer of the family's layer lists."""
    return [layer for path in family.recompute.layers for layer in model.get_submodule(path)]


def compile_blocks(model: nn.Module, cfg: Any) -> int:
    """Compile every transformer block of ``model`` in place when ``cfg.trainer.compile`` is on; returns how many
    (0 when off). ``cfg``: the training config (``trainer.compile``, ``trainer.compile_backend``,
    ``model.family``)."""
    if not cfg.trainer.compile:
        return 0
    from pretrain.models import get_family

    blocks = transformer_blocks(model, get_family(cfg.model.family))
    raise_recompile_limit(len(blocks))
    for block in blocks:
        block.compile(backend=cfg.trainer.compile_backend, dynamic=False)
    log.info("torch.compile (%s backend): %d transformer blocks, compiled on their first call (see the first "
             "step's time)", cfg.trainer.compile_backend, len(blocks))
    return len(blocks)


def raise_recompile_limit(n_blocks: int) -> None:
    """Room in dynamo's per-code cache for the graphs a run needs: a few per block class (train and eval mode,
    with and without masks), and, should a guard tell the blocks apart, one per block."""
    import torch._dynamo

    cfg = torch._dynamo.config
    need = max(8, 2 * n_blocks + 8)
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(cfg, name) and getattr(cfg, name) < need:
            setattr(cfg, name, need)


class CompileTimer(Callback):
    """Logs the first step of a compiled run, which holds the compilation (``compile_first_step_s`` in its
    metrics record; the second step's record gives the steady time to compare), in train.log and metrics. Once per
    process: a rollback's steps reuse the compiled graphs."""

    order = 20  # after the StepRecorder (10) filled the record, before the MetricsLogger (30) writes it

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self.first: float | None = None

    def on_step_end(self, trainer: Any, out: StepOutput) -> None:
        if self.first is not None:
            return
        self.first = time.perf_counter() - out.t0
        out.record["compile_first_step_s"] = self.first
        log.info("torch.compile: the first step took %.1f s, compilation included (%s backend)", self.first,
                 self.backend)
