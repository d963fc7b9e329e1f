"""Every config value checked before expensive work, each problem naming its key.

The typed schema (:mod:`pretrain.config`) already refuses unknown keys and wrong types at compose time; what it
cannot express is ranges and relations: a negative ``optim.lr`` (torch would refuse it only once the engine is
built, without naming the key), ``beta2=1.5``, a ``decay_steps`` shorter than the warm-up, a ``data.path`` that
does not exist. :func:`validate_values` finds all of them at once, in milliseconds, on a composed config.

Also here:

- :func:`fit_schedule_to_run`: a warm-up longer than a short run whose schedule length is the default
  (``decay_steps`` null = ``trainer.max_steps``) is shortened to the run instead of refused, so
  ``experiment=gpt_tiny trainer.max_steps=4`` just works; every schedule that is valid today is left alone.
- :func:`check_command_line`: plain ``key=value`` overrides whose key is not in the schema, answered with the
  closest known key ("did you mean trainer.max_steps?") before Hydra composes anything.
- :func:`report_user_error`: a :class:`~pretrain.core.errors.UserError` printed once (rank 0) under torchrun.
"""

from __future__ import annotations

import difflib
import functools
import json
import math
import os
import sys
import time
from collections.abc import Iterable
from dataclasses import is_dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from pretrain.core.errors import ConfigError, UserError

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


# ------------------------------------------------------------------------------------------------ key names


def _is_closed(node: Any) -> bool:
    """A node of a dataclass schema (fixed keys), as opposed to an open map (``Dict[str, ...]``) or a leaf."""
    return isinstance(node, DictConfig) and is_dataclass(OmegaConf.get_type(node))


@functools.lru_cache(maxsize=1)
def schema_keys() -> dict[str, bool]:
    """Every dotted key of the training schema -> whether it is an open map (any sub-key allowed)."""
    from pretrain.config import TrainConfig

    out: dict[str, bool] = {}

    def walk(node: DictConfig, prefix: str) -> None:
        for k in node:
            child = node._get_node(k)
            key = f"{prefix}{k}"
            out[key] = isinstance(child, DictConfig) and not _is_closed(child)
            if _is_closed(child):
                walk(child, key + ".")

    walk(OmegaConf.structured(TrainConfig), "")
    return out


def closest_key(key: str, extra: Iterable[str] = ()) -> str | None:
    """The known key nearest to ``key`` (a misspelling), or None when nothing is close."""
    known = schema_keys()
    candidates = list(known) + list(extra)
    parent, _, leaf = key.rpartition(".")
    if parent in known:  # the section exists: compare the last part with its own keys first
        siblings = [k.rpartition(".")[2] for k in known if k.rpartition(".")[0] == parent]
        hit = difflib.get_close_matches(leaf, siblings, n=1, cutoff=0.6)
        if hit:
            return f"{parent}.{hit[0]}"
    hit = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    return hit[0] if hit else None


def unknown_key_message(key: str, extra: Iterable[str] = ()) -> str:
    guess = closest_key(key, extra)
    hint = f" (did you mean {guess}?)" if guess else ""
    return f"unknown config key '{key}'{hint}"


def key_problem(key: str) -> str | None:
    """Why ``key`` (dotted) is not a key of the schema, or None when it is one (or lies inside an open map)."""
    known = schema_keys()
    parts = key.split(".")
    for i in range(1, len(parts) + 1):
        prefix = ".".join(parts[:i])
        if prefix not in known:
            return unknown_key_message(key, _group_names())
        if known[prefix]:  # an open map (data.weights, deepspeed_extra): its keys are the user's
            return None
    return None


@functools.lru_cache(maxsize=4)
def _group_names(conf_dir: Path = CONF_DIR) -> tuple[str, ...]:
    return tuple(sorted(p.name for p in conf_dir.iterdir() if p.is_dir())) if conf_dir.is_dir() else ()


def check_command_line(argv: list[str], conf_dir: str | os.PathLike = CONF_DIR) -> None:
    """Refuse plain ``key=value`` overrides whose key the schema does not have, naming the closest known key.

    Hydra refuses them too, but with "Could not override 'trainer.max_step'. To append to your config use
    +trainer.max_step=4", which invites the wrong fix. Config groups (``model=gpt/tiny``, ``experiment=x``),
    ``hydra.*`` keys and flags pass through untouched; ``+key``/``++key`` appends are checked after
    composition by :func:`pretrain.config.validate_schema`. Anything Hydra cannot parse is left to Hydra."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    conf_dir = Path(conf_dir)
    parser = OverridesParser.create()
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue
        try:
            (ov,) = parser.parse_overrides([arg])
        except HydraException:
            continue
        key = ov.key_or_group
        if ov.package is not None or ov.is_add() or ov.is_force_add() or key.split(".")[0].split("/")[0] == "hydra":
            continue
        if (conf_dir / key.replace(".", "/")).is_dir():  # a config group
            continue
        problem = key_problem(key)
        if problem:
            raise ConfigError(f"{problem}, in the override '{arg}'")


# ------------------------------------------------------------------------------------------------- values


def _val(x: Any) -> Any:
    return x.value if hasattr(x, "value") else x


# rule -> (test, what it expects); bounds are the rule's own
_RULES = {
    ">=0": (lambda v: v >= 0, ">= 0"),
    ">=1": (lambda v: v >= 1, ">= 1"),
    ">0": (lambda v: v > 0, "> 0"),
    "[0,1]": (lambda v: 0 <= v <= 1, "between 0 and 1"),
    "[0,1)": (lambda v: 0 <= v < 1, "in [0, 1)"),
}


def _number_problems(cfg: DictConfig, rules: list[tuple[str, str]]) -> list[str]:
    """``(dotted key, rule of _RULES)`` checks; a null value passes (its default applies)."""
    out = []
    for key, rule in rules:
        v = OmegaConf.select(cfg, key)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            out.append(f"{key}={v!r} must be a finite number")
            continue
        test, expected = _RULES[rule]
        if not test(v):
            out.append(f"{key}={v} must be {expected}")
    return out


OPTIMIZERS = ("adamw",)


def value_problems(cfg: DictConfig) -> list[str]:
    """Every out-of-range or inconsistent value of ``cfg`` (empty: all fine). Cheap: no model, no data read
    beyond the manifest."""
    problems: list[str] = []
    o = cfg.optim
    if o.name not in OPTIMIZERS:
        problems.append(f"optim.name={o.name!r}; expected {' or '.join(OPTIMIZERS)}")
    problems += _number_problems(cfg, [
        ("optim.lr", ">=0"),
        ("optim.weight_decay", ">=0"),
        ("optim.beta1", "[0,1)"),
        ("optim.beta2", "[0,1)"),
        ("optim.eps", ">=0"),
        ("optim.clip_grad", ">=0"),  # 0 = no clipping (DeepSpeed's convention)
        ("optim.sched.warmup_steps", ">=0"),
        ("optim.sched.decay_steps", ">=0"),
        ("optim.sched.min_lr_ratio", "[0,1]"),
        ("trainer.max_steps", ">=1"),
        ("trainer.micro_batch_size", ">=1"),
        ("trainer.global_batch_size", ">=1"),
        ("trainer.eval_interval", ">=0"),
        ("trainer.eval_iters", ">=0"),
        ("trainer.log_interval", ">=1"),
        ("trainer.peak_flops_per_device", ">0"),
        ("trainer.max_wall_time_s", ">0"),
        ("checkpoint.interval", ">=0"),
        ("checkpoint.keep_last", ">=1"),
        ("data.num_workers", ">=0"),
        ("parallel.timeout_s", ">0"),
    ])
    s = o.sched
    warmup, decay = s.warmup_steps, s.decay_steps
    length = decay if decay is not None else cfg.trainer.max_steps
    if isinstance(warmup, int) and isinstance(length, int) and warmup >= 0 and length < warmup:
        if decay is not None:
            problems.append(f"optim.sched.decay_steps={decay} is shorter than optim.sched.warmup_steps={warmup}; "
                            f"the schedule must be at least as long as its warm-up")
        else:
            problems.append(f"optim.sched.warmup_steps={warmup} is longer than the schedule (optim.sched.decay_steps="
                            f"null = trainer.max_steps={length}); shorten the warm-up or set optim.sched.decay_steps")
    from pretrain.models.compile import compile_problem

    if why := compile_problem(cfg):
        problems.append(why)
    problems += _data_problems(cfg.data)
    problems += engine_problems(cfg)
    return problems


ENGINE_NAMES = ("deepspeed", "accelerate")


def engine_problems(cfg: DictConfig) -> list[str]:
    """Keys the chosen engine does not support (docs/engines.md), each with what to use instead."""
    e = getattr(cfg, "engine", None)
    if e is None:
        return []
    if e.name not in ENGINE_NAMES:
        return [f"engine.name={e.name!r}; expected {' or '.join(ENGINE_NAMES)} (engine=deepspeed|accelerate)"]
    a, p, out = e.accelerate, cfg.parallel, []
    strategy, sharding = _val(a.strategy), _val(a.sharding)
    if e.name == "deepspeed":
        from pretrain.config import AccelerateConfig

        default = AccelerateConfig()
        changed = [k for k in ("strategy", "sharding", "hybrid_shard_size", "reshard_after_forward")
                   if _val(getattr(a, k)) != _val(getattr(default, k))]
        if changed:
            out.append(f"engine.accelerate.{changed[0]} applies to engine=accelerate only, this run uses "
                       "engine=deepspeed (ZeRO: parallel=zero0..zero3); add engine=accelerate or drop the key")
        return out
    deepspeed_only = "is DeepSpeed's; under engine=accelerate"
    if p.tensor_model_parallel_size > 1:
        out.append(f"parallel.tensor_model_parallel_size={p.tensor_model_parallel_size}: tensor parallelism "
                   "needs engine=deepspeed")
    if p.pipeline_model_parallel_size > 1:
        out.append(f"parallel.pipeline_model_parallel_size={p.pipeline_model_parallel_size}: pipeline parallelism "
                   "needs engine=deepspeed")
    if p.sequence_parallel:
        out.append("parallel.sequence_parallel=true: sequence parallelism needs engine=deepspeed with tensor "
                   "parallelism")
    if p.expert_model_parallel_size > 1:
        out.append(f"parallel.expert_model_parallel_size={p.expert_model_parallel_size}: expert parallelism needs "
                   "engine=deepspeed (under engine=accelerate every rank runs every expert)")
    if p.context_parallel_size > 1:
        out.append(f"parallel.context_parallel_size={p.context_parallel_size}: context parallelism (Ulysses) needs "
                   "engine=deepspeed")
    if p.zero_stage in (2, 3):
        out.append(f"parallel.zero_stage={p.zero_stage} {deepspeed_only} shard with engine.accelerate.strategy=fsdp "
                   "(engine.accelerate.sharding=full shards parameters, gradients and optimizer states, as ZeRO-3)")
    if p.offload_optimizer or p.offload_param:
        key = "offload_optimizer" if p.offload_optimizer else "offload_param"
        out.append(f"parallel.{key}=true: CPU offload needs engine=deepspeed (parallel=zero3_offload)")
    if cfg.get("deepspeed_extra"):
        out.append(f"deepspeed_extra {deepspeed_only} nothing reads it: drop it")
    if strategy == "ddp" and sharding != "full":
        out.append(f"engine.accelerate.sharding={sharding} needs engine.accelerate.strategy=fsdp (ddp replicates)")
    if a.hybrid_shard_size is not None:
        if sharding != "hybrid":
            out.append(f"engine.accelerate.hybrid_shard_size={a.hybrid_shard_size} needs "
                       "engine.accelerate.sharding=hybrid")
        elif a.hybrid_shard_size < 1:
            out.append(f"engine.accelerate.hybrid_shard_size={a.hybrid_shard_size} must be >= 1")
    if strategy == "fsdp" and sharding == "hybrid" and (a.hybrid_shard_size or 1) >= 1 and "WORLD_SIZE" in os.environ:
        # inside the job (not in the planner, before the launch): the world = the data-parallel size (no tp or pp)
        world = int(os.environ["WORLD_SIZE"] or 1)
        size = a.hybrid_shard_size or int(os.environ.get("LOCAL_WORLD_SIZE", world) or world)
        if world % size:
            out.append(f"engine.accelerate.hybrid_shard_size={size} must divide the {world} processes (it is the "
                       "number of ranks sharing one copy of the model)")
    return out


def _data_problems(d: DictConfig) -> list[str]:
    from pretrain.core.errors import DataError
    from pretrain.data.dataset import check_weights, parse_split

    out = []
    try:
        parse_split(d.split)
    except DataError as e:
        out.append(str(e))
    for name, w in (d.weights or {}).items():
        if w is None or not math.isfinite(float(w)) or float(w) < 0:
            out.append(f"data.weights.{name}={w} must be a finite number >= 0")
    valid_path = getattr(d, "valid_path", None)
    if valid_path is not None:
        folder = Path(str(valid_path)).expanduser()
        if not (folder / "manifest.json").is_file():
            out.append(f"data.valid_path={valid_path}: no manifest.json in {folder.absolute()}; point it at a folder "
                       f"written by the data pipeline (its corpora become the validation set)")
    from pretrain.data.schedule import schedule_problems

    out += schedule_problems(d)
    if d.path is not None:
        folder = Path(str(d.path)).expanduser()
        if not folder.exists():
            out.append(f"data.path={d.path}: no such folder ({folder.absolute()}); point it at a folder written by "
                       f"the data pipeline (python -m data_pipelines.run output_dir=...), or set data=sample")
        elif not folder.is_dir():
            out.append(f"data.path={d.path} is a file, not a folder holding manifest.json and token shards")
        elif not out:
            from pretrain.core.manifest import read_manifest

            try:  # the manifest (a small JSON file) and the weights' corpus names, before any shard is opened
                check_weights(d.weights, read_manifest(folder))
            except DataError as e:
                out.append(str(e))
    return out


def validate_values(cfg: DictConfig) -> None:
    """Raise one :class:`ConfigError` listing every bad value of ``cfg``, each with its key."""
    problems = value_problems(cfg)
    if problems:
        raise ConfigError("invalid config: " + "; ".join(problems))


def fit_schedule_to_run(cfg: DictConfig) -> str | None:
    """Shorten a warm-up that is longer than the run when the schedule length is the default.

    With ``optim.sched.decay_steps`` null the schedule lasts ``trainer.max_steps``; a recipe's warm-up (gpt_tiny:
    5 steps) then makes every shorter run invalid. Such a run warms up over all its steps instead (the warm-up
    is set to ``trainer.max_steps`` in ``cfg``, so the saved config shows what ran). An explicit
    ``decay_steps`` is never changed, and neither is any schedule that is valid as it is: their LR curves stay
    bit for bit the same. Returns a line to log, or None when nothing changed."""
    s, max_steps = cfg.optim.sched, cfg.trainer.max_steps
    if s.decay_steps is not None or not isinstance(max_steps, int) or max_steps < 1 or s.warmup_steps <= max_steps:
        return None
    old = s.warmup_steps
    s.warmup_steps = max_steps
    return (f"optim.sched.warmup_steps={old} is longer than this run (trainer.max_steps={max_steps}): warming up "
            f"over its {max_steps} steps (set optim.sched.decay_steps to keep the recipe's curve)")


# --------------------------------------------------------------------------------------------- reporting


def report_user_error(e: UserError, rank: int | None = None) -> int:
    """Print a user error once and return the exit code (2).

    Under torchrun every rank runs the same checks on the same config, so a :class:`ConfigError` is printed by
    rank 0 only; other errors (a file one node cannot read) by every rank, prefixed with it. Torchrun itself
    still ends with its ChildFailedError summary (it raises in the launcher process, out of our reach); the
    message is also written to torchrun's per-rank error file, so that summary shows it instead of "To enable
    traceback see ...". Only validating before the launch (e.g. in ``pretrain.launch``) avoids it entirely."""
    if rank is None:
        rank = int(os.environ.get("RANK", "0") or 0)
    multi = int(os.environ.get("WORLD_SIZE", "1") or 1) > 1
    line = f"error: {e}"
    if rank == 0 or not isinstance(e, ConfigError):
        print(line if rank == 0 or not multi else f"error: rank {rank}: {e}", file=sys.stderr, flush=True)
    err_file = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if err_file:
        try:
            with open(err_file, "w") as f:
                json.dump({"message": f"{type(e).__name__}: {e}", "timestamp": int(time.time())}, f)
        except OSError:
            pass
    return 2
