"""Checkpoints: DeepSpeed's model/optimizer/scheduler shards plus our trainer state, crash-safe.

Layout of ``<checkpoint.dir>``::

    latest                     -> "step_000020" (same format as DeepSpeed's, so its tools work)
    step_000020/
        mp_rank_00_model_states.pt, *_optim_states.pt ...   (DeepSpeed)
        trainer_state.json     step, consumed samples, W&B run id, model shape, world size
        rng_state_rank{r}.pt   Python/NumPy/torch RNG states of every rank
        universal/             layout-free weights and Adam moments (pretrain.parallel.reshard)
        COMPLETE               written last

A save writes everything, waits for all ranks, then rank 0 writes ``COMPLETE`` and only then moves
``latest`` (write to a temp file, fsync, rename). A crash at any point leaves ``latest`` on the previous
complete checkpoint; resume ignores tag folders without ``COMPLETE`` and removes them.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from pretrain.distributed import barrier
from pretrain.core.atomic import atomic_write
from pretrain.core.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

LATEST = "latest"
COMPLETE = "COMPLETE"
STATE = "trainer_state.json"
_TAG = re.compile(r"^step_(\d+)$")
# Test hook: seconds to sleep after the shards are written and before COMPLETE, so a test can kill -9 a
# process in the middle of a save.
_SLOW_SAVE_ENV = "PRETRAIN_TEST_SLOW_SAVE_S"


def tag_for(step: int) -> str:
    return f"step_{step:06d}"


def complete_tags(ckpt_dir: Path) -> list[str]:
    """Complete checkpoint tags, oldest first."""
    if not ckpt_dir.is_dir():
        return []
    tags = [p.name for p in ckpt_dir.iterdir() if p.is_dir() and _TAG.match(p.name) and (p / COMPLETE).exists()]
    return sorted(tags, key=lambda t: int(_TAG.match(t).group(1)))


def find_resume_tag(ckpt_dir: Path) -> str | None:
    """The checkpoint to resume from: ``latest`` if it is complete, else the newest complete tag."""
    pointer = ckpt_dir / LATEST
    if pointer.is_file():
        tag = pointer.read_text().strip()
        if (ckpt_dir / tag / COMPLETE).exists():
            return tag
        log.warning("%s points at %s, which is not a complete checkpoint; looking for an older one", pointer, tag)
    tags = complete_tags(ckpt_dir)
    return tags[-1] if tags else None


def resolve_resume(mode: str, ckpt_dir: Path) -> tuple[Path, str | None]:
    """(checkpoint folder, tag to resume from or None) per ``checkpoint.resume``."""
    if mode == "auto":
        return ckpt_dir, find_resume_tag(ckpt_dir)
    if mode == "never":
        if complete_tags(ckpt_dir):
            raise ConfigError(
                f"checkpoint.resume=never but {ckpt_dir} already holds checkpoints; use a new run_dir "
                "or checkpoint.resume=auto"
            )
        return ckpt_dir, None
    path = Path(mode)
    if not (path / COMPLETE).exists():
        raise ConfigError(f"checkpoint.resume={mode}: not a complete checkpoint folder (no {COMPLETE} file in it)")
    return path.parent, path.name


def read_state(tag_dir: Path) -> dict[str, Any]:
    path = tag_dir / STATE
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {path}: {e}") from None


def check_model_shape(tag_dir: Path, state: dict[str, Any], args: Any, family: str) -> None:
    """Refuse to resume a checkpoint of another model family or shape, naming every key that differs."""
    from pretrain.models import shape_of

    saved_family = state.get("family", "gpt")
    if saved_family != family:
        raise CheckpointError(
            f"the checkpoint {tag_dir} holds a {saved_family} model, the config asks for model.family={family}; "
            "use a new run_dir"
        )
    saved = state.get("model_args", {})
    diffs = [f"model.{k}: checkpoint {saved.get(k)!r}, config {v!r}" for k, v in shape_of(args).items() if saved.get(k) != v]
    if diffs:
        raise CheckpointError(
            f"the checkpoint {tag_dir} was saved for a different model shape ({'; '.join(diffs)}). "
            "Use a new run_dir, set checkpoint.resume=never with an empty checkpoint.dir, or match the model config"
        )


def check_layout(tag_dir: Path, state: dict[str, Any], world_size: int, zero_stage: int,
                 tensor_parallel_size: int = 1, pipeline_parallel_size: int = 1) -> bool:
    """True if DeepSpeed can load the checkpoint's own files into this layout; False if the layout changed
    and the run resumes through the checkpoint's layout-free copy (:mod:`pretrain.parallel.reshard`). Without
    that copy, a changed layout is refused here, before anything is built, instead of failing deep inside
    ``load_checkpoint`` (DeepSpeed re-partitions neither ZeRO shards nor tensor/pipeline shards)."""
    from pretrain.parallel import reshard

    saved_tp, saved_pp = state.get("tensor_parallel_size", 1), state.get("pipeline_parallel_size", 1)
    saved_world, saved_stage = state.get("world_size"), state.get("zero_stage")
    problems = []
    if saved_tp != tensor_parallel_size:
        problems.append(f"it holds tensor-parallel shards for parallel.tensor_model_parallel_size={saved_tp}, this "
                        f"run asks for {tensor_parallel_size}; resume with {saved_tp}")
    if saved_pp != pipeline_parallel_size:
        problems.append(f"it holds pipeline stages for parallel.pipeline_model_parallel_size={saved_pp}, this run "
                        f"asks for {pipeline_parallel_size}; resume with {saved_pp}")
    if saved_stage and saved_world != world_size:
        problems.append(f"it holds ZeRO-{saved_stage} optimizer shards for {saved_world} processes, this run has "
                        f"{world_size}; resume with {saved_world} processes")
    if saved_stage is not None and saved_stage != zero_stage:
        problems.append(f"it was saved with ZeRO stage {saved_stage}, this run would use stage {zero_stage}; "
                        f"resume with parallel.zero_stage={saved_stage} and {saved_world} processes")
    if not problems:
        return True
    if reshard.exists(tag_dir):
        log.info("checkpoint %s was saved at another layout (%s): resuming through its layout-free copy",
                 tag_dir, "; ".join(p.split(";")[0] for p in problems))
        return False
    raise CheckpointError(
        f"the checkpoint {tag_dir} cannot be resumed at this layout: " + "; ".join(problems)
        + f" (it has no layout-free copy {reshard.UNIVERSAL}/, which checkpoint.universal=true writes)"
    )


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save(engine, ckpt_dir: Path, step: int, state: dict[str, Any], rank: int, keep_last: int,
         write_extra: Callable[[Path], None] | None = None) -> Path:
    """Collective: every rank calls it. ``write_extra(tag_dir)`` (collective too) adds files before the
    checkpoint is marked complete (the layout-free copy). Returns the tag folder."""
    tag = tag_for(step)
    tag_dir = ckpt_dir / tag
    if rank == 0 and tag_dir.exists():
        shutil.rmtree(tag_dir)  # a leftover of an interrupted save of the same step
    barrier()
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state={"trainer_state": state}, save_latest=False)
    tag_dir.mkdir(parents=True, exist_ok=True)  # DeepSpeed only creates it on ranks that write shards
    torch.save(rng_state(), tag_dir / f"rng_state_rank{rank}.pt")
    if write_extra is not None:
        write_extra(tag_dir)
    if rank == 0:
        atomic_write(tag_dir / STATE, json.dumps(state, indent=2, default=str))
    delay = float(os.environ.get(_SLOW_SAVE_ENV, "0") or 0)
    if delay:
        time.sleep(delay)
    barrier()
    if rank == 0:
        atomic_write(tag_dir / COMPLETE, f"{time.time()}\n")
        atomic_write(ckpt_dir / LATEST, tag)
        _prune(ckpt_dir, keep_last, current=tag)
    barrier()
    return tag_dir


def _prune(ckpt_dir: Path, keep_last: int, current: str) -> None:
    tags = complete_tags(ckpt_dir)
    for old in tags[: max(0, len(tags) - keep_last)]:
        if old != current:
            shutil.rmtree(ckpt_dir / old, ignore_errors=True)
    for p in ckpt_dir.iterdir():  # half-written folders of crashed saves
        if p.is_dir() and _TAG.match(p.name) and not (p / COMPLETE).exists() and p.name != current:
            shutil.rmtree(p, ignore_errors=True)


def load(engine, ckpt_dir: Path, tag: str, rank: int, world_size: int) -> tuple[dict[str, Any], dict | None]:
    """Collective: restore model, optimizer, LR schedule and loss scaler (DeepSpeed). Returns the trainer
    state and this rank's RNG states, which the caller applies with :func:`set_rng_state` as the very last
    thing before the first step (anything drawing random numbers in between would shift the stream)."""
    load_path, client = engine.load_checkpoint(
        str(ckpt_dir), tag=tag, load_optimizer_states=True, load_lr_scheduler_states=True
    )
    if load_path is None:
        raise CheckpointError(f"DeepSpeed could not load the checkpoint {ckpt_dir / tag}")
    state = read_state(ckpt_dir / tag)
    rng_file = ckpt_dir / tag / f"rng_state_rank{rank}.pt"
    if state.get("world_size") == world_size and rng_file.exists():
        return state, torch.load(rng_file, weights_only=False)
    log.warning(
        "checkpoint %s was saved with world size %s (now %s): RNG streams restart from the seed",
        tag, state.get("world_size"), world_size,
    )
    return state, None
