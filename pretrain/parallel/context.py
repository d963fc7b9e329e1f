"""Context parallelism (``parallel.context_parallel_size`` = C): each sequence split over C ranks, DeepSpeed-Ulysses.

The C ranks of a context group (:class:`pretrain.parallel.topology.ParallelGrid`, axis ``context``) hold the same
weights and read the same samples; rank ``r`` keeps the chunk ``[r S/C, (r+1) S/C)`` of every sequence of ``S``
tokens (:meth:`ContextParallel.split`) and runs the embedding, norms, MLP, output layer and loss on it. Positions
stay global: learned position embeddings and the rotary tables are taken at the chunk's offset.

Attention needs every key: around the core attention function (``Attention.attend``,
:func:`pretrain.models.attention.attend`) DeepSpeed's :class:`deepspeed.sequence.layer.DistributedAttention`
all-to-alls q, k and v from ``[batch, S/C, heads, d]`` (this rank's tokens, all its heads) to ``[batch, S, heads/C,
d]`` (every token, 1/C of the heads), attends as without context parallelism (the mask and ALiBi of the whole
sequence, the heads' global indices via ``spec.heads``), and all-to-alls the output back. The backward is the
same all-to-alls reversed. Why Ulysses and not ring attention: docs/context_parallel.md.

The loss: rank ``r``'s forward returns the mean over the *whole* sequence (the valid-token sums and counts of the
group all-reduced, so the metrics, evaluation and the guard see what one rank would) but carries the gradient of
its own share only, ``sum_r / N`` (:func:`chunk_loss`). DeepSpeed sums the gradients over the context ranks and
averages them over the data ranks (:meth:`ParallelGrid.get_sequence_data_parallel_group`), which gives the
gradient of the full sequence's mean loss, token-weighted.
"""

from __future__ import annotations

import logging
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn

from pretrain.callbacks import Callback, StepOutput

log = logging.getLogger(__name__)


def chunk_bounds(seq_len: int, rank: int, size: int) -> tuple[int, int]:
    """``[start, end)`` of context rank ``rank``'s chunk of a sequence of ``seq_len`` tokens."""
    if seq_len % size:
        raise ValueError(f"a sequence of {seq_len} tokens does not split into {size} equal context-parallel chunks")
    n = seq_len // size
    return rank * n, (rank + 1) * n


def a2a_bytes(numel: int, element_size: int, size: int) -> int:
    """Bytes one rank sends to and receives from the other ``size - 1`` ranks in one all-to-all of a tensor of
    ``numel`` elements (its own 1/size slice stays local)."""
    return 2 * (size - 1) * numel * element_size // size


def chunk_loss(loss_sum: torch.Tensor, n_valid: torch.Tensor,
               all_reduce: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """The mean loss over the whole sequence of a context group, from this rank's sum ``loss_sum`` over its
    ``n_valid`` valid tokens: its value is ``sum_all / n_all`` (the same on every rank), its gradient that of
    ``loss_sum / n_all`` (this rank's share; the shares' gradients sum to the mean's). ``all_reduce`` sums a
    tensor over the group and returns it. No valid token anywhere: NaN, as a mean over nothing is."""
    totals = all_reduce(torch.stack([loss_sum.detach().float(), n_valid.detach().float()]))
    share = loss_sum.float() / totals[1].clamp(min=1.0)
    return share + (totals[0] / totals[1] - share).detach()


class _CountBackward(torch.autograd.Function):
    """Identity that adds ``nbytes`` to ``counter`` when the gradient passes back (the backward all-to-alls)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, counter: "ContextParallel", nbytes: int) -> torch.Tensor:
        ctx.counter, ctx.nbytes = counter, nbytes
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        ctx.counter.a2a_bytes += ctx.nbytes
        return grad, None, None


class _LocalAttention:
    """What ``DistributedAttention`` calls between its all-to-alls: ``attend`` on SDPA's ``[b, heads, seq, d]``
    layout, the spec shifted to this rank's slice of the heads (their global indices, for ALiBi)."""

    def __init__(self, attend: Callable, rank: int):
        self.inner, self.rank = attend, rank

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spec, dropout_p: float) -> torch.Tensor:
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [b, S, h/C, d] -> [b, h/C, S, d]
        out = self.inner(q, k, v, spec.heads(self.rank * q.shape[1]), dropout_p)
        return out.transpose(1, 2)


class UlyssesAttend:
    """``attend(q, k, v, spec, dropout_p)`` on this rank's chunk of the sequence (``[b, heads, S/C, d]``), computed
    as ``attend`` over the whole sequence for 1/C of the heads between two all-to-alls (module docstring). A plain
    callable, not a module: the model's module tree and state dict stay those of the unsplit model."""

    def __init__(self, attend: Callable, cp: "ContextParallel"):
        from deepspeed.sequence.layer import DistributedAttention

        self.inner, self.cp = attend, cp
        # batch first: scatter the heads (dim 2), gather the sequence (dim 1)
        self.dist_attn = DistributedAttention(_LocalAttention(attend, cp.rank), cp.group, scatter_idx=2, gather_idx=1)

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spec, dropout_p: float = 0.0) -> torch.Tensor:
        cp = self.cp
        if spec.q_offset or (spec.segment_ids is not None and spec.segment_ids.shape[-1] != q.shape[2] * cp.size):
            raise ValueError("context parallelism attends over the whole sequence: the spec's positions and "
                             "segment ids must be the whole sequence's (q_offset 0)")
        out = self.dist_attn(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), 0, None, spec, dropout_p)
        if torch.is_grad_enabled() and q.requires_grad:  # a training forward: count what it sends and receives
            size, es = cp.size, q.element_size()
            nbytes = sum(a2a_bytes(t.numel(), es, size) for t in (q, k, v, q))  # q, k, v in; the output back
            cp.a2a_bytes += nbytes
            out = _CountBackward.apply(out, cp, nbytes)
        return out.transpose(1, 2)


class ContextParallel:
    """This rank's place in its context group, and what the model asks of it: its chunk, the loss over the group,
    and the all-to-all bytes since the metrics last took them."""

    def __init__(self, group, rank: int, size: int):
        self.group, self.rank, self.size = group, rank, size
        self.a2a_bytes = 0

    def split(self, input_ids: torch.Tensor,
              labels: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None, int]:
        """This rank's chunk of ``input_ids`` and ``labels`` (``[batch, seq]``) and the chunk's first position."""
        start, end = chunk_bounds(input_ids.shape[1], self.rank, self.size)
        chunk = input_ids[:, start:end]
        return chunk, (labels[:, start:end] if labels is not None else None), start

    def loss(self, loss_fn: Callable, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The whole sequence's mean cross-entropy (label ``-100`` ignored) from this rank's chunk
        (:func:`chunk_loss`)."""
        flat = labels.reshape(-1)
        loss_sum = loss_fn(logits.float().view(-1, logits.size(-1)), flat, ignore_index=-100, reduction="sum")
        return chunk_loss(loss_sum, (flat != -100).sum(), self.all_reduce)

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` summed over the context group, in place."""
        dist.all_reduce(t, group=self.group)
        return t

    def take_a2a_bytes(self) -> int:
        value, self.a2a_bytes = self.a2a_bytes, 0
        return value


def context_parallelize(model: nn.Module, group, rank: int, size: int) -> int:
    """Make ``model`` (a GPT, tensor-parallel or not) run its chunk of every sequence on context rank ``rank`` of
    ``group`` (``size`` ranks): ``model.context_parallel`` is set and every attention module's ``attend`` is wrapped
    in :class:`UlyssesAttend`. Returns the number of attention modules wrapped. ``size`` 1: nothing changes."""
    if size == 1:
        return 0
    attentions = [m for m in model.modules() if callable(getattr(m, "attend", None))]
    if not attentions or not hasattr(model, "context_parallel"):
        raise TypeError(f"{type(model).__name__} has no attention to split over context-parallel ranks (an attend "
                        "function and a context_parallel attribute, as GPT's)")
    if model.context_parallel is not None or any(isinstance(m.attend, UlyssesAttend) for m in attentions):
        raise ValueError(f"{type(model).__name__} is context-parallel already")
    cp = ContextParallel(group, rank, size)
    for module in attentions:
        module.attend = UlyssesAttend(module.attend, cp)
    model.context_parallel = cp
    return len(attentions)


def find_context_parallel(module: nn.Module) -> ContextParallel | None:
    """The :class:`ContextParallel` of a (possibly engine-wrapped) model, or None."""
    for m in module.modules():
        cp = getattr(m, "context_parallel", None)
        if isinstance(cp, ContextParallel):
            return cp
    return None


class ContextParallelMetrics(Callback):
    """``cp_a2a_bytes`` in the step's record (``metrics.jsonl``, W&B): the bytes one rank sent to and received from
    the other ranks of its context group in the Ulysses all-to-alls (q, k, v and the output, forward and backward,
    recomputation included), per training step since the last record. Every rank moves the same amount (equal
    chunks), so no collective is needed."""

    order = 15  # after the StepRecorder (10) built the record, before the logger (30)

    def __init__(self) -> None:
        self.cp: ContextParallel | None = None
        self.bytes, self.steps = 0, 0

    def on_train_start(self, trainer) -> None:
        engine = trainer.engine
        modules = [m for m in (getattr(engine, a, None) for a in ("module", "ds", "model")) if isinstance(m, nn.Module)]
        self.cp = find_context_parallel(modules[0]) if modules else None
        if self.cp is not None:
            self.cp.take_a2a_bytes()  # forget what ran before training
        self.bytes, self.steps = 0, 0

    def on_step_end(self, trainer, out: StepOutput) -> None:
        if self.cp is None:
            return
        self.bytes += self.cp.take_a2a_bytes()
        self.steps += 1
        if out.record:
            out.record["cp_a2a_bytes"] = self.bytes / self.steps
            self.bytes, self.steps = 0, 0


def context_callbacks(size: int) -> list[Callback]:
    """The Trainer's context-parallel callbacks: none at ``size`` 1."""
    return [ContextParallelMetrics()] if size > 1 else []
