"""The layout-free copy of a checkpoint: resume at another tp x pp x dp layout or ZeRO stage, and export from
tensor- and pipeline-parallel checkpoints.

DeepSpeed's own checkpoint files are tied to the layout that wrote them (``mp_rank_XX`` model files,
``layer_XX-model_YY`` pipeline files, ZeRO optimizer partitions per data-parallel rank). Next to them each
save writes ``universal/pp{P}_tp{T}.pt``, one file per (pipeline stage, tensor rank), written by that
coordinate's data-parallel rank 0: for every parameter the stage holds, under its name in the unsharded model,

* ``fp32``: the fp32 master weight of this tensor rank's shard (ZeRO partitions gathered),
* ``exp_avg``, ``exp_avg_sq``: the Adam moments of that shard,
* ``partition_dim``: the dimension it is split along over the tensor ranks (None: replicated),

plus the optimizer step and the LR scheduler state. An expert-parallel slice of a mixture of experts (the rows
``[first, first + E/ep)`` of a stacked ``[E, ...]`` expert tensor, :mod:`pretrain.parallel.expert`) is gathered
over its expert-parallel group first, so the file holds every expert by GLOBAL index, as at ep 1 (``ep``
records the size it was saved at), and loading keeps the new layout's rows of it. Loading concatenates the
shards of every tensor rank along ``partition_dim``, slices what the new layout's rank holds and writes it into
the new engine's fp32 master weights, its Adam moments and its model weights, through DeepSpeed's tensor-fragment API
(``safe_{get,set}_full_{fp32_param,optimizer_state}``) for ZeRO 1-3 and the bf16 optimizer, and directly for
the plain optimizer of stage 0. The same idea as DeepSpeed's universal checkpoint (``ds_to_universal``),
written at save time because that converter covers neither ZeRO stage 0 nor models without Megatron-DeepSpeed's
parameter-slicing metadata.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from pretrain.core import safe_load
from pretrain.core.errors import CheckpointError
from pretrain.parallel.expert import expert_slice, gather_experts, local_experts
from pretrain.parallel.tensor import is_tensor_parallel, shard

log = logging.getLogger(__name__)

UNIVERSAL = "universal"
MOMENTS = ("exp_avg", "exp_avg_sq")


def _zero_managed(p: torch.Tensor) -> bool:
    """True if DeepSpeed's ZeRO or bf16 optimizer holds this parameter's fp32 master and moments. Under ZeRO-1/2
    a parameter wholly in another rank's partition has ``_hp_mapping = None`` here and still takes part in the
    gathers (DeepSpeed's tensor-fragment API all-reduces over the data-parallel group)."""
    return hasattr(p, "ds_id") or hasattr(p, "_hp_mapping")


def _base_optimizer(engine) -> torch.optim.Optimizer:
    opt = engine.optimizer
    return getattr(opt, "optimizer", opt)


def _optimizer_step(engine) -> float:
    for st in _base_optimizer(engine).state.values():
        if "step" in st:
            return float(st["step"])
    return 0.0


def _link_optimizer_state(engine) -> None:
    """Point ZeRO-1/2's and the bf16 optimizer's per-parameter views at the Adam state of every group.
    DeepSpeed links them once, after the first group's first step, when later groups (our no-weight-decay
    group) have no state yet, so their views stay empty; relinking when every group has state fixes that."""
    opt = engine.optimizer
    if hasattr(opt, "_lazy_init_hp_params_optimizer_state"):
        opt._hp_optimizer_states_linked = False
        opt._lazy_init_hp_params_optimizer_state()


def _full_state(engine, p: torch.Tensor) -> dict[str, torch.Tensor]:
    """fp32 weight and Adam moments of this tensor rank's whole ``p`` (collective over the data-parallel
    group under ZeRO: every rank calls it for the same parameters in the same order)."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    if _zero_managed(p):
        out = {"fp32": safe_get_full_fp32_param(p)}
        out.update({k: safe_get_full_optimizer_state(p, k) for k in MOMENTS})
    else:
        st = engine.optimizer.state.get(p, {})
        out = {"fp32": p.detach().float()}
        out.update({k: st[k].detach().float() if k in st else torch.zeros_like(out["fp32"]) for k in MOMENTS})
    return {k: v.detach().to("cpu", torch.float32).clone() for k, v in out.items()}


def save(engine, tag_dir: Path, names: dict[int, str], grid) -> None:
    """Collective: write ``tag_dir/universal/pp{P}_tp{T}.pt`` (see the module docstring)."""
    params: dict[str, dict[str, Any]] = {}
    _link_optimizer_state(engine)
    ep = 1
    for p in engine.module.parameters():
        if getattr(p, "ds_pipe_replicated", False):
            continue  # the last stage's copy of a tied embedding: the first stage saves it
        entry: dict[str, Any] = _full_state(engine, p)
        if expert_slice(p):  # every expert by global index (collective over the expert-parallel group)
            ep = expert_slice(p)[1]
            entry = {k: gather_experts(v, p).cpu() for k, v in entry.items()}
        entry["partition_dim"] = int(p.partition_dim) if is_tensor_parallel(p) else None
        params[names[id(p)]] = entry
    if grid.get_data_parallel_rank() != 0 or getattr(grid.coord, "cp", 0) != 0:  # one writer per (stage, tp rank)
        return
    out = tag_dir / UNIVERSAL
    out.mkdir(parents=True, exist_ok=True)
    scheduler = engine.lr_scheduler.state_dict() if engine.lr_scheduler is not None else None
    torch.save({"params": params, "tp": grid.tp, "pp": grid.pp, "tp_rank": grid.coord.tp, "pp_rank": grid.coord.pp,
                "ep": ep, "optimizer_step": _optimizer_step(engine), "scheduler": scheduler},
               out / f"pp{grid.coord.pp:02d}_tp{grid.coord.tp:02d}.pt")


def exists(tag_dir: Path) -> bool:
    return any((tag_dir / UNIVERSAL).glob("pp*_tp*.pt"))


def saved_expert_parallel_size(tag_dir: Path) -> int:
    """The expert-parallel size the layout-free copy was saved at (1: none, or saved before it was recorded, when
    every rank held every expert)."""
    files = sorted((tag_dir / UNIVERSAL).glob("pp*_tp*.pt"))
    return int(safe_load.load(files[0], map_location="cpu", mmap=True).get("ep", 1)) if files else 1


def _read(tag_dir: Path) -> list[dict[str, Any]]:
    files = sorted((tag_dir / UNIVERSAL).glob("pp*_tp*.pt"))
    if not files:
        raise CheckpointError(f"{tag_dir} has no layout-free copy ({UNIVERSAL}/pp*_tp*.pt); it was saved with "
                              "checkpoint.universal=false")
    shards = [safe_load.load(f, map_location="cpu", mmap=True) for f in files]  # tensors and plain types only
    tp, pp = shards[0]["tp"], shards[0]["pp"]
    if len(shards) != tp * pp:
        raise CheckpointError(f"{tag_dir / UNIVERSAL} holds {len(shards)} files, expected tp x pp = {tp} x {pp}: the "
                              "checkpoint is incomplete")
    return sorted(shards, key=lambda s: (s["pp_rank"], s["tp_rank"]))


def _gather(shards: list[dict[str, Any]], name: str, key: str) -> torch.Tensor:
    pieces = [s["params"][name] for s in shards if name in s["params"]]  # tensor ranks in order
    if not pieces:
        raise CheckpointError(f"the layout-free checkpoint has no parameter {name!r}")
    dim = pieces[0]["partition_dim"]
    if dim is None:
        return pieces[0][key]
    return torch.cat([piece[key] for piece in pieces], dim=dim)


def full_state_dict(tag_dir: Path) -> dict[str, torch.Tensor]:
    """The unsharded model's fp32 weights by name (tied parameters under their first name), for export."""
    shards = _read(tag_dir)
    names = dict.fromkeys(n for s in shards for n in s["params"])
    return {n: _gather(shards, n, "fp32") for n in names}


def _ensure_optimizer_state(engine) -> None:
    """Adam's moments exist only after a first step; create them (zeros, step 0, what the first step would
    start from) so there is somewhere to write, and let ZeRO re-link its per-parameter views into them."""
    base = _base_optimizer(engine)
    # ZeRO-3 puts its flat fp32 partitions into the optimizer's groups only around each step
    flats = [q for group in base.param_groups for q in group["params"]]
    flats += list(getattr(engine.optimizer, "fp32_partitioned_groups_flat", []))
    for q in flats:
        if not base.state.get(q):
            base.state[q] = {"step": torch.zeros((), dtype=torch.float32),
                             **{k: torch.zeros_like(q, memory_format=torch.preserve_format) for k in MOMENTS}}
    _link_optimizer_state(engine)


def _fit_groups(sched: dict[str, Any], n: int, tag_dir: Path) -> dict[str, Any]:
    """The LR schedule's state for ``n`` optimizer groups. Expert parallelism splits the expert slices into groups
    of their own (DeepSpeed's MoE groups), so a run resumed at another expert-parallel size has another number of
    groups; every group follows the same schedule, so its per-group lists hold one value, taken over."""
    out = dict(sched)
    for key, value in sched.items():
        if isinstance(value, list) and len(value) != n:
            if len({repr(v) for v in value}) > 1:
                raise CheckpointError(f"{tag_dir / UNIVERSAL}: the LR schedule's {key} differs between its "
                                      f"{len(value)} parameter groups, which cannot be mapped onto {n}")
            out[key] = value[:1] * n
    return out


@torch.no_grad()
def load(engine, tag_dir: Path, names: dict[int, str], grid) -> None:
    """Collective: set the freshly built ``engine`` (any layout, any ZeRO stage) to the saved weights, Adam
    moments, optimizer step and LR schedule."""
    from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

    shards = _read(tag_dir)
    tp_group = grid.get_tensor_model_parallel_group()
    step = shards[0]["optimizer_step"]
    opt = engine.optimizer
    _ensure_optimizer_state(engine)
    for p in engine.module.parameters():
        name = names[id(p)]
        full = {k: _gather(shards, name, k) for k in ("fp32", *MOMENTS)}
        if expert_slice(p):  # this rank's experts of the whole [E, ...] tensor
            full = {k: local_experts(v, p) for k, v in full.items()}
        local = {k: shard(v, p.partition_dim, tp_group) if is_tensor_parallel(p) else v for k, v in full.items()}
        if _zero_managed(p):
            safe_set_full_fp32_param(p, local["fp32"].to(p.device))
            for k in MOMENTS:
                safe_set_full_optimizer_state(p, local[k].to(p.device), k)
            if hasattr(p, "ds_id"):  # ZeRO-3: the working copy is partitioned too; gather, set, re-partition
                import deepspeed

                with deepspeed.zero.GatheredParameters([p], modifier_rank=0):
                    p.data.copy_(local["fp32"].view_as(p).to(p.dtype))
            else:
                p.data.copy_(local["fp32"].view_as(p).to(p.dtype))
        else:
            p.data.copy_(local["fp32"].view_as(p).to(p.dtype))
            opt.state[p] = {"step": torch.tensor(step), **{k: local[k].to(p.device, p.dtype).clone() for k in MOMENTS}}
    for st in _base_optimizer(engine).state.values():  # ZeRO's flat partitions carry one step count each
        if "step" in st:
            st["step"] = torch.tensor(step, dtype=st["step"].dtype) if torch.is_tensor(st["step"]) else type(st["step"])(step)
    sched = shards[0]["scheduler"]
    if sched is not None and engine.lr_scheduler is not None:
        engine.lr_scheduler.load_state_dict(_fit_groups(sched, len(_base_optimizer(engine).param_groups), tag_dir))
        for group, lr in zip(_base_optimizer(engine).param_groups, engine.lr_scheduler.get_last_lr()):
            group["lr"] = lr
    log.info("resharded %s: saved at tp %d x pp %d (ep %d), now tp %d x pp %d x dp %d", tag_dir, shards[0]["tp"],
             shards[0]["pp"], shards[0].get("ep", 1), grid.tp, grid.pp, grid.dp)
