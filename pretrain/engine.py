"""The DeepSpeed engine, built from the typed config.

The DeepSpeed JSON is generated here (users never keep ``train_batch_size`` consistent by hand); rare keys
go through ``deepspeed_extra``. The optimizer (AdamW, no weight decay on biases and norms) and the LR
schedule are ours and handed to DeepSpeed, which steps, checkpoints and restores them.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from pretrain.core.errors import ConfigError


def _val(x: Any) -> Any:
    return x.value if hasattr(x, "value") else x


@dataclass
class BatchPlan:
    micro_batch_size: int
    global_batch_size: int
    data_parallel_size: int
    grad_accum_steps: int
    # The ZeRO stage DeepSpeed runs with: parallel.zero_stage, except that one data-parallel rank without
    # offload has nothing to partition and runs stage 0 (same numerics, no flattening copies: ZeRO-1 at one
    # rank costs ~25% of a step of a 30M model on CPU).
    zero_stage: int = 0
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1


def batch_plan(cfg: DictConfig, world_size: int) -> BatchPlan:
    """Check the parallel layout and batch arithmetic before any process group exists."""
    from pretrain.parallel.validate import validate_parallel

    p = cfg.parallel
    layout = validate_parallel(cfg, world_size)  # every layout problem at once, each with what to change
    tp, pp, dp, micro, gbs = layout.tp, layout.pp, layout.dp, layout.micro_batch_size, layout.global_batch_size
    if p.zero_stage not in (0, 1, 2, 3):
        raise ConfigError(f"parallel.zero_stage={p.zero_stage}; expected 0, 1, 2 or 3")
    if p.offload_param and p.zero_stage != 3:
        raise ConfigError("parallel.offload_param=true needs parallel.zero_stage=3")
    if p.offload_optimizer and p.zero_stage == 0:
        raise ConfigError("parallel.offload_optimizer=true needs parallel.zero_stage >= 1")
    stage = p.zero_stage
    if dp == 1 and not (p.offload_optimizer or p.offload_param):
        stage = 0
    return BatchPlan(micro, gbs, dp, gbs // (micro * dp), stage, tp, pp)


def check_precision(precision: str, device: torch.device) -> None:
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("trainer.precision=fp16 needs CUDA (DeepSpeed's CPU accelerator has no fp16); use bf16 or fp32")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("trainer.precision=bf16 but this GPU has no bf16; use fp16 or fp32")


def deepspeed_config(cfg: DictConfig, plan: BatchPlan, device: torch.device) -> dict[str, Any]:
    p = cfg.parallel
    precision = _val(cfg.trainer.precision)
    on_gpu = device.type == "cuda"
    zero: dict[str, Any] = {
        "stage": plan.zero_stage,
        "contiguous_gradients": True,
        "overlap_comm": on_gpu,
        "reduce_bucket_size": 5e8,
        "allgather_bucket_size": 5e8,
    }
    if p.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": on_gpu}
    if p.offload_param:
        zero["offload_param"] = {"device": "cpu", "pin_memory": on_gpu}
    if plan.zero_stage == 3:
        zero.update(stage3_gather_16bit_weights_on_model_save=False, stage3_param_persistence_threshold=1e5)
    ds: dict[str, Any] = {
        "train_batch_size": plan.global_batch_size,
        "train_micro_batch_size_per_gpu": plan.micro_batch_size,
        "gradient_accumulation_steps": plan.grad_accum_steps,
        "gradient_clipping": cfg.optim.clip_grad,
        "zero_optimization": zero,
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {
            "enabled": precision == "fp16",
            "loss_scale": 0,  # dynamic
            "initial_scale_power": 16,
            "loss_scale_window": 1000,
            "hysteresis": 2,
            "min_loss_scale": 1,
        },
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31 - 1,  # we log ourselves
        "wall_clock_breakdown": False,
    }
    if plan.pipeline_parallel_size > 1 and p.sequence_parallel:
        # DeepSpeed sends a stage's output to the next stage in 1/tp slices, assuming every tensor rank holds the
        # same tensor; under sequence parallelism each holds its own sequence chunk, so send it whole
        ds["pipeline"] = {"pipe_partitioned": False, "grad_partitioned": False}
    extra = OmegaConf.to_container(cfg.deepspeed_extra, resolve=True) if cfg.deepspeed_extra else {}
    return _deep_merge(ds, extra)


def _deep_merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


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


def initialize(model: torch.nn.Module, cfg: DictConfig, ds_config: dict, device: torch.device, mpu=None):
    """The DeepSpeed engine; ``mpu`` (a :class:`pretrain.parallel.topology.ParallelGrid`) tells DeepSpeed the
    data-parallel group to reduce over and the model-parallel group its gradient norm spans."""
    import deepspeed

    model.to(device)
    optimizer = build_optimizer(model, cfg, device)
    fn = lr_lambda(cfg.optim.sched, cfg.trainer.max_steps)
    engine, _, _, scheduler = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, fn),
        config=ds_config,
        mpu=None if _is_pipeline(model) else mpu,  # a PipelineModule brings its grid (our ParallelGrid)
    )
    if ds_config["zero_optimization"]["stage"] == 0 and not (ds_config["bf16"]["enabled"] or ds_config["fp16"]["enabled"]):
        _record_fp32_grad_norm(engine)
    if ds_config["zero_optimization"]["stage"] == 0 and engine.dp_world_size == 1:
        # Nothing to all-reduce with one data-parallel rank, but DeepSpeed would still flatten every gradient
        # into a bucket and back each step (~7% of a step of a 30M model on CPU).
        engine.enable_backward_allreduce = False
        if hasattr(engine, "pipeline_enable_backward_allreduce"):
            engine.pipeline_enable_backward_allreduce = False
    return engine, scheduler


def grad_norm_and_clip(params: list[torch.Tensor], max_norm: float, mpu) -> torch.Tensor:
    """The global L2 gradient norm over every rank's parameters, then clipping to ``max_norm``.

    A tensor-sharded parameter counts on every tensor rank (its shards add up), a replicated one on tensor
    rank 0 only, a tied copy DeepSpeed marks ``ds_pipe_replicated`` on one pipeline stage only; the squares
    are summed over the model-parallel group (pipeline x tensor ranks). DeepSpeed's ``clip_grad_norm_`` asks
    ``get_model_parallel_rank() == 0``, which with pipeline stages drops every replicated parameter of the
    later stages; its ZeRO and bf16 optimizers use the tensor rank, as here."""
    from deepspeed.runtime.utils import is_model_parallel_parameter

    params = [p for p in params if p.grad is not None]
    tp_rank = mpu.get_tensor_model_parallel_rank() if mpu is not None else 0
    device = params[0].grad.device if params else torch.device("cpu")
    sq = torch.zeros((), dtype=torch.float32, device=device)
    for p in params:
        if getattr(p, "ds_pipe_replicated", False) or (tp_rank > 0 and not is_model_parallel_parameter(p)):
            continue
        sq += p.grad.detach().float().pow(2).sum()
    if mpu is not None and mpu.get_model_parallel_world_size() > 1:
        torch.distributed.all_reduce(sq, group=mpu.get_model_parallel_group())
    norm = sq.sqrt()
    coef = (max_norm / (norm + 1e-6)).clamp(max=1.0)
    for p in params:
        p.grad.detach().mul_(coef.to(p.grad.dtype))
    return norm


def _is_pipeline(model: torch.nn.Module) -> bool:
    from deepspeed.pipe import PipelineModule

    return isinstance(model, PipelineModule)


def _record_fp32_grad_norm(engine) -> None:
    """DeepSpeed's fp32 stage-0 path clips with ``clip_grad_norm_`` but drops the norm it computed, so
    ``get_global_grad_norm()`` would be None there (every other path keeps it), and that norm misses the
    later pipeline stages' replicated parameters (see :func:`grad_norm_and_clip`). Same clipping, norm kept."""

    def clip_and_record() -> None:
        engine._global_grad_norm = grad_norm_and_clip(
            list(engine.module.parameters()), engine.gradient_clipping(), engine.mpu
        )

    engine.clip_fp32_gradients = clip_and_record


def current_loss_scale(engine) -> float:
    opt = engine.optimizer
    for attr in ("cur_scale", "loss_scale"):
        v = getattr(opt, attr, None)
        if isinstance(v, (int, float, torch.Tensor)):
            return float(v)
    return 1.0
