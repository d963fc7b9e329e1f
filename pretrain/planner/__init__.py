"""The pre-flight planner: will a config fit on N GPUs, how fast will it run, and which layout is best.

``python -m pretrain.plan`` is its command line (``pretrain/plan.py``); ``pretrain.launch.slurm`` runs
:func:`make_plan` before ``sbatch``. The model: :mod:`~pretrain.planner.shapes` (the parameters, from the
family's own model built on the meta device), :mod:`~pretrain.planner.memory` (bytes per rank),
:mod:`~pretrain.planner.timing` (seconds per step, MFU), :mod:`~pretrain.planner.layouts` (every valid layout,
ranked), :mod:`~pretrain.planner.devices` (the GPU table). The formulas and what is not modelled:
``docs/planning.md``.
"""

from __future__ import annotations

import math
from typing import Any

from omegaconf import DictConfig

from pretrain.core.errors import ConfigError
from pretrain.planner.devices import DEVICES, Device, get_device
from pretrain.planner.layouts import (
    DEFAULT_HEADROOM,
    Evaluated,
    configured_recompute,
    enumerate_setups,
    evaluate,
    overrides_of,
    rank,
    setup_of,
)
from pretrain.planner.shapes import ModelFacts, UnknownVocabulary, model_facts
from pretrain.planner.timing import DEFAULT_EFFICIENCY


def check_config(cfg: DictConfig) -> None:
    """The trainer's config checks that need no data: the schema, every value (``pretrain.validation``; the data
    folder is the job's to check, on the nodes that read it)."""
    from omegaconf import OmegaConf

    from pretrain.config import validate_schema
    from pretrain.validation import fit_schedule_to_run, validate_values

    validate_schema(cfg)
    copy = OmegaConf.create(OmegaConf.to_container(cfg))
    fit_schedule_to_run(copy)
    copy.data.path = None
    validate_values(copy)


def ds_zero_config(cfg: DictConfig, zero_stage: int) -> dict[str, Any]:
    """The ``zero_optimization`` block our DeepSpeed engine generates for a GPU run of ``cfg`` (bucket sizes,
    overlap, ZeRO-3 thresholds; ``deepspeed_extra`` merged in)."""
    import torch

    from pretrain.engines.base import BatchPlan
    from pretrain.engines.deepspeed import deepspeed_config

    plan = BatchPlan(1, 1, 1, 1, zero_stage, 1, 1)
    ds = deepspeed_config(cfg, plan, torch.device("cuda"))
    zero = dict(ds["zero_optimization"])
    zero["grad_accum_dtype"] = (ds.get("data_types") or {}).get("grad_accum_dtype")
    return zero


def nodes_for(gpus: int, device: Device, nodes: int | None) -> tuple[int, int]:
    """(nodes, GPUs per node)."""
    if gpus < 1:
        raise ConfigError(f"--gpus {gpus}: must be >= 1")
    nodes = nodes or math.ceil(gpus / device.gpus_per_node)
    if nodes < 1 or gpus % nodes:
        raise ConfigError(f"--gpus {gpus} is not divisible by --nodes {nodes}: every node runs as many GPUs")
    return nodes, gpus // nodes


def make_plan(cfg: DictConfig, gpus: int, gpu: str = "h100", nodes: int | None = None, *,
              headroom: float = DEFAULT_HEADROOM, efficiency: float = DEFAULT_EFFICIENCY, vocab_size: int | None = None,
              enumerate_all: bool = True, facts: ModelFacts | None = None) -> dict[str, Any]:
    """The configured layout of ``cfg`` on ``gpus`` GPUs of kind ``gpu`` (refused with the trainer's message when
    invalid), and, with ``enumerate_all``, every valid layout ranked. Returns a dict (``--json`` prints it)."""
    device = get_device(gpu)
    if not 0 <= headroom < 1:
        raise ConfigError(f"--headroom {headroom}: expected a fraction in [0, 1)")
    if not 0 < efficiency <= 1:
        raise ConfigError(f"--efficiency {efficiency}: expected a fraction in (0, 1]")
    nodes, per_node = nodes_for(gpus, device, nodes)
    check_config(cfg)
    precision = str(getattr(cfg.trainer.precision, "value", cfg.trainer.precision))
    if precision == "fp32":
        note = "trainer.precision=fp32: planned in fp32 (GPU runs usually set trainer.precision=bf16)"
    else:
        note = ""
    configured_setup, plan = setup_of(cfg, gpus, configured_recompute(cfg), precision)
    facts = facts or model_facts(cfg, vocab_size)
    ds_zero = ds_zero_config(cfg, 3)
    ds_zero["stage"] = configured_setup.zero_stage

    def run(s) -> Evaluated:
        e = evaluate(facts, s, plan.global_batch_size if cfg.trainer.global_batch_size is not None
                     else s.micro_batch_size * s.dp, device, per_node, ds_zero, headroom, efficiency)
        e.overrides = overrides_of(s, s.zero_stage, moe=bool(facts.num_experts))
        return e

    configured = run(configured_setup)
    configured.configured = True
    layouts: list[Evaluated] = []
    if enumerate_all:
        for s in enumerate_setups(cfg, gpus, precision):
            e = configured if s == configured_setup else run(s)
            e.configured = s == configured_setup
            layouts.append(e)
        if not any(e.configured for e in layouts):  # e.g. a micro-batch size outside MICRO_BATCHES
            layouts.append(configured)
        layouts = rank(layouts)
    best = next((e for e in layouts if e.fits), None)
    return {
        "model": {"name": str(cfg.model.name), "family": facts.family.name, "parameters": facts.num_parameters,
                  "active_parameters": _active_parameters(facts),
                  "vocab_size": facts.args.vocab_size, "layers": facts.num_layers,
                  "model_flops_per_token": facts.flops["model"], "vocab_note": facts.vocab_note},
        "device": {"name": device.name, "memory_bytes": device.memory_bytes,
                   "peak_flops": device.peak_flops(precision), "intra_node_bw": device.intra_node_bw,
                   "inter_node_bw": device.inter_node_bw},
        "gpus": gpus, "nodes": nodes, "gpus_per_node": per_node, "precision": precision, "headroom": headroom,
        "efficiency": efficiency, "note": note, "global_batch_size": plan.global_batch_size,
        "configured": configured, "layouts": layouts, "best": best,
    }


def _active_parameters(facts: ModelFacts) -> int:
    """Parameters one token runs through: all of them, but for a mixture of experts the router and its top-k."""
    if not facts.num_experts:
        return facts.num_parameters
    from pretrain.flops import gpt_parameter_counts

    return gpt_parameter_counts(facts.args)["active"]


__all__ = ["DEVICES", "ModelFacts", "UnknownVocabulary", "make_plan", "model_facts", "get_device"]
