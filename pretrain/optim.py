"""The optimizer and LR schedule every engine uses: AdamW without weight decay on biases and norms, linear
warm-up then cosine/linear/constant. Engines hand them to their backend, which steps and checkpoints them.
"""

from __future__ import annotations

import math

import torch
from omegaconf import DictConfig

from pretrain.core.errors import ConfigError


def _val(x):
    return x.value if hasattr(x, "value") else x


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only (not on biases, norms) — the GPT-2 / Megatron convention."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: torch.nn.Module, cfg: DictConfig, device: torch.device) -> torch.optim.Optimizer:
    o = cfg.optim
    if o.name != "adamw":
        raise ConfigError(f"optim.name={o.name!r}; expected adamw")
    groups = param_groups(model, o.weight_decay)
    kw = dict(lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps)
    if cfg.parallel.offload_optimizer:
        from deepspeed.ops.adam import DeepSpeedCPUAdam  # ZeRO-Offload steps the optimizer on the CPU

        return DeepSpeedCPUAdam(groups, adamw_mode=True, **kw)
    return torch.optim.AdamW(groups, fused=device.type == "cuda", foreach=None if device.type == "cuda" else True, **kw)


def lr_lambda(sched: DictConfig, max_steps: int):
    """Multiplier of optim.lr after ``step`` optimizer steps: linear warm-up, then cosine/linear decay to
    ``min_lr_ratio`` at ``decay_steps`` (default ``trainer.max_steps``), constant after."""
    name = _val(sched.name)
    warmup = sched.warmup_steps
    decay = sched.decay_steps if sched.decay_steps is not None else max_steps
    floor = sched.min_lr_ratio
    if decay < warmup:
        raise ConfigError(f"optim.sched.decay_steps={decay} is shorter than optim.sched.warmup_steps={warmup}")

    def fn(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if name == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, decay - warmup))
        if name == "linear":
            return 1.0 - (1.0 - floor) * progress
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return fn
