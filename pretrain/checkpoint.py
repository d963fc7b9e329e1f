"""Checkpoints: DeepSpeed's model/optimizer/scheduler shards plus our trainer state, crash-safe and verified.

Layout of ``<checkpoint.dir>``::

    latest                     -> "step_000020" (same format as DeepSpeed's, so its tools work)
    last_good                  -> "step_000010" while the guard protects it from rotation (pretrain.guard)
    step_000020/
        mp_rank_00_model_states.pt, *_optim_states.pt ...   (DeepSpeed)
        trainer_state.json     step, consumed samples, W&B run id, model shape, world size
        rng_state_rank{r}.pt   Python/NumPy/torch RNG states of every rank, as tensors and plain types
        universal/             layout-free weights and Adam moments (pretrain.parallel.reshard)
        files.json             every file above with its size and xxh3-64 checksum (pretrain.checkpoint_files)
        COMPLETE               written last

A save checks the free space against the last checkpoint's size, writes everything, agrees with every rank
that every write succeeded, then rank 0 writes ``files.json``, ``COMPLETE`` and only then moves ``latest``
(write to a temp file, fsync, rename) and prunes old checkpoints. A crash at any point leaves ``latest`` on
the previous complete checkpoint; resume ignores tag folders without ``COMPLETE`` and removes them. A failed
write (full disk) removes the partial folder and stops the run with one line naming the path.

Resume verifies the chosen checkpoint against its file list first and falls back to the newest intact one
when a file is missing, truncated or changed (:func:`choose_resume`). Nothing is ever unpickled with
``weights_only=False``: our files hold tensors and plain types, DeepSpeed's are loaded with an allow-list of
its few classes (:mod:`pretrain.core.safe_load`).
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from pretrain import checkpoint_files as files
from pretrain.core import safe_load
from pretrain.core.atomic import atomic_write
from pretrain.core.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

LATEST = "latest"
# Names the checkpoint the guard protects while a loss spike is open (pretrain.guard): rotation keeps it whatever
# keep_last says, so the run (or a person) can roll back to it. Absent when no spike is open.
LAST_GOOD = "last_good"
COMPLETE = "COMPLETE"
STATE = "trainer_state.json"
_TAG = re.compile(r"^step_(\d+)$")
RNG_FORMAT = 2  # rng_state_rank*.pt as tensors and plain types (older files, tuples and NumPy arrays, still load)
# Test hooks: seconds to sleep at one point of a save, so a test can kill -9 the process there. Points
# (PRETRAIN_TEST_SLOW_SAVE_AT, comma-separated): start (before any file), shards (the default: every rank's
# files written, no file list yet), files (file list written, no COMPLETE), complete (COMPLETE written,
# latest not moved), latest (latest moved, old checkpoints not pruned).
_SLOW_SAVE_ENV = "PRETRAIN_TEST_SLOW_SAVE_S"
_SLOW_SAVE_AT_ENV = "PRETRAIN_TEST_SLOW_SAVE_AT"


def tag_for(step: int) -> str:
    return f"step_{step:06d}"


def _step_of(tag: str) -> int:
    m = _TAG.match(tag)
    return int(m.group(1)) if m else -1


def complete_tags(ckpt_dir: Path) -> list[str]:
    """Complete checkpoint tags, oldest first."""
    if not ckpt_dir.is_dir():
        return []
    tags = [p.name for p in ckpt_dir.iterdir() if p.is_dir() and _TAG.match(p.name) and (p / COMPLETE).exists()]
    return sorted(tags, key=_step_of)


def read_latest(ckpt_dir: Path) -> tuple[str | None, str | None]:
    """(the complete tag ``latest`` names or None, why it names none usable or None). ``latest`` may hold
    anything after a crash or a mistake: binary bytes, a folder, a tag that is not there or not complete."""
    pointer = ckpt_dir / LATEST
    try:
        raw = pointer.read_bytes()
    except FileNotFoundError:
        return None, None
    except OSError as e:
        return None, f"{pointer} is unreadable ({e.strerror})"
    tag = raw.decode("utf-8", errors="replace").strip()
    if not tag or not tag.isprintable() or "/" in tag or tag in (".", "..") or len(tag) > 200:
        return None, f"{pointer} holds {raw[:40]!r}, not a checkpoint tag"
    if not (ckpt_dir / tag / COMPLETE).exists():
        return None, f"{pointer} points at {tag}, which is not a complete checkpoint"
    return tag, None


@dataclass
class ResumeChoice:
    """Where a run resumes from, and what was passed over to get there."""

    ckpt_dir: Path
    tag: str | None
    damaged: list[tuple[str, str]] = field(default_factory=list)  # (tag, the file and what is wrong with it)
    steps_lost: int = 0  # steps between the newest damaged checkpoint and the one chosen


def choose_resume(mode: str, ckpt_dir: Path, verify: str = "checksum") -> ResumeChoice:
    """The checkpoint to resume from per ``checkpoint.resume``, verified against its file list first.

    ``auto``: ``latest`` if it names a complete checkpoint, else the newest complete one; a damaged one is
    passed over with a warning naming the file, for the next older intact one, and the steps lost are logged.
    Every complete checkpoint damaged: CheckpointError (starting over silently would throw the run away).
    ``never``: no checkpoint (refused if the folder has some). A path: that checkpoint, or a CheckpointError
    naming the damaged file. A checkpoint holding pickled code is refused in every mode."""
    if mode == "never":
        if complete_tags(ckpt_dir):
            raise ConfigError(
                f"checkpoint.resume=never but {ckpt_dir} already holds checkpoints; use a new run_dir "
                "or checkpoint.resume=auto"
            )
        return ResumeChoice(ckpt_dir, None)
    if mode != "auto":
        path = Path(mode)
        if not (path / COMPLETE).exists():
            raise ConfigError(f"checkpoint.resume={mode}: not a complete checkpoint folder (no {COMPLETE} file in it)")
        problem = files.verify(path, verify)
        if problem:
            raise CheckpointError(f"checkpoint.resume={mode}: the checkpoint is damaged: {problem}")
        return ResumeChoice(path.parent, path.name)

    pointed, why = read_latest(ckpt_dir)
    if why:
        log.warning("%s; looking for the newest complete checkpoint instead", why)
    candidates = ([pointed] if pointed else []) + [t for t in reversed(complete_tags(ckpt_dir)) if t != pointed]
    choice = ResumeChoice(ckpt_dir, None)
    for tag in candidates:
        problem = files.verify(ckpt_dir / tag, verify)
        if problem is None:
            choice.tag = tag
            break
        choice.damaged.append((tag, problem))
        log.warning("checkpoint %s is damaged: %s; trying an older one", ckpt_dir / tag, problem)
    if choice.damaged:
        if choice.tag is None:
            raise CheckpointError(
                f"every checkpoint in {ckpt_dir} is damaged: " + "; ".join(f"{t}: {p}" for t, p in choice.damaged)
                + ". Restore the files, or start over with a new run_dir"
            )
        newest = max(_step_of(t) for t, _ in choice.damaged)
        choice.steps_lost = max(0, newest - _step_of(choice.tag))
        log.warning("falling back to the intact checkpoint %s: %d steps lost (the newest complete checkpoint, "
                    "step %d, is damaged)", ckpt_dir / choice.tag, choice.steps_lost, newest)
    return choice


def find_resume_tag(ckpt_dir: Path) -> str | None:
    """The checkpoint to resume from: ``latest`` if it is complete and intact, else the newest intact one."""
    return choose_resume("auto", ckpt_dir).tag


def resolve_resume(mode: str, ckpt_dir: Path, verify: str = "checksum") -> tuple[Path, str | None]:
    """(checkpoint folder, tag to resume from or None) per ``checkpoint.resume`` (see :func:`choose_resume`)."""
    choice = choose_resume(mode, ckpt_dir, verify)
    return choice.ckpt_dir, choice.tag


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
    # a field that shape_of leaves out at its default (the MoE ones) counts as that default where a checkpoint
    # of before it lacks it, and counts again when the checkpoint has it and the config is back at the default
    dense = {f.name: f.default for f in fields(args) if f.metadata.get("dense_default")}
    shape = shape_of(args)
    shape.update({k: getattr(args, k) for k in dense if k in saved and k not in shape})
    diffs = [f"model.{k}: checkpoint {saved.get(k, dense.get(k))!r}, config {v!r}" for k, v in shape.items()
             if saved.get(k, dense.get(k)) != v]
    if diffs:
        raise CheckpointError(
            f"the checkpoint {tag_dir} was saved for a different model shape ({'; '.join(diffs)}). "
            "Use a new run_dir, set checkpoint.resume=never with an empty checkpoint.dir, or match the model config"
        )


def check_layout(tag_dir: Path, state: dict[str, Any], world_size: int, zero_stage: int,
                 tensor_parallel_size: int = 1, pipeline_parallel_size: int = 1, engine: str = "deepspeed",
                 expert_parallel_size: int = 1) -> bool:
    """True if DeepSpeed can load the checkpoint's own files into this layout; False if the layout changed
    and the run resumes through the checkpoint's layout-free copy (:mod:`pretrain.parallel.reshard`). Without
    that copy, a changed layout is refused here, before anything is built, instead of failing deep inside
    ``load_checkpoint`` (DeepSpeed re-partitions neither ZeRO shards nor tensor/pipeline shards)."""
    from pretrain.parallel import reshard

    saved_tp, saved_pp = state.get("tensor_parallel_size", 1), state.get("pipeline_parallel_size", 1)
    saved_world, saved_stage = state.get("world_size"), state.get("zero_stage")
    problems = []
    saved_engine = state.get("engine", "deepspeed")  # checkpoints of before the accelerate engine: DeepSpeed's
    if saved_engine != engine:
        problems.append(f"it was written by engine={saved_engine}, this run uses engine={engine}; resume with "
                        f"engine={saved_engine}")
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
    # expert slices on either side: the engine reads the layout-free copy whatever the layout (DeepSpeed's own
    # files hold rank 0's experts only), so without one the resume cannot work
    saved_ep = state.get("expert_parallel_size", 1)  # older ones: their expert runs always wrote the copy
    if engine == "deepspeed" and max(saved_ep, expert_parallel_size) > 1 and not reshard.exists(tag_dir):
        raise CheckpointError(
            f"the checkpoint {tag_dir} cannot be resumed with expert parallelism (saved at "
            f"parallel.expert_model_parallel_size={saved_ep}, this run {expert_parallel_size}): experts are resumed "
            f"from the layout-free copy {reshard.UNIVERSAL}/, which this checkpoint lacks"
        )
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


def plain_rng_state(state: dict[str, Any]) -> dict[str, Any]:
    """:func:`rng_state` as tensors and plain types only, so that it loads with ``weights_only=True``."""
    version, internal, gauss_next = state["python"]
    kind, keys, pos, has_gauss, cached = state["numpy"]
    out = {
        "format": RNG_FORMAT,
        "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss_next": gauss_next},
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": state["torch"],
    }
    if "cuda" in state:
        out["cuda"] = state["cuda"]
    return out


def _rng_from_file(saved: dict[str, Any]) -> dict[str, Any]:
    """The :func:`rng_state` a file holds (either format: tensors, or the tuples and arrays of older files)."""
    if saved.get("format") != RNG_FORMAT:
        return saved
    py, npy = saved["python"], saved["numpy"]
    state = {
        "python": (py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss_next"]),
        "numpy": (npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                  npy["cached_gaussian"]),
        "torch": saved["torch"],
    }
    if "cuda" in saved:
        state["cuda"] = saved["cuda"]
    return state


def load_rng_state(path: Path) -> dict[str, Any]:
    """One rank's RNG states, loaded with ``weights_only=True`` (NumPy's array types allowed for older files)."""
    saved = safe_load.load(path, allowed=files.resolve_globals(files.LEGACY_RNG_GLOBALS))
    try:
        return _rng_from_file(saved)
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        raise CheckpointError(f"{path} does not hold RNG states ({type(e).__name__}: {e})") from None


# ------------------------------------------------------------------------------------------ save
def _gather(obj: Any) -> list[Any]:
    """``obj`` of every rank, by rank (one collective; a list of one outside a process group)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return [obj]
    out: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def _from_rank0(obj: Any) -> Any:
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def _test_pause(point: str) -> None:
    """Test hook: sleep PRETRAIN_TEST_SLOW_SAVE_S seconds at ``point`` if it is one of PRETRAIN_TEST_SLOW_SAVE_AT."""
    delay = float(os.environ.get(_SLOW_SAVE_ENV, "0") or 0)
    if delay and point in os.environ.get(_SLOW_SAVE_AT_ENV, "shards").split(","):
        print(f"[test hook] checkpoint save paused at {point}", file=sys.stderr, flush=True)
        time.sleep(delay)


def _previous(ckpt_dir: Path, tag: str) -> str | None:
    """The checkpoint in force before this save: what ``latest`` names, else the newest complete one."""
    pointed, _ = read_latest(ckpt_dir)
    if pointed and pointed != tag:
        return pointed
    older = [t for t in complete_tags(ckpt_dir) if t != tag]
    return older[-1] if older else None


def _not_saved(tag_dir: Path, problem: str, previous: str | None) -> CheckpointError:
    keep = f"{previous} stays the checkpoint to resume from" if previous else "there is no earlier checkpoint"
    return CheckpointError(f"{problem}. Checkpoint {tag_dir.name} was not saved (its partial folder is removed); "
                           f"{keep}")


def save(engine, ckpt_dir: Path, step: int, state: dict[str, Any], rank: int, keep_last: int,
         write_extra: Callable[[Path], None] | None = None) -> Path:
    """Collective: every rank calls it. ``write_extra(tag_dir)`` (collective too) adds files before the
    checkpoint is marked complete (the layout-free copy). Returns the tag folder.

    A write that fails on any rank (a full disk, a permission error) raises one CheckpointError on every rank,
    naming the path; the partial folder is removed, ``latest`` and the older checkpoints stay as they were."""
    tag = tag_for(step)
    tag_dir = ckpt_dir / tag
    if rank == 0 and tag_dir.exists():
        shutil.rmtree(tag_dir)  # a leftover of an interrupted save of the same step
    previous = _previous(ckpt_dir, tag)
    expected = files.checkpoint_bytes(ckpt_dir / previous) if previous else 0
    short = [p for p in _gather(files.free_space_problem(ckpt_dir, tag_dir, expected) if expected else None) if p]
    if short:  # every rank saw it (the gather above), every rank stops before writing anything
        raise _not_saved(tag_dir, short[0], previous)
    _test_pause("start")

    guard = files.SaveGuard(tag_dir, expected)
    with guard.capture(engine):
        written = engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state={"trainer_state": state}, save_latest=False)
        for path in written if isinstance(written, list) else ():  # files an engine wrote without torch.save (DCP)
            guard.record(path)
    with guard.capture():
        tag_dir.mkdir(parents=True, exist_ok=True)  # DeepSpeed only creates it on ranks that write shards
        torch.save(plain_rng_state(rng_state()), tag_dir / f"rng_state_rank{rank}.pt")
    if write_extra is not None:
        with guard.capture():
            write_extra(tag_dir)
    if rank == 0:
        guard.write_text(tag_dir / STATE, json.dumps(state, indent=2, default=str))
    reports = _gather((guard.entries(), guard.error))  # also the barrier: every rank's files are written
    errors = [f"{err} (rank {r})" if len(reports) > 1 else err for r, (_, err) in enumerate(reports) if err]
    if errors:
        if rank == 0:
            shutil.rmtree(tag_dir, ignore_errors=True)
        raise _not_saved(tag_dir, errors[0], previous)
    _test_pause("shards")

    failure = None
    if rank == 0:
        try:
            files.write_file_list(tag_dir, {rel: e for entries, _ in reports for rel, e in entries.items()})
            _test_pause("files")
            atomic_write(tag_dir / COMPLETE, f"{time.time()}\n")
            _test_pause("complete")
            atomic_write(ckpt_dir / LATEST, tag)
        except OSError as e:
            failure = files.write_error(e, e.filename or tag_dir, max(expected, guard.bytes_written), guard.free_before)
            shutil.rmtree(tag_dir, ignore_errors=True)  # latest, written atomically, still names `previous`
        else:
            _test_pause("latest")
            _prune(ckpt_dir, keep_last, current=tag)
    failure = _from_rank0(failure)
    if failure:
        raise _not_saved(tag_dir, failure, previous)
    return tag_dir


def protected_tag(ckpt_dir: Path) -> str | None:
    """The tag ``last_good`` names (the guard's protected checkpoint), or None."""
    try:
        tag = (ckpt_dir / LAST_GOOD).read_text().strip()
    except OSError:
        return None
    return tag if _TAG.match(tag) else None


def set_protected(ckpt_dir: Path, tag: str | None) -> None:
    """Rank 0: protect ``tag`` from rotation (write ``last_good``), or lift the protection (None)."""
    if tag is None:
        (ckpt_dir / LAST_GOOD).unlink(missing_ok=True)
    else:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(ckpt_dir / LAST_GOOD, tag)


def set_latest(ckpt_dir: Path, tag: str) -> None:
    """Rank 0: point ``latest`` at the complete checkpoint ``tag`` (after an in-process rollback to it, so that a
    restart resumes there and not at a checkpoint of the abandoned steps)."""
    atomic_write(ckpt_dir / LATEST, tag)


def _prune(ckpt_dir: Path, keep_last: int, current: str) -> None:
    """Keep the ``keep_last`` newest complete checkpoints up to ``current``, which has just been made complete,
    and the protected one (``last_good``) whatever its age. Checkpoints of later steps are left alone: they are
    of a run this one fell back from (damaged, resumed from an older checkpoint on purpose, or rolled back by
    the guard), and the save of their step replaces them."""
    tags = [t for t in complete_tags(ckpt_dir) if _step_of(t) <= _step_of(current)]
    keep = {current, protected_tag(ckpt_dir)}
    for old in tags[: max(0, len(tags) - keep_last)]:
        if old not in keep:
            shutil.rmtree(ckpt_dir / old, ignore_errors=True)
    for p in ckpt_dir.iterdir():  # half-written folders of crashed saves
        if p.is_dir() and _TAG.match(p.name) and not (p / COMPLETE).exists() and p.name != current:
            shutil.rmtree(p, ignore_errors=True)


# ------------------------------------------------------------------------------------------ load
def load(engine, ckpt_dir: Path, tag: str, rank: int, world_size: int) -> tuple[dict[str, Any], dict | None]:
    """Collective: restore model, optimizer, LR schedule and loss scaler (DeepSpeed). Returns the trainer
    state and this rank's RNG states, which the caller applies with :func:`set_rng_state` as the very last
    thing before the first step (anything drawing random numbers in between would shift the stream).

    DeepSpeed's loader unpickles with ``weights_only=False``; here it runs with ``weights_only=True`` forced
    and an allow-list of the few DeepSpeed classes its files hold, so a crafted file is refused, named."""
    try:
        with safe_load.weights_only_loads(files.deepspeed_safe_globals()):
            load_path, client = engine.load_checkpoint(
                str(ckpt_dir), tag=tag, load_optimizer_states=True, load_lr_scheduler_states=True
            )
    except AssertionError as e:
        detail = str(e) or "an assertion failed"
        raise CheckpointError(f"DeepSpeed could not load the checkpoint {ckpt_dir / tag} ({detail}): a file is "
                              "missing or was written at another layout") from None
    if load_path is None:
        raise CheckpointError(f"DeepSpeed could not load the checkpoint {ckpt_dir / tag}")
    state = read_state(ckpt_dir / tag)
    rng_file = ckpt_dir / tag / f"rng_state_rank{rank}.pt"
    if state.get("world_size") == world_size and rng_file.exists():
        return state, load_rng_state(rng_file)
    log.warning(
        "checkpoint %s was saved with world size %s (now %s): RNG streams restart from the seed",
        tag, state.get("world_size"), world_size,
    )
    return state, None
