"""The cross-entropy loss of vocabulary-split logits (Megatron's vocab-parallel cross entropy): the output
layer's logits stay split over the tensor ranks, and the loss needs three all-reduces of one number per row
instead of gathering ``[rows, vocab]``."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from pretrain.parallel.tensor.mappings import Group, _all_reduce, rank_in, world_size


class _VocabParallelCrossEntropy(torch.autograd.Function):
    """Per-row ``logsumexp(z) - z[target]`` of logits split along the vocabulary: three all-reduces of one
    number per row (max, target logit, sum of exponentials) instead of gathering ``[rows, vocab]``."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, target: torch.Tensor, group: Group):
        vocab_local = logits.shape[-1]
        start = rank_in(group) * vocab_local
        row_max = _all_reduce(logits.max(dim=-1).values, group, op=dist.ReduceOp.MAX)
        shifted = logits - row_max.unsqueeze(-1)
        here = (target >= start) & (target < start + vocab_local)
        local_target = (target - start).masked_fill(~here, 0)
        picked = shifted.gather(-1, local_target.unsqueeze(-1)).squeeze(-1).masked_fill(~here, 0.0)
        picked = _all_reduce(picked, group)
        exp = shifted.exp()
        sum_exp = _all_reduce(exp.sum(dim=-1), group)
        exp.div_(sum_exp.unsqueeze(-1))  # softmax, kept for the backward
        ctx.save_for_backward(exp, here, local_target)
        return sum_exp.log() - picked

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        softmax, here, local_target = ctx.saved_tensors
        g = softmax.clone()
        rows = torch.arange(g.shape[0], device=g.device)
        g[rows, local_target] -= here.to(g.dtype)
        return g * grad.unsqueeze(-1), None, None


def vocab_parallel_cross_entropy(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = -100,
                                 reduction: str = "mean", *, group: Group) -> torch.Tensor:
    """``F.cross_entropy(full_logits, target, ignore_index=..., reduction=...)`` computed from this rank's
    vocabulary slice ``logits[..., V/tp]`` (rank ``r`` holds ids ``[r V/tp, (r+1) V/tp)``). Same call
    signature as ``F.cross_entropy`` for 2-D logits, so a model's ``loss_fn`` hook can take either; the mean
    over no valid target is NaN, as in PyTorch."""
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction={reduction!r}; expected mean, sum or none")
    flat_logits = logits.reshape(-1, logits.shape[-1])
    flat_target = target.reshape(-1)
    valid = flat_target != ignore_index
    safe = flat_target.masked_fill(~valid, 0)
    if world_size(group) == 1:
        losses = F.cross_entropy(flat_logits, safe, reduction="none")
    else:
        losses = _VocabParallelCrossEntropy.apply(flat_logits, safe, group)
    losses = losses * valid  # zero loss and gradient at ignored positions
    if reduction == "none":
        return losses.view(target.shape)
    if reduction == "sum":
        return losses.sum()
    return losses.sum() / valid.sum()
