"""The accelerate engine: DDP, or FSDP2 (``fully_shard``), through ``accelerate.Accelerator``.

Same optimizer (``pretrain.optim``: AdamW, no weight decay on biases and norms), same LR schedule, same data and
metrics as the DeepSpeed engine; the Trainer cannot tell them apart. What differs:

* ``engine.accelerate.strategy=ddp``: the Accelerator wraps the model in ``DistributedDataParallel`` (nothing at one
  process) and, under ``trainer.precision=bf16/fp16``, in its autocast; weights stay fp32.
* ``strategy=fsdp``: FSDP2. Every transformer layer (each element of a family's ``layers`` lists) and then the root
  module go through ``torch.distributed.fsdp.fully_shard`` on a device mesh of the data-parallel ranks: ``full``
  shards over all of them, ``hybrid`` within groups of ``hybrid_shard_size`` ranks (replicated across groups),
  ``none`` replicates (a mesh whose shard dimension is 1). The settings are those of accelerate's
  ``FullyShardedDataParallelPlugin(fsdp_version=2)``; on CUDA the plugin is handed to the Accelerator, so its state
  says FSDP. We apply ``fully_shard`` ourselves, with the same per-layer plan accelerate's ``fsdp2_prepare_model``
  uses, because on CPU (our tests) accelerate ignores the plugin and would run DDP, and one code path on both is
  what the tests then check. bf16/fp16 is FSDP2's ``MixedPrecisionPolicy`` (compute in the low precision, fp32
  gradient reduction and master weights).
* fp16 (CUDA only) goes through a ``torch.amp.GradScaler`` (the Accelerator's under DDP); the ranks agree on an
  overflow from the global gradient norm, so they skip the same steps.
* The optimizer step is ours, so that the guard's gate (``set_step_gate``) runs after the gradients are reduced and
  their global norm is known, and before any parameter, moment or LR changes.

Checkpoints (inside ``pretrain.checkpoint``'s layout, with its file list, ``COMPLETE`` and ``latest``)::

    step_000020/
        dcp/                     torch.distributed.checkpoint: model + Adam state, each rank its shard
        accelerate_state.json    LR schedule, loss scaler, strategy (rank 0)
        rng_state_rank{r}.pt, trainer_state.json, universal/pp00_tp00.pt, files.json, COMPLETE

DCP reshards on load by itself, so an accelerate checkpoint resumes at another data-parallel size or from DDP to
FSDP2 and back. A DeepSpeed checkpoint resumes here, and an accelerate one under DeepSpeed, through the layout-free
copy (``universal/``, :mod:`pretrain.parallel.reshard`), which this engine writes in the same format (tp = pp = 1).
Nothing is unpickled freely: DCP's ``.metadata`` pickle goes through an unpickler that admits only DCP's own
classes, and only tensors are stored in DCP (its non-tensor values would be loaded with ``weights_only=False``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import pickle
from pathlib import Path
from typing import Any, Callable

import torch
from omegaconf import DictConfig

from pretrain.core.errors import CheckpointError, ConfigError
from pretrain.engines.base import Batch, BatchPlan, Engine, rescale_lambda_lr
from pretrain.models.compile import compile_blocks
from pretrain.optim import build_optimizer, lr_lambda

log = logging.getLogger("pretrain")

DCP_DIR = "dcp"
STATE_FILE = "accelerate_state.json"


def _val(x: Any) -> Any:
    return x.value if hasattr(x, "value") else x


# ------------------------------------------------------------------------------------------------ plan
def shard_group_size(cfg: DictConfig, dp: int) -> int:
    """Ranks that share one copy of the model under FSDP2 (``dp`` = full sharding, 1 = none)."""
    a = cfg.engine.accelerate
    sharding = _val(a.sharding)
    if sharding == "full":
        return dp
    if sharding == "none":
        return 1
    size = a.hybrid_shard_size or int(os.environ.get("LOCAL_WORLD_SIZE", dp) or dp)
    if size < 1 or dp % size:
        raise ConfigError(f"engine.accelerate.hybrid_shard_size={size} must divide the data-parallel size {dp}")
    return size


def mesh_shape(cfg: DictConfig, dp: int) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """The FSDP2 device mesh: 1-D over every rank for full sharding, (replicate, shard) for hybrid and none."""
    shard = shard_group_size(cfg, dp)
    if _val(cfg.engine.accelerate.sharding) == "full":
        return (dp,), ("dp_shard",)
    return (dp // shard, shard), ("dp_replicate", "dp_shard")


def mixed_precision_policy(precision: str):
    from torch.distributed.fsdp import MixedPrecisionPolicy

    low = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return MixedPrecisionPolicy(param_dtype=low, reduce_dtype=torch.float32 if low is not None else None)


def fsdp_plugin(cfg: DictConfig):
    """accelerate's FSDP2 plugin with our settings (what the Accelerator is given on CUDA)."""
    from accelerate import FullyShardedDataParallelPlugin

    return FullyShardedDataParallelPlugin(
        fsdp_version=2, reshard_after_forward=bool(cfg.engine.accelerate.reshard_after_forward),
        mixed_precision_policy=mixed_precision_policy(_val(cfg.trainer.precision)),
        state_dict_type="SHARDED_STATE_DICT")


def transformer_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The FSDP2 units below the root: each element of every ``layers`` ModuleList (GPT's blocks, BERT's layers,
    T5's encoder and decoder layers), outermost first."""
    units: list[torch.nn.Module] = []
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] == "layers" and isinstance(module, torch.nn.ModuleList):
            if not any(name.startswith(f"{prefix}.") for prefix in (n for n, m in model.named_modules() if m in units)):
                units.extend(module)
    return units


def apply_fsdp2(model: torch.nn.Module, mesh, reshard_after_forward: bool, mp_policy) -> int:
    """``fully_shard`` each transformer layer, then the root (embeddings, final norm, head). Returns the units."""
    from torch.distributed.fsdp import fully_shard

    layers = transformer_layers(model)
    for layer in layers:
        fully_shard(layer, mesh=mesh, reshard_after_forward=reshard_after_forward, mp_policy=mp_policy)
    fully_shard(model, mesh=mesh, reshard_after_forward=reshard_after_forward, mp_policy=mp_policy)
    return len(layers) + 1


def total_grad_norm(params: list[torch.Tensor]) -> torch.Tensor:
    """The global L2 norm of the gradients over every rank (FSDP2's gradient shards are DTensors: their norm is
    reduced over the mesh by ``full_tensor``), fp32."""
    from torch.distributed.tensor import DTensor

    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    norm = torch.nn.utils.get_total_norm(grads, 2.0, error_if_nonfinite=False)
    if isinstance(norm, DTensor):
        norm = norm.full_tensor()
    return norm.float()


# ------------------------------------------------------------------------------------------ safe DCP reading
def _allowed_metadata_global(module: str, name: str) -> bool:
    if "." in name:  # pickle resolves dotted names attribute by attribute: "os.system" of a module importing os
        return False
    if module.startswith("torch.distributed.checkpoint."):
        # DCP's own metadata classes only, not any function of its modules (some of them call torch.load)
        import importlib

        obj = getattr(importlib.import_module(module), name, None)
        return isinstance(obj, type) and obj.__module__.startswith("torch.distributed.checkpoint.")
    if module == "torch":
        return name == "Size" or isinstance(getattr(torch, name, None), torch.dtype)
    # a tensor's layout is rebuilt from its name; the checkpoint's own path is kept as a path
    return (module, name) in {("collections", "OrderedDict"), ("torch.serialization", "_get_layout"),
                              ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath")}


class _MetadataUnpickler(pickle.Unpickler):
    def __init__(self, f, path: Path):
        super().__init__(f)
        self.path = path

    def find_class(self, module: str, name: str):
        if _allowed_metadata_global(module, name):
            return super().find_class(module, name)
        from pretrain.core import safe_load

        raise CheckpointError(safe_load.refusal(self.path, f"it would import {module}.{name}"))


def safe_reader(path: Path):
    """DCP's file reader, with ``.metadata`` unpickled by an unpickler that admits DCP's own classes only (the
    tensors themselves DCP already loads with ``weights_only=True``)."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeReader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any):
            meta_path = self._get_metadata_path(kwargs.get("rank"))
            try:
                with self.fs.create_stream(meta_path, "rb") as f:
                    metadata = _MetadataUnpickler(f, Path(meta_path)).load()
            except (OSError, EOFError, pickle.UnpicklingError, AttributeError, ValueError) as e:
                raise CheckpointError(f"cannot read {meta_path}: {type(e).__name__}: {e}") from None
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeReader(str(path))


def dcp_model_weights(tag_dir: Path, template: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The full model weights of an accelerate checkpoint's DCP folder, read in this one process (export):
    ``template`` (our model's ``state_dict()``) gives names and shapes; tied aliases DCP lacks are left out."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import DefaultLoadPlanner

    box = {"model": {k: torch.empty_like(v, dtype=torch.float32) for k, v in template.items()}}
    reader = safe_reader(tag_dir / DCP_DIR)
    saved = reader.read_metadata().state_dict_metadata
    box["model"] = {k: v for k, v in box["model"].items() if f"model.{k}" in saved}
    dcp.load(box, storage_reader=reader, planner=DefaultLoadPlanner(allow_partial_load=True), no_dist=True)
    return box["model"]


# ------------------------------------------------------------------------------------------------ engine
class AccelerateEngine(Engine):
    """:class:`Engine` over ``accelerate.Accelerator``: DDP, or FSDP2 with full, hybrid or no sharding."""

    name = "accelerate"

    def describe(self, plan: BatchPlan) -> str:
        """DDP or FSDP2 and its sharding (``parallel.zero_stage`` is DeepSpeed's: 2 and 3 are refused, 0 and 1
        mean nothing here, and the set-up line says what runs instead)."""
        if self.mesh is None:
            return "accelerate DDP (replicated; parallel.zero_stage unused)"
        return f"accelerate FSDP2 sharding={self.sharding} (parallel.zero_stage unused)"

    def __init__(self, model: torch.nn.Module, cfg: DictConfig, plan: BatchPlan, device: torch.device, grid,
                 param_names: dict[int, str], family) -> None:
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs, GradScalerKwargs

        a = cfg.engine.accelerate
        self.strategy, self.sharding = _val(a.strategy), _val(a.sharding)
        self.precision = _val(cfg.trainer.precision)
        self.device, self.plan, self.grid = device, plan, grid
        self.accum, self.clip = plan.grad_accum_steps, float(cfg.optim.clip_grad)
        self.universal = bool(cfg.checkpoint.universal)
        fsdp = self.strategy == "fsdp"
        on_gpu = device.type == "cuda"
        plugin = fsdp_plugin(cfg) if fsdp else None  # FSDP2's settings, whatever the device
        scaler_kwargs = dict(init_scale=2.0**16, growth_interval=1000)  # DeepSpeed's fp16 defaults (ours)
        handlers: list[Any] = [GradScalerKwargs(**scaler_kwargs)]
        if getattr(model, "args", None) is not None and getattr(model.args, "num_experts", 0) > 1:
            handlers.append(DistributedDataParallelKwargs(find_unused_parameters=True))  # experts a batch skips
        kwargs: dict[str, Any] = dict(cpu=not on_gpu, kwargs_handlers=handlers, device_placement=True,
                                      mixed_precision="no" if fsdp or self.precision == "fp32" else self.precision)
        if fsdp and on_gpu:
            kwargs["fsdp_plugin"] = plugin
        # accelerate sets the process's torch threads on CPU when OMP_NUM_THREADS is unset; keep them as they are
        os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))
        self.accelerator = Accelerator(**kwargs)
        self.module = model.to(device)  # the unwrapped model: parameter names, state dicts
        compile_blocks(model, cfg)  # trainer.compile: after tensor parallelism and recomputation, before fully_shard
        self.mesh = None
        if fsdp:
            from torch.distributed.device_mesh import init_device_mesh

            shape, names = mesh_shape(cfg, plan.data_parallel_size)
            self.mesh = init_device_mesh(device.type, shape, mesh_dim_names=names)
            units = apply_fsdp2(model, self.mesh, plugin.reshard_after_forward, plugin.mixed_precision_policy)
            self.model = model
            log.info("accelerate FSDP2: %d fully_shard units, sharding=%s, mesh %s %s", units, self.sharding,
                     dict(zip(names, shape)), "(distributed type " + self.accelerator.distributed_type.value + ")")
        self.optimizer = build_optimizer(model, cfg, device)  # after fully_shard: on the sharded parameters
        if not fsdp:
            # one process: nothing to all-reduce, so no DDP wrapper and its hooks (DeepSpeed switches its all-reduce
            # off there too); accelerate's evaluation_mode does just that, keeping device placement and autocast
            alone = torch.distributed.get_world_size() == 1
            self.model = self.accelerator.prepare_model(model, evaluation_mode=alone)
            log.info("accelerate DDP: distributed type %s, mixed precision %s", self.accelerator.distributed_type.value,
                     self.accelerator.mixed_precision)
        self.scaler = None
        if self.precision == "fp16":
            self.scaler = self.accelerator.scaler or torch.amp.GradScaler(device.type, **scaler_kwargs)
            self.accelerator.scaler = self.scaler  # accelerator.backward scales the loss with it
        fn = lr_lambda(cfg.optim.sched, cfg.trainer.max_steps)
        self._lr_scale = [1.0]  # the guard's multiplier; a plain function (see the DeepSpeed engine)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: fn(step) * self._lr_scale[0])
        self.params = [p for p in self.module.parameters() if p.requires_grad]
        self.config = {"engine": self.name, "strategy": self.strategy,
                       "sharding": self.sharding if fsdp else None,
                       "mesh": dict(zip(*mesh_shape(cfg, plan.data_parallel_size)[::-1])) if fsdp else None,
                       "distributed_type": self.accelerator.distributed_type.value,
                       "mixed_precision": self.precision, "gradient_accumulation_steps": self.accum,
                       "gradient_clipping": self.clip, "micro_batch_size": plan.micro_batch_size,
                       "global_batch_size": plan.global_batch_size}
        self._micro = 0
        self._grad_norm: float | None = None
        self._applied = False
        self._gate: Callable[[torch.Tensor | None, float | None], bool] | None = None
        self._skip: bool | None = None

    # -- the Engine interface
    def _set_sync(self, sync: bool) -> None:
        """Reduce gradients only with the step's last micro-batch (accumulation)."""
        if self.mesh is not None:
            self.model.set_requires_gradient_sync(sync)
        elif isinstance(self.model, torch.nn.parallel.DistributedDataParallel):
            self.model.require_backward_grad_sync = sync  # what DDP's no_sync() sets; read by its forward

    def forward(self, batch: Batch) -> torch.Tensor:
        if self.model.training:
            self._set_sync(self._micro == self.accum - 1)
        return self.model(**batch)

    def backward(self, loss: torch.Tensor) -> None:
        self.accelerator.backward(loss / self.accum)  # DeepSpeed's scaling by the accumulation steps

    def step(self) -> None:
        self._micro += 1
        if self._micro == self.accum:
            self._micro = 0
            self._optimizer_step()

    def _optimizer_step(self) -> None:
        opt = self.optimizer
        if self.scaler is not None:
            self.scaler.unscale_(opt)
        norm = total_grad_norm(self.params)
        self._grad_norm = float(norm)
        finite = math.isfinite(self._grad_norm)
        self._applied = False
        if self.scaler is not None and not finite:
            # the loss scaler's overflow: skipped by the backend itself, as DeepSpeed does (the gate is not asked)
            self._agree_on_overflow(True)
            self.scaler.step(opt)  # skips the update, having seen the inf
            self.scaler.update()
            opt.zero_grad(set_to_none=True)
            return
        self._skip = bool(self._gate(self.pending_loss, self._grad_norm)) if self._gate else False
        if not self._skip:
            if self.clip > 0:
                torch.nn.utils.clip_grads_with_norm_(self.params, self.clip, norm)  # DeepSpeed's coefficient
            if self.scaler is not None:
                self._agree_on_overflow(False)
                self.scaler.step(opt)
            else:
                opt.step()
            self.scheduler.step()
            self._applied = True
        if self.scaler is not None:
            self._agree_on_overflow(not finite)
            self.scaler.update()
        opt.zero_grad(set_to_none=True)

    def _agree_on_overflow(self, overflow: bool) -> None:
        """The scaler found infs per rank (in its shard, under FSDP2); make every rank see the global verdict (from
        the all-reduced norm) so that all of them skip, or step, together."""
        state = self.scaler._per_optimizer_states[id(self.optimizer)]
        for t in state.get("found_inf_per_device", {}).values():
            t.fill_(1.0 if overflow else 0.0)

    def begin_step(self) -> None:
        super().begin_step()
        self._skip = None

    def set_step_gate(self, gate) -> None:
        self._gate = gate

    def update_applied(self) -> bool:
        return self._applied

    def gate_consulted(self) -> bool:
        return self._skip is not None

    def set_lr_scale(self, scale: float) -> None:
        rescale_lambda_lr(self.scheduler, self._lr_scale, scale)

    def train(self) -> None:
        self.model.train()

    def eval(self) -> None:
        self.model.eval()

    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def grad_norm(self) -> float | None:
        return self._grad_norm

    def loss_scale(self) -> float:
        return float(self.scaler.get_scale()) if self.scaler is not None else 1.0

    # -- state dicts
    def _state_dicts(self, **options: Any) -> tuple[dict, dict]:
        """(model, optimizer) state dicts by parameter name: DTensor shards under FSDP2, whole tensors under DDP.
        torch fills an empty optimizer state with a zero-LR step first; a state that was empty is emptied again,
        so that taking it changes nothing (the next step's bias correction counts from 1)."""
        from collections import defaultdict

        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        was_empty = not self.optimizer.state
        msd, osd = get_state_dict(self.model, self.optimizer, options=StateDictOptions(**options))
        if was_empty:
            self.optimizer.state = defaultdict(dict)
        return msd, osd

    def _set_state_dicts(self, msd: dict | None, osd: dict, **options: Any) -> None:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        opts = StateDictOptions(**options)
        if msd is not None:
            set_model_state_dict(self.model, msd, options=opts)
        set_optimizer_state_dict(self.model, self.optimizer, osd, options=opts)

    def _engine_state(self) -> dict[str, Any]:
        return {"format": 1, "strategy": self.strategy, "sharding": self.sharding,
                "world_size": torch.distributed.get_world_size(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None}

    def _restore_schedule(self, sched: dict | None) -> None:
        if sched is None:
            return
        self.scheduler.load_state_dict(sched)
        for group, lr in zip(self.optimizer.param_groups, self.scheduler.get_last_lr()):
            group["lr"] = lr

    # -- checkpoints
    def save_checkpoint(self, save_dir: str, tag: str, client_state: dict, save_latest: bool = False) -> list[Path]:
        """What ``pretrain.checkpoint.save`` asks of a backend (DeepSpeed's signature): this rank's DCP shard, and
        on rank 0 ``accelerate_state.json``. Returns the files this rank wrote (they go into the file list)."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint import FileSystemWriter
        from torch.distributed.checkpoint.api import CheckpointException

        tag_dir = Path(save_dir) / tag
        msd, osd = self._state_dicts()
        try:
            dcp.save({"model": msd, "optim": osd["state"]}, storage_writer=FileSystemWriter(str(tag_dir / DCP_DIR)))
        except CheckpointException as e:  # one rank's write failed: every rank gets it; SaveGuard reports it
            raise OSError(f"torch.distributed.checkpoint could not write {tag_dir / DCP_DIR}: {e}") from None
        rank = torch.distributed.get_rank()
        written = sorted((tag_dir / DCP_DIR).glob(f"__{rank}_*.distcp"))
        if rank == 0:
            written.append(tag_dir / DCP_DIR / ".metadata")
            from pretrain.core.atomic import atomic_write

            atomic_write(tag_dir / STATE_FILE, json.dumps(self._engine_state(), indent=1) + "\n")
            written.append(tag_dir / STATE_FILE)
        return written

    def save(self, ckpt_dir: Path, step: int, state: dict[str, Any], keep_last: int) -> Path:
        from pretrain import checkpoint as ckpt

        # zero_stage: none (DeepSpeed's ZeRO files are not there); engine: which loader reads the checkpoint
        state = {**state, "engine": self.name, "zero_stage": None,
                 "accelerate": {"strategy": self.strategy,
                                "sharding": self.sharding if self.mesh is not None else None}}
        return ckpt.save(self, ckpt_dir, step, state, torch.distributed.get_rank(), keep_last,
                         write_extra=self._write_universal if self.universal else None)

    def _write_universal(self, tag_dir: Path) -> None:
        """Collective: ``universal/pp00_tp00.pt`` (the layout-free copy, :mod:`pretrain.parallel.reshard`'s format):
        full fp32 weights and Adam moments by parameter name, the optimizer step and the LR schedule."""
        from pretrain.parallel import reshard

        msd, osd = self._state_dicts(full_state_dict=True, cpu_offload=True)  # gathered onto rank 0
        if torch.distributed.get_rank() != 0:
            return
        params, step = {}, 0.0
        for name, _ in self.module.named_parameters():
            weight = msd[name].detach().to("cpu", torch.float32)
            st = osd["state"].get(name, {})
            entry = {"fp32": weight.clone(), "partition_dim": None}
            for k in reshard.MOMENTS:
                entry[k] = st[k].detach().to("cpu", torch.float32).clone() if k in st else torch.zeros_like(weight)
            if "step" in st:
                step = float(st["step"])
            params[name] = entry
        out = tag_dir / reshard.UNIVERSAL
        out.mkdir(parents=True, exist_ok=True)
        torch.save({"params": params, "tp": 1, "pp": 1, "tp_rank": 0, "pp_rank": 0, "optimizer_step": step,
                    "scheduler": self.scheduler.state_dict()}, out / "pp00_tp00.pt")

    def load(self, ckpt_dir: Path, tag: str, same_layout: bool) -> tuple[dict[str, Any], dict | None]:
        from pretrain import checkpoint as ckpt

        tag_dir = ckpt_dir / tag
        state = ckpt.read_state(tag_dir)
        if state.get("engine", "deepspeed") != self.name or not (tag_dir / DCP_DIR).is_dir():
            self._load_universal(tag_dir)  # another engine's checkpoint
            log.warning("the checkpoint was written by engine=%s: resumed through its layout-free copy; RNG streams "
                        "(dropout) restart from the seed", state.get("engine", "deepspeed"))
            return state, None
        self._load_dcp(tag_dir)
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        rng_file = tag_dir / f"rng_state_rank{rank}.pt"
        if state.get("world_size") == world and rng_file.exists():
            return state, ckpt.load_rng_state(rng_file)
        log.warning("checkpoint %s was saved with world size %s (now %s): RNG streams restart from the seed",
                    tag, state.get("world_size"), world)
        return state, None

    def _load_dcp(self, tag_dir: Path) -> None:
        import torch.distributed.checkpoint as dcp

        msd, osd = self._state_dicts()
        box = {"model": msd, "optim": osd["state"]}
        try:
            dcp.load(box, storage_reader=safe_reader(tag_dir / DCP_DIR))
        except CheckpointError:
            raise
        except Exception as e:  # noqa: BLE001 - DCP wraps every rank's failure in one CheckpointException
            raise CheckpointError(f"cannot load {tag_dir / DCP_DIR}: {str(e).splitlines()[0][:300]}") from None
        self._set_state_dicts(box["model"], {"state": box["optim"], "param_groups": osd["param_groups"]})
        try:
            extra = json.loads((tag_dir / STATE_FILE).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise CheckpointError(f"cannot read {tag_dir / STATE_FILE}: {e}") from None
        self._restore_schedule(extra.get("scheduler"))
        if self.scaler is not None and extra.get("scaler"):
            self.scaler.load_state_dict(extra["scaler"])

    @torch.no_grad()
    def _load_universal(self, tag_dir: Path) -> None:
        """Weights, Adam moments, optimizer step and LR schedule from the layout-free copy (any engine, any tp x pp
        layout it was saved at: the tensor-parallel shards are concatenated)."""
        from pretrain.parallel import reshard

        shards = reshard._read(tag_dir)
        names = [n for n, _ in self.module.named_parameters()]
        full = {n: {k: reshard._gather(shards, n, k) for k in ("fp32", *reshard.MOMENTS)} for n in names}
        step = torch.tensor(float(shards[0]["optimizer_step"]), dtype=torch.float32)
        current, osd = self._state_dicts(full_state_dict=True)
        msd = {}  # parameters only, under their first name: buffers and tied aliases keep their values
        for n in names:
            if tuple(full[n]["fp32"].shape) != tuple(current[n].shape):
                raise CheckpointError(f"{tag_dir / reshard.UNIVERSAL}: {n} has shape {tuple(full[n]['fp32'].shape)}, "
                                      f"the model {tuple(current[n].shape)}")
            msd[n] = full[n]["fp32"].to(current[n].dtype)
            osd["state"][n] = {"step": step.clone(), **{k: full[n][k].clone() for k in reshard.MOMENTS}}
        self._set_state_dicts(msd, osd, full_state_dict=True, strict=False)
        # DeepSpeed's MoE runs split the experts into optimizer groups of their own: the saved schedule may hold
        # another number of groups than ours (all following one schedule)
        self._restore_schedule(reshard._fit_groups(shards[0]["scheduler"], len(self.optimizer.param_groups),
                                                   tag_dir))
        log.info("loaded the layout-free copy %s (saved at tp %d x pp %d) into accelerate %s", tag_dir,
                 shards[0]["tp"], shards[0]["pp"], self.strategy)

    def close(self) -> None:
        """Free the accelerator and forget accelerate's process-wide state (a singleton that would otherwise refuse
        the next in-process run another mixed precision)."""
        from accelerate.state import AcceleratorState, GradientState

        with contextlib.suppress(Exception):
            self.accelerator.free_memory()
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
