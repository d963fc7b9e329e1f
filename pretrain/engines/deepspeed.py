"""The DeepSpeed engine, built from the typed config.

The DeepSpeed JSON is generated here (users never keep ``train_batch_size`` consistent by hand); rare keys
go through ``deepspeed_extra``. The optimizer (AdamW, no weight decay on biases and norms) and the LR
schedule are ours (``pretrain.optim``) and handed to DeepSpeed, which steps, checkpoints and restores them.
ZeRO runs on the data-parallel dimension; a ``PipelineModule`` runs DeepSpeed's pipeline engine (1F1B).
"""

from __future__ import annotations

import contextlib
import copy
import logging
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch
from omegaconf import DictConfig, OmegaConf

from pretrain.engines.base import Batch, BatchPlan, Engine, rescale_lambda_lr
from pretrain.models.compile import compile_blocks
from pretrain.optim import build_optimizer, lr_lambda

log = logging.getLogger("pretrain")


def _val(x: Any) -> Any:
    return x.value if hasattr(x, "value") else x


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
    if plan.context_parallel_size > 1:  # informational: DeepSpeed takes the groups from the mpu (ParallelGrid)
        ds["sequence_parallel_size"] = plan.context_parallel_size
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


def initialize(model: torch.nn.Module, cfg: DictConfig, ds_config: dict, device: torch.device, mpu=None):
    """The DeepSpeed engine; ``mpu`` (a :class:`pretrain.parallel.topology.ParallelGrid`) tells DeepSpeed the
    data-parallel group to reduce over and the model-parallel group its gradient norm spans."""
    import deepspeed

    model.to(device)
    optimizer = build_optimizer(model, cfg, device)
    experts = _has_expert_slices(model)
    if experts:
        optimizer = _with_expert_groups(optimizer)
    fn = lr_lambda(cfg.optim.sched, cfg.trainer.max_steps)
    # the guard's LR multiplier (set_lr_scale); x 1.0 is exact, so the schedule is bit for bit the same. A plain
    # function, not an object: LambdaLR saves an object's __dict__ into the checkpoint, a function's nothing.
    lr_scale = [1.0]
    with _experts_recognised(experts):
        engine, _, _, scheduler = deepspeed.initialize(
            model=model,
            optimizer=optimizer,
            lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda step: fn(step) * lr_scale[0]),
            config=ds_config,
            mpu=None if _is_pipeline(model) else mpu,  # a PipelineModule brings its grid (our ParallelGrid)
        )
    if ds_config["zero_optimization"]["stage"] == 0 and not (ds_config["bf16"]["enabled"] or ds_config["fp16"]["enabled"]):
        _record_fp32_grad_norm(engine)
    if ds_config["zero_optimization"]["stage"] == 0 and engine.seq_dp_world_size == 1:
        # Nothing to all-reduce with one data-parallel rank (and no context-parallel ranks, over which gradients
        # are summed), but DeepSpeed would still flatten every gradient into a bucket and back each step (~7% of a
        # step of a 30M model on CPU).
        engine.enable_backward_allreduce = False
        if hasattr(engine, "pipeline_enable_backward_allreduce"):
            engine.pipeline_enable_backward_allreduce = False
    return engine, scheduler, lr_scale


# ----------------------------------------------------------------- expert parallelism (MoE, docs/moe.md)
def _has_expert_slices(model: torch.nn.Module) -> bool:
    from pretrain.parallel.expert import expert_slice

    return any(expert_slice(p) for p in model.parameters())


def _with_expert_groups(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The same optimizer over DeepSpeed's MoE parameter groups: each of our groups split into its dense part and
    its expert slices (``deepspeed.moe.utils.split_params_into_different_moe_groups_for_optimizer``: ``moe=True``,
    ``name`` = the expert group), which DeepSpeed's ZeRO-1/2 and bf16 optimizers partition and reduce over the
    expert-data-parallel group. Empty groups are dropped; every setting of a group is kept. In place: the
    optimizer has no state yet."""
    from deepspeed.moe.utils import split_params_into_different_moe_groups_for_optimizer

    named = [{**g, "name": f"group{i}", "params": list(g["params"])} for i, g in enumerate(optimizer.param_groups)]
    optimizer.param_groups.clear()
    for g in split_params_into_different_moe_groups_for_optimizer(named):
        if g["params"]:
            optimizer.add_param_group(g)
    return optimizer


@contextlib.contextmanager
def _experts_recognised(on: bool):
    """DeepSpeed turns its expert-parallel plumbing on (``engine.has_moe_layers``: expert parameters broadcast and
    reduced over the expert-data-parallel group, ZeRO-1/2 partitions per expert group) only for modules that are
    its own ``deepspeed.moe.layer.MoE`` (or AutoEP's layer), which it finds with ``isinstance`` while the engine is
    built; our block (:class:`pretrain.models.gpt.moe.MoE`) is counted as one for that time. Its MoE layer's
    checkpoint files (per expert, by its module names) are not written for ours: an expert-parallel run resumes
    through the layout-free copy, which holds the experts by global index (:mod:`pretrain.parallel.reshard`)."""
    if not on:
        yield
        return
    import deepspeed.runtime.engine as ds_engine

    from pretrain.models.gpt.moe import MoE

    theirs = ds_engine.MoE
    ds_engine.MoE = (theirs, MoE)
    try:
        yield
    finally:
        ds_engine.MoE = theirs


def grad_norm_and_clip(params: list[torch.Tensor], max_norm: float, mpu) -> torch.Tensor:
    """The global L2 gradient norm over every rank's parameters, then clipping to ``max_norm``.

    A tensor-sharded parameter counts on every tensor rank (its shards add up), a replicated one on tensor
    rank 0 only, a tied copy DeepSpeed marks ``ds_pipe_replicated`` on one pipeline stage only, an expert slice
    (expert parallelism) once in its expert-parallel group, whose ranks hold the other experts; the squares
    are summed over the model-parallel group (pipeline x tensor ranks). DeepSpeed's ``clip_grad_norm_`` asks
    ``get_model_parallel_rank() == 0``, which with pipeline stages drops every replicated parameter of the
    later stages; its ZeRO and bf16 optimizers use the tensor rank, as here."""
    from deepspeed.runtime.utils import is_model_parallel_parameter

    from pretrain.parallel.expert import expert_slice, expert_sq_norm

    params = [p for p in params if p.grad is not None]
    tp_rank = mpu.get_tensor_model_parallel_rank() if mpu is not None else 0
    device = params[0].grad.device if params else torch.device("cpu")
    sq = torch.zeros((), dtype=torch.float32, device=device)
    sq_experts, an_expert = torch.zeros_like(sq), None  # expert slices: summed over the expert-parallel group
    for p in params:
        if expert_slice(p):
            an_expert = p
        if getattr(p, "ds_pipe_replicated", False) or (tp_rank > 0 and not is_model_parallel_parameter(p)):
            continue
        if expert_slice(p):
            sq_experts += p.grad.detach().float().pow(2).sum()
        else:
            sq += p.grad.detach().float().pow(2).sum()
    if an_expert is not None:  # every rank of an expert-parallel run holds expert slices
        sq += expert_sq_norm(sq_experts, an_expert)
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


class _GatedSchedule:
    """The LR schedule as DeepSpeed sees it: stepped unless the guard skipped the update. Everything else
    (state_dict for checkpoints, load_state_dict, get_last_lr) is the real schedule's."""

    def __init__(self, schedule, skipped: Callable[[], bool]):
        self._schedule, self._skipped = schedule, skipped

    def step(self, *args, **kwargs) -> None:
        if not self._skipped():
            self._schedule.step(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._schedule, name)


class DeepSpeedEngine(Engine):
    """:class:`Engine` over ``deepspeed.initialize``: ZeRO 0-3 (+ offload) on the data-parallel dimension, the
    grid (``ParallelGrid``) as DeepSpeed's ``mpu``, and a ``PipelineModule`` (pipeline parallelism) stepped by
    DeepSpeed's 1F1B schedule. Checkpoints are DeepSpeed's own plus, with ``checkpoint.universal``, the
    layout-free copy (``pretrain.parallel.reshard``) that lets a run resume at another layout."""

    name = "deepspeed"

    def __init__(self, model: torch.nn.Module, cfg: DictConfig, plan: BatchPlan, device: torch.device, grid,
                 param_names: dict[int, str], family) -> None:
        self.config = deepspeed_config(cfg, plan, device)
        # expert parallelism: DeepSpeed's own files hold rank 0's expert slices only, so the layout-free copy, which
        # gathers them by global index, is always written and always what a resume reads (docs/moe.md)
        self.expert_parallel = _has_expert_slices(model)
        compile_blocks(model, cfg)  # trainer.compile: after tensor parallelism and recomputation, before wrapping
        self.ds, self.scheduler, self._lr_scale = initialize(model, cfg, self.config, device, mpu=grid)
        self.pipelined = plan.pipeline_parallel_size > 1
        self.grid, self.param_names, self.family = grid, param_names, family
        self.universal = bool(cfg.checkpoint.universal) or self.expert_parallel
        if self.expert_parallel and not cfg.checkpoint.universal:
            log.info("checkpoint.universal=false: the layout-free copy is written all the same under expert "
                     "parallelism (it is the one that holds every expert; docs/moe.md)")
        self._pipe_source: Iterator[Batch] | None = None
        self._pipe_iter: Iterator | None = None
        self._gate: Callable[[torch.Tensor | None, float | None], bool] | None = None
        self._skip: bool | None = None  # the gate's verdict for the current step (None: not consulted)
        self._install_step_gate()

    # -- skipping a step inside DeepSpeed (see set_step_gate)
    def _install_step_gate(self) -> None:
        """Every DeepSpeed optimizer (ZeRO 0-3, bf16, offload, the pipeline engine) ends its step by calling the
        base optimizer's ``step()`` after reducing, norming and clipping the gradients, and DeepSpeed then
        steps the LR schedule. So the gate wraps exactly those two: the base optimizer's ``step`` (one call per
        parameter group or sub-group under ZeRO; the verdict is taken on the first) and the schedule
        DeepSpeed sees. What the ZeRO wrappers do around a skipped base step is copying unchanged fp32 master
        weights back into the model, and dropping the gradients, as after any step. DeepSpeed's own
        overflow skip (a non-finite norm under ZeRO 1-3 and bf16, fp16 loss scaling) stays as it is."""
        ds = self.ds
        for opt in (ds.basic_optimizer, getattr(ds.optimizer, "backup_optimizer", None)):
            if opt is None:
                continue
            inner = opt.step

            def gated_step(*args, _inner=inner, **kwargs):
                if self._skip is None:
                    self._skip = bool(self._gate(self.pending_loss, self._grad_norm_now())) if self._gate else False
                return None if self._skip else _inner(*args, **kwargs)

            if hasattr(inner, "_wrapped_by_lr_sched"):  # torch's LR scheduler marks the step it wrapped
                gated_step._wrapped_by_lr_sched = True
            opt.step = gated_step
        ds.lr_scheduler = _GatedSchedule(self.scheduler, lambda: self._skip is True)
        if self.pipelined:  # the loss is computed on the last stage inside train_batch: inject there
            module, loss_fn = ds.module, ds.module.loss_fn
            calls = [0]

            def injected_loss(*args, **kwargs):
                loss = loss_fn(*args, **kwargs)
                if self.corruption is not None and self.ds.training and calls[0] == self.corruption[1]:
                    loss = loss * self.corruption[0]
                calls[0] += 1
                return loss

            module.loss_fn, self._pipe_loss_calls = injected_loss, calls

    def _grad_norm_now(self) -> float | None:
        """The global gradient norm of the step under way, as the optimizer computed it before its base step."""
        opt = self.ds.optimizer
        norm = getattr(opt, "_global_grad_norm", None) if opt is not self.ds.basic_optimizer else None
        if norm is None:
            norm = getattr(self.ds, "_global_grad_norm", None)  # fp32 ZeRO-0: our clip_and_record
        return float(norm) if norm is not None else None

    def begin_step(self) -> None:
        super().begin_step()
        self._skip = None
        if self.pipelined:
            self._pipe_loss_calls[0] = 0

    def set_step_gate(self, gate) -> None:
        self._gate = gate

    def update_applied(self) -> bool:
        return self._skip is not True and bool(self.ds.was_step_applied())

    def gate_consulted(self) -> bool:
        return self._skip is not None

    def set_lr_scale(self, scale: float) -> None:
        rescale_lambda_lr(self.scheduler, self._lr_scale, scale)

    def _relink_after_skip(self) -> None:
        """A skip of the very first update leaves the base optimizer without state, and ZeRO/bf16 would never
        link their fp32 fragments to it (they link once, after the first base step, which the skip was): link
        at the next one, so that the layout-free checkpoint finds the Adam moments."""
        if self._skip and not self.ds.basic_optimizer.state and hasattr(self.ds.optimizer, "_hp_optimizer_states_linked"):
            self.ds.optimizer._hp_optimizer_states_linked = False

    def _pipe_batches(self, batches: Iterator[Batch]) -> Iterator:
        """Loader batches as DeepSpeed's pipeline engine takes them; it pulls them on the first and last stage."""
        from pretrain.parallel.pipeline import to_pipe_batch

        return (to_pipe_batch(self.family.name, b) for b in batches)

    # -- the Engine interface
    def forward(self, batch: Batch) -> torch.Tensor:
        return self.ds(**batch)

    def backward(self, loss: torch.Tensor) -> None:
        self.ds.backward(loss)

    def step(self) -> None:
        self.ds.step()

    def train_step(self, batches: Iterator[Batch], num_micro_batches: int, device: torch.device) -> torch.Tensor:
        loss_sum = self._pipe_step(batches, num_micro_batches, device) if self.pipelined else super().train_step(
            batches, num_micro_batches, device)
        self._relink_after_skip()
        return loss_sum

    def _pipe_step(self, batches: Iterator[Batch], num_micro_batches: int, device: torch.device) -> torch.Tensor:
        self.begin_step()
        if self._pipe_source is not batches:  # one converting iterator per training stream
            self._pipe_source, self._pipe_iter = batches, self._pipe_batches(batches)
        # 1F1B over the step's micro-batches; the mean loss comes back on every stage
        loss_sum = torch.zeros((), device=device)
        loss_sum += self.ds.train_batch(data_iter=self._pipe_iter).float() * num_micro_batches
        return loss_sum

    def eval_loss(self, batches: Iterable[Batch], num_micro_batches: int, device: torch.device) -> float:
        if not self.pipelined:
            return super().eval_loss(batches, num_micro_batches, device)
        return float(self.ds.eval_batch(self._pipe_batches(iter(batches)), num_micro_batches=num_micro_batches))

    def train(self) -> None:
        self.ds.train()

    def eval(self) -> None:
        self.ds.eval()

    def lr(self) -> float:
        return self.ds.get_lr()[0]

    def grad_norm(self) -> float | None:
        norm = self.ds.get_global_grad_norm()
        return float(norm) if norm is not None else None

    def loss_scale(self) -> float:
        return current_loss_scale(self.ds)

    def save(self, ckpt_dir: Path, step: int, state: dict[str, Any], keep_last: int) -> Path:
        from pretrain import checkpoint as ckpt
        from pretrain.parallel import reshard

        def write_universal(tag_dir: Path) -> None:
            reshard.save(self.ds, tag_dir, self.param_names, self.grid)

        return ckpt.save(self.ds, ckpt_dir, step, state, torch.distributed.get_rank(), keep_last,
                         write_extra=write_universal if self.universal else None)

    def load(self, ckpt_dir: Path, tag: str, same_layout: bool) -> tuple[dict[str, Any], dict | None]:
        from pretrain import checkpoint as ckpt
        from pretrain.parallel import reshard

        rank = torch.distributed.get_rank()
        experts = self.expert_parallel or reshard.saved_expert_parallel_size(ckpt_dir / tag) > 1
        if same_layout and not experts:
            return ckpt.load(self.ds, ckpt_dir, tag, rank, torch.distributed.get_world_size())
        # another tp x pp x dp layout or ZeRO stage, or expert slices on either side: weights and optimizer from
        # the layout-free copy
        reshard.load(self.ds, ckpt_dir / tag, self.param_names, self.grid)
        state = ckpt.read_state(ckpt_dir / tag)
        self.ds.global_steps, self.ds.global_samples = int(state["step"]), int(state["consumed_samples"])
        rng_file = ckpt_dir / tag / f"rng_state_rank{rank}.pt"
        if same_layout and rng_file.exists():  # the same ranks (another expert-parallel size at most)
            log.info("expert-parallel checkpoint: weights and optimizer states from its layout-free copy")
            return state, ckpt.load_rng_state(rng_file)
        log.warning("the layout changed: RNG streams (dropout) restart from the seed")
        return state, None
