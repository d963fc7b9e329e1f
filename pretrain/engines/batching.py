"""The batch arithmetic every engine shares, without torch: the SLURM helper and the planner check a
layout with it before any process (or import of torch) exists."""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig

from pretrain.core.errors import ConfigError


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
    context_parallel_size: int = 1  # ranks sharing each sample, one chunk of its sequence each


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
    if dp * layout.cp == 1 and not (p.offload_optimizer or p.offload_param):  # ZeRO partitions over dp x cp ranks
        stage = 0
    return BatchPlan(micro, gbs, dp, gbs // (micro * dp), stage, tp, pp, layout.cp)
