"""Every valid layout of a config on N GPUs, each with its memory per rank and time per step, ranked.

A layout is tp x pp x dp x ZeRO stage x micro-batch x recomputation. Whether it is valid is decided by the
trainer's own checks (``pretrain.engines.batch_plan``, which runs ``pretrain.parallel.validate.validate_parallel``)
on the config with that layout's keys set, so the planner refuses exactly what the trainer would refuse, with its
messages. The global batch stays the config's (``trainer.global_batch_size``; when null, micro x dp as the
trainer derives it, and the micro-batch is not varied).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from types import SimpleNamespace
from typing import Any

from omegaconf import DictConfig, OmegaConf

from pretrain.core.errors import ConfigError
from pretrain.planner import memory, timing
from pretrain.planner.devices import Device, GiB
from pretrain.planner.memory import Setup
from pretrain.planner.shapes import ModelFacts

DEFAULT_HEADROOM = 0.10  # of the device's memory, kept free: CUDA context, NCCL, the allocator's fragmentation
MICRO_BATCHES = (1, 2, 4, 8, 16, 32, 64)
RECOMPUTE = (None, "selective", "full")


@dataclass
class Evaluated:
    setup: Setup
    global_batch: int
    memory: dict[str, float]  # the rank that holds most
    time: dict[str, float]
    fits: bool
    usable_bytes: float
    overrides: list[str] = field(default_factory=list)
    configured: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self.setup), "global_batch": self.global_batch, "fits": self.fits,
                "configured": self.configured, "memory_bytes": self.memory, "usable_bytes": self.usable_bytes,
                "time": self.time, "overrides": self.overrides}


def _val(x: Any) -> Any:
    return x.value if hasattr(x, "value") else x


def config_view(cfg: DictConfig, tp: int, pp: int, zero: int, micro: int,
                parallel: dict | None = None, ep: int | None = None) -> SimpleNamespace:
    """``cfg`` with another layout, as the layout checks read it (no OmegaConf copy: thousands are checked);
    ``parallel``: ``cfg.parallel`` as a dict, when the caller has it already; ``ep``: another expert-parallel size."""
    p = dict(parallel if parallel is not None else OmegaConf.to_container(cfg.parallel, resolve=True))
    p.update(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp, zero_stage=zero)
    if ep is not None:
        p["expert_model_parallel_size"] = ep
    t = SimpleNamespace(micro_batch_size=micro, global_batch_size=cfg.trainer.global_batch_size)
    return SimpleNamespace(parallel=SimpleNamespace(**p), trainer=t, model=cfg.model)


def configured_recompute(cfg: DictConfig) -> str | None:
    m = cfg.model
    return str(_val(m.recompute_granularity)) if m.activation_checkpointing else None


def setup_of(cfg: Any, world: int, recompute: str | None, precision: str) -> tuple[Setup, Any]:
    """(the layout ``cfg`` asks for on ``world`` GPUs, its BatchPlan); a ConfigError (the trainer's message) when
    it is invalid."""
    from pretrain.engines import batch_plan

    plan = batch_plan(cfg, world)
    p = cfg.parallel
    return Setup(tp=plan.tensor_parallel_size, pp=plan.pipeline_parallel_size, dp=plan.data_parallel_size,
                 zero_stage=plan.zero_stage, micro_batch_size=plan.micro_batch_size,
                 grad_accum_steps=plan.grad_accum_steps, recompute=recompute,
                 sequence_parallel=bool(p.sequence_parallel) and plan.tensor_parallel_size > 1, precision=precision,
                 offload_optimizer=bool(p.offload_optimizer), offload_param=bool(p.offload_param),
                 ep=_expert_parallel_size(cfg, plan)), plan


def _expert_parallel_size(cfg: Any, plan: Any) -> int:
    """``parallel.expert_model_parallel_size`` of a mixture of experts (1 for a dense model)."""
    if not getattr(cfg.model, "num_experts", 0):
        return 1
    return int(getattr(plan, "expert_model_parallel_size", None) or getattr(cfg.parallel, "expert_model_parallel_size",
                                                                            1) or 1)


def overrides_of(s: Setup, requested_stage: int, moe: bool = False) -> list[str]:
    out = [f"parallel.tensor_model_parallel_size={s.tp}", f"parallel.pipeline_model_parallel_size={s.pp}",
           f"parallel.zero_stage={requested_stage}", f"trainer.micro_batch_size={s.micro_batch_size}",
           f"model.activation_checkpointing={'true' if s.recompute else 'false'}"]
    if moe:
        out.append(f"parallel.expert_model_parallel_size={s.ep}")
    if s.recompute:
        out.append(f"model.recompute_granularity={s.recompute}")
    return out


def evaluate(facts: ModelFacts, s: Setup, global_batch: int, device: Device, gpus_per_node: int,
             ds_zero: dict[str, Any], headroom: float, efficiency: float) -> Evaluated:
    """Memory of the rank that holds most (over pipeline stages and data-parallel ranks) and the step time."""
    worst: dict[str, float] | None = None
    for stage in range(s.pp):
        states = max(memory.model_states(facts, s, stage, ds_zero),
                     key=lambda b: sum(b[k] for k in memory.CATEGORIES))
        act = memory.activations(facts, s, stage)
        buckets = memory.buckets(facts, s, stage, ds_zero)
        gathered = memory.zero3_gathered(facts, s, stage, ds_zero)
        held = sum(states[k] for k in memory.CATEGORIES)
        transient = max(act["recompute"], act["logits_backward"])
        backward_peak = held + states["backward_grads"] + act["saved"] + transient + buckets + gathered
        step_peak = held + states["step_transient"]
        row = {**{k: float(states[k]) for k in memory.CATEGORIES}, "model_states": float(held),
               "activations": act["layers"] + act["embedding_and_head"], "logits": act["logits"],
               "transient": float(transient), "step_transient": float(states["step_transient"]),
               "backward_grads": float(states["backward_grads"]),
               "peak_at": "optimizer step" if step_peak > backward_peak else "backward",
               "recompute": act["recompute"], "logits_backward": act["logits_backward"],
               "buckets": float(buckets), "zero3_gathered": float(gathered), "host": float(states["host"]),
               "in_flight_micro_batches": act["in_flight"], "activations_per_micro_batch": act["per_micro_batch"],
               "total": float(max(backward_peak, step_peak)), "stage": stage}
        if worst is None or row["total"] > worst["total"]:
            worst = row
    assert worst is not None
    usable = device.memory_bytes * (1 - headroom)
    t = timing.step_time(facts, s, device, global_batch, gpus_per_node, efficiency,
                         overlap_comm=bool(ds_zero.get("overlap_comm", True)))
    return Evaluated(s, global_batch, worst, t, worst["total"] <= usable, usable)


def enumerate_setups(cfg: DictConfig, world: int, precision: str) -> list[Setup]:
    """Every layout of ``world`` GPUs that the trainer's checks accept."""
    from pretrain.engines import batch_plan

    divisors = [d for d in range(1, world + 1) if world % d == 0]
    fixed_gbs = cfg.trainer.global_batch_size is not None
    micros = MICRO_BATCHES if fixed_gbs else (cfg.trainer.micro_batch_size,)
    out, seen = [], set()
    parallel = OmegaConf.to_container(cfg.parallel, resolve=True)
    experts = int(getattr(cfg.model, "num_experts", 0) or 0)
    for tp in divisors:
        for pp in (d for d in divisors if (world // tp) % d == 0):
            # a mixture of experts: every expert-parallel size that splits both the experts and the dp ranks
            eps = [e for e in divisors if (world // (tp * pp)) % e == 0 and experts % e == 0] if experts else [None]
            for zero, micro, ep in ((z, m, e) for z in (0, 1, 2, 3) for m in micros for e in eps):
                view = config_view(cfg, tp, pp, zero, micro, parallel, ep)
                try:
                    plan = batch_plan(view, world)
                except ConfigError:
                    continue
                key = (tp, pp, plan.zero_stage, micro, ep)
                if key in seen:  # one data-parallel rank: every requested stage runs as ZeRO-0
                    continue
                seen.add(key)
                for rc in RECOMPUTE:
                    s, _ = setup_of(view, world, rc, precision)
                    out.append(s)
    return out


def rank(evals: list[Evaluated]) -> list[Evaluated]:
    """Fitting layouts first, fastest (tokens/s) first; ties: less memory first."""
    return sorted(evals, key=lambda e: (not e.fits, -e.time["tokens_per_s"], e.memory["total"]))


def gib(x: float) -> float:
    return x / GiB
