"""The Trainer: named phases, loop state on the object, everything else in components.

    trainer = Trainer(cfg)            # or Trainer(cfg, callbacks=[MyCallback()])
    trainer.plan()                    # config, data, resume decision: cheap, no process group yet
    trainer.build()                   # process group, model, parallelize, engine
    trainer.resume()                  # checkpoint (if any), run files, metrics, the training stream
    summary = trainer.train()         # next batch -> step -> callbacks, until max_steps or a stop
    trainer.close()

``Trainer(cfg).fit()`` runs all five. Every bad setting or input is refused in :meth:`plan`, before a process
group or a model exists. What happens *when* (metrics records, evaluation, stop requests, checkpoints) is
decided by callbacks (``pretrain.callbacks``), so a new capability plugs in without editing the loop. The
guard (``pretrain.guard``, training health) is one of them, with two hooks of its own: it arms fault injection
before each step and decides inside the optimizer step whether to skip it; a rollback it asks for runs after
the step's callbacks (:meth:`Trainer.rollback`).

Order of random draws matters for exact resume: the model is built from ``seed`` on every rank, dropout
streams are then seeded per data-parallel rank, and a checkpoint's RNG states are restored as the very last
thing before the first step.
"""

from __future__ import annotations

import json
import logging
import os
import random
import sys
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from pretrain import checkpoint as ckpt
from pretrain import jit_ops, preemption
from pretrain.callbacks import Callback, CallbackList, StepOutput
from pretrain.checkpointer import Checkpointer
from pretrain.config import validate_schema
from pretrain.distributed import barrier, ensure_launcher_env, env_rank, env_world_size, init_distributed, pick_device
from pretrain.engines import batch_plan, check_precision, get_engine
from pretrain.evaluator import Evaluator
from pretrain.flops import peak_flops_per_device
from pretrain.guard import Guard
from pretrain.metrics import METRICS_FILE, MetricsLogger, StepRecorder
from pretrain.models import TokenizerInfo, get_family
from pretrain.models.compile import CompileTimer
from pretrain.parallel.context import context_callbacks
from pretrain.parallel.pipeline import PP_COMM, build_pipeline, parameter_names
from pretrain.validation import fit_schedule_to_run, validate_values

log = logging.getLogger("pretrain")
# torch.distributed's deprecation notices for calls made inside DeepSpeed: one per call site per rank.
warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.distributed")


def setup_logging(rank: int, run_dir: Path) -> None:
    """Our messages (the ``pretrain`` logger tree) at INFO on rank 0, to the console and <run_dir>/train.log;
    other ranks and third-party libraries at WARNING."""
    fmt = logging.Formatter("[%(asctime)s] %(message)s", "%H:%M:%S")
    ours = logging.getLogger("pretrain")
    ours.handlers.clear()
    ours.propagate = False
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(fmt)
    ours.addHandler(console)
    ours.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(run_dir / "train.log")
        fh.setFormatter(logging.Formatter("[%(asctime)s] %(levelname)s %(name)s: %(message)s"))
        ours.addHandler(fh)
    logging.getLogger().setLevel(logging.WARNING)
    for noisy in ("DeepSpeed", "deepspeed", "torch.distributed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class BatchStream:
    """The training batches of this rank, counting the token ids it hands out (the step's batch checksum)."""

    def __init__(self, batches: Iterator[dict[str, torch.Tensor]]):
        self._batches = batches
        self.checksum = 0

    def __iter__(self) -> "BatchStream":
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        batch = next(self._batches)
        self.checksum += int(batch["input_ids"].sum())
        return batch

    def take_checksum(self) -> int:
        value, self.checksum = self.checksum, 0
        return value


class Trainer:
    def __init__(self, cfg: DictConfig, callbacks: Sequence[Callback] = ()):
        self.cfg = cfg
        self.extra_callbacks = list(callbacks)
        # loop state (state_dict)
        self.step = 0
        self.consumed_samples = 0
        self.first_step = 0  # the step this run started from
        self.stop_reason: str | None = None  # see request_stop; the loop ends after the step that set it
        self.requeue_after_stop = False
        self.last_loss = float("nan")
        self.last_val_loss: float | None = None
        self.steps_lost = 0
        self._rng: dict | None = None
        self.rollback_request: tuple[str, int] | None = None  # (checkpoint tag, data position): see request_rollback
        self.distill = None  # the Distiller of objective=distill (pretrain.distill), set in plan

    # ------------------------------------------------------------------ phases
    def fit(self) -> dict[str, Any]:
        self.plan()
        self.build()
        self.resume()
        try:
            summary = self.train()
        except BaseException:
            self._abort()
            raise
        self.close()
        return summary

    def plan(self) -> "Trainer":
        """Everything that can be checked without a process group or a model: config, layout, data, resume."""
        cfg = self.cfg
        ensure_launcher_env()
        self.rank, self.world = env_rank(), env_world_size()
        self.run_dir = Path(cfg.run_dir).absolute()
        setup_logging(self.rank, self.run_dir)
        # SIGUSR1/SIGTERM and trainer.max_wall_time_s -> checkpoint at a step boundary, then requeue
        self.stop_request = preemption.StopRequest(cfg.trainer.max_wall_time_s)
        validate_schema(cfg)
        note = fit_schedule_to_run(cfg)  # first: a recipe's warm-up longer than a short run is shortened to it
        if note:
            log.info(note)
        validate_values(cfg)  # every bad value at once, each naming its key
        self.device = pick_device(cfg.trainer.device)
        self.precision = cfg.trainer.precision.value
        check_precision(self.precision, self.device)
        self.batch = plan = batch_plan(cfg, self.world)
        if plan.zero_stage != cfg.parallel.zero_stage:
            log.info("parallel.zero_stage=%d with one data-parallel rank partitions nothing: running ZeRO stage 0",
                     cfg.parallel.zero_stage)
        self.max_steps = cfg.trainer.max_steps
        self.pipelined = plan.pipeline_parallel_size > 1
        # training health: checks trainer.guard.* now; plans the data a rollback continues on (_plan_resume)
        self.guard = Guard(cfg.trainer.guard, self.pipelined, fp16=self.precision == "fp16")
        self._plan_data()
        self._plan_resume()
        from pretrain.distill import plan_distill

        self.distill = plan_distill(cfg, self.family, self.args, self.tokenizer, plan)  # objective=distill, else None
        from pretrain.data.dataset import build_datasets, check_vocab
        from pretrain.data.schedule import plan_mixture

        self.mixture = plan_mixture(cfg.data, self.resume_state, self.family.tokens_per_sample(self.args),
                                    plan.global_batch_size)  # data.schedule, checked against the checkpoint's
        self.data = build_datasets(cfg.data, seq_length=self.family.sample_length(self.args) - 1, seed=cfg.seed,
                                   num_train_samples=self.num_train_samples, num_valid_samples=self.num_eval_samples,
                                   cache_dir=cfg.data.index_cache_dir or str(self.run_dir / "data_index"),
                                   mixture=self.mixture)
        check_vocab(self.data, self.args.vocab_size)
        from pretrain.data.documents import with_document_mask

        self.transform = with_document_mask(self.family.name, self.family.make_transform(self.args, self.tokenizer,
                                            cfg.seed), self.tokenizer.eod_id, self.document_mask)
        self.seq = self.family.tokens_per_sample(self.args)
        self.init_from = cfg.model.init_from if not self.resume_tag else None  # a checkpoint to resume wins
        if self.init_from:
            from pretrain import hf

            hf.check_compatible(self.init_from, self.family.name, self.args)  # config.json only, before any work
        return self

    def _plan_data(self) -> None:
        from pretrain.core.manifest import read_manifest
        from pretrain.data.dataset import tokenizer_vocab_size
        from pretrain.data.sample import ensure_sample_data

        cfg = self.cfg
        self.family = get_family(cfg.model.family)
        manifest = read_manifest(cfg.data.path if cfg.data.path else ensure_sample_data(kind=cfg.data.sample_tokenizer))
        self.tokenizer = TokenizerInfo.load(manifest.tokenizer, None, manifest.eod_id)
        self.tokenizer.vocab_size = (tokenizer_vocab_size(manifest.tokenizer) if manifest.tokenizer
                                     else manifest.vocab_size)
        self.args = self.family.resolve_args(cfg.model, self.tokenizer)
        from pretrain.data.documents import check_document_mask

        self.document_mask = bool(getattr(cfg.data, "document_mask", False))
        check_document_mask(self.family.name, self.document_mask)  # before any data index is built
        self.num_eval_samples = cfg.trainer.eval_iters * self.batch.micro_batch_size * self.batch.data_parallel_size

    def _plan_resume(self) -> None:
        """Which checkpoint to resume from, checked against this run (shape, layout) from its JSON state."""
        cfg, plan = self.cfg, self.batch
        self.ckpt_dir, self.resume_tag = ckpt.resolve_resume(
            cfg.checkpoint.resume, Path(cfg.checkpoint.dir or self.run_dir / "checkpoints").absolute(),
            verify=cfg.checkpoint.verify.value)
        self.resume_state: dict[str, Any] = {}
        self.same_layout = True
        if self.resume_tag:
            tag_dir = self.ckpt_dir / self.resume_tag
            self.resume_state = ckpt.read_state(tag_dir)
            ckpt.check_model_shape(tag_dir, self.resume_state, self.args, self.family.name)
            self.same_layout = ckpt.check_layout(tag_dir, self.resume_state, self.world, plan.zero_stage,
                                                 plan.tensor_parallel_size, plan.pipeline_parallel_size,
                                                 engine=cfg.engine.name,
                                                 expert_parallel_size=cfg.parallel.expert_model_parallel_size)
        # The samples this run reads: from the checkpoint's position on, one global batch per remaining step. Not
        # max_steps x global batch: a resume at another data-parallel size (or batch size) has consumed a
        # different number of samples per step so far.
        start_step = int(self.resume_state.get("step", 0))
        start_consumed = int(self.resume_state.get("consumed_samples", 0))
        saved_gbs = self.resume_state.get("global_batch_size")
        if saved_gbs is not None and saved_gbs != plan.global_batch_size:
            log.warning("the global batch changed since the checkpoint (%d -> %d samples per step): the run "
                        "continues at sample %d with the new batch, so its losses will not follow the old run's",
                        saved_gbs, plan.global_batch_size, start_consumed)
        self.num_train_samples = start_consumed + max(0, self.max_steps - start_step) * plan.global_batch_size
        self.num_train_samples += self.guard.reserve_samples(cfg.checkpoint.interval, plan.global_batch_size)

    def build(self) -> "Trainer":
        """Process group, model (the same seeded weights on every rank), parallelize, engine."""
        self.build_model()
        self.build_engine()
        return self

    def build_model(self) -> torch.nn.Module:
        cfg, plan = self.cfg, self.batch
        jit_ops.prepare_extensions_dir()  # this environment's JIT-op folder, stale build locks cleared
        self.dist = init_distributed(self.device, cfg.parallel.backend, cfg.parallel.timeout_s)
        if cfg.trainer.deterministic:
            torch.use_deterministic_algorithms(True)
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        from pretrain.parallel.topology import ParallelGrid

        self.grid = ParallelGrid(plan.tensor_parallel_size, plan.pipeline_parallel_size, plan.context_parallel_size)
        self.dp_rank, self.dp_group = self.grid.get_data_parallel_rank(), self.grid.get_data_parallel_group()
        seed_everything(cfg.seed)  # identical initial weights on every rank
        model = self.family.build(self.args)
        if self.init_from:
            from pretrain import hf

            hf.load_into(model, self.init_from, self.family.name, self.args)
        if self.distill:  # the teacher, loaded and hooked into the student's loss (its parameters untouched)
            self.distill.attach(model, self.device)
        self.n_params = self.family.num_parameters(self.args)  # the whole model, whatever the sharding
        if plan.tensor_parallel_size > 1:
            from pretrain.parallel.parallelize import parallelize

            parallelize(model, self.grid.get_tensor_model_parallel_group(),  # slices the seeded full weights
                        sequence_parallel=cfg.parallel.sequence_parallel)
        if plan.context_parallel_size > 1:  # each rank of a context group runs its chunk of every sequence
            from pretrain.parallel.context import context_parallelize

            n = context_parallelize(model, self.grid.get_sequence_parallel_group(), self.grid.coord.cp,
                                    plan.context_parallel_size)
            log.info("context parallel: sequences of %d tokens split over %d ranks (DeepSpeed-Ulysses all-to-all "
                     "over the heads around %d attention layers)", self.seq, plan.context_parallel_size, n)
        if cfg.parallel.expert_model_parallel_size > 1:  # MoE: each rank holds and runs its experts (docs/moe.md)
            from pretrain.parallel.expert import expert_parallelize

            ep = cfg.parallel.expert_model_parallel_size
            ep_group, ep_rank = self.grid.expert_parallel_group(ep)
            n = expert_parallelize(model, ep_group, ep_rank, ep)
            per_rank = self.args.num_experts // ep
            log.info("expert parallel: %d MoE layers, the experts spread over %d ranks (this rank: expert-parallel "
                     "rank %d, holding experts %d-%d of %d)", n, ep, ep_rank, ep_rank * per_rank,
                     (ep_rank + 1) * per_rank - 1, self.args.num_experts)
        self.param_names = parameter_names(model)  # names in the unsharded model, for the layout-free checkpoint
        if self.pipelined:  # this rank's stage of the model, wrapping the modules just built (same weights)
            model = build_pipeline(model, self.family.name, self.grid, cfg.parallel.pipeline_partition)
            PP_COMM.install()
        # gradient bytes a ring all-reduce moves per step and rank (ZeRO's reduce-scatter + all-gather: the same)
        dp = plan.data_parallel_size * plan.context_parallel_size  # gradients are reduced over dp x cp ranks
        grad_bytes = 2 if self.precision in ("bf16", "fp16") else 4
        from pretrain.parallel.expert import expert_slice

        # expert slices are reduced over the dp / ep ranks holding the same experts only
        edp = dp // cfg.parallel.expert_model_parallel_size
        dense = sum(p.numel() for p in model.parameters() if not expert_slice(p))
        experts = sum(p.numel() for p in model.parameters() if expert_slice(p))
        self.dp_bytes_per_step = int((2 * (dp - 1) / dp * dense + 2 * (edp - 1) / max(edp, 1) * experts) * grad_bytes)
        self.model = model
        return model

    def build_engine(self) -> None:
        engine_cls = get_engine(self.cfg.engine.name)
        self.engine = engine_cls(self.model, self.cfg, self.batch, self.device, self.grid, self.param_names,
                                 self.family)
        self.model = None  # the engine holds this rank's part; the rest of the full model is freed
        # dropout: different masks per data-parallel rank, the same within a tensor-parallel group
        seed_everything(self.grid.dropout_seed(self.cfg.seed))

    def resume(self) -> "Trainer":
        """Restore the checkpoint chosen in :meth:`plan`, write the run files, start metrics and the data stream."""
        cfg, dist = self.cfg, self.dist
        if self.resume_tag:
            self.resume_state, self._rng = self.engine.load(self.ckpt_dir, self.resume_tag, self.same_layout)
            self.load_state_dict(self.resume_state)
            log.info("resumed from %s at step %d (%d samples consumed)", self.ckpt_dir / self.resume_tag,
                     self.step, self.consumed_samples)
            lost, last_logged = preemption.steps_lost(self.run_dir / METRICS_FILE, self.step)
            self.steps_lost = lost
            if dist.is_main:
                log.info("restart: %d steps lost (logged up to step %d before it, resuming at step %d)%s",
                         lost, last_logged, self.step,
                         "".join(f", {k}={v}" for k, v in preemption.restart_info().items()))
        if dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
            (self.run_dir / f"{self.engine.name}.json").write_text(json.dumps(self.engine.config, indent=2) + "\n")
        self.metrics = MetricsLogger(self.run_dir, dist.is_main, cfg.logger.wandb, OmegaConf.to_container(cfg, resolve=True),
                                     self.resume_state.get("wandb_id"), self.step, self.max_steps)
        self.flops = self.family.flops_per_token(self.args)
        self.peak_flops, self.peak_source = peak_flops_per_device(self.device, self.precision,
                                                                  cfg.trainer.peak_flops_per_device)
        self._log_setup(self.peak_source)
        self.checkpointer = Checkpointer(cfg.checkpoint.interval, cfg.checkpoint.keep_last, cfg.checkpoint.save_at_end)
        from pretrain.data.tracking import MixtureTracker

        self.callbacks = CallbackList([
            self.guard,
            StepRecorder(cfg.trainer.log_interval),
            *self.family.callbacks(self.args),  # the family's own: GPT's MoE losses, drops, loads, all-to-all bytes
            *context_callbacks(self.batch.context_parallel_size),  # cp_a2a_bytes
            Evaluator(cfg.trainer.eval_interval, cfg.trainer.eval_iters),
            MixtureTracker(self),
            self.metrics,
            preemption.StopOnRequest(self.stop_request),
            self.checkpointer,
            *([CompileTimer(cfg.trainer.compile_backend)] if cfg.trainer.compile else []),
            *(self.distill.callbacks() if self.distill else []),  # soft/hard loss parts, teacher_val_loss
            *self.extra_callbacks,
        ])
        unclaimed = self.callbacks.load_state_dict(self.resume_state.get("callbacks", {}))
        if unclaimed:
            log.info("the checkpoint holds state of callbacks this run does not have: %s", ", ".join(unclaimed))
        self.seek_data(self.consumed_samples)
        self.guard.attach(self)
        self.engine.train()
        return self

    def train(self) -> dict[str, Any]:
        """Steps until ``trainer.max_steps`` or a stop request; returns the run's summary."""
        if self._rng is not None:  # last, so the dropout stream continues exactly where it stopped
            ckpt.set_rng_state(self._rng)
            self._rng = None
        t_start, self.first_step = time.perf_counter(), self.step
        self.callbacks.on_train_start(self)
        while self.step < self.max_steps:
            preemption.maybe_hang(self.step + 1, self.dist.rank)
            t0, lr = time.perf_counter(), self.engine.lr()
            self.guard.before_step(self)
            self.batches.take_checksum()
            loss_sum = self.engine.train_step(self.batches, self.batch.grad_accum_steps, self.device)
            self.step += 1
            self.consumed_samples += self.batch.global_batch_size
            out = StepOutput(self.step, loss_sum, lr, self.batches.take_checksum(), t0)
            self.callbacks.on_step_end(self, out)  # guard, record, evaluate, log, stop request, checkpoint
            if self.rollback_request:
                self.rollback(*self.rollback_request)
            if self.stop_reason:
                log.info("stopping after step %d of %d (%s); the checkpoint is complete",
                         self.step, self.max_steps, self.stop_reason)
                break
        if self.step == self.first_step:
            log.info("nothing to do: the checkpoint is at step %d and trainer.max_steps=%d", self.step, self.max_steps)
        summary = {
            "steps": self.step, "steps_this_run": self.step - self.first_step, "final_loss": self.last_loss,
            "final_val_loss": self.last_val_loss, "consumed_tokens": self.consumed_samples * self.seq,
            "wall_time_s": round(time.perf_counter() - t_start, 2), "parameters": self.n_params,
            "stopped": self.stop_reason, "steps_lost": self.steps_lost,
        }
        self.callbacks.on_train_end(self, summary)
        return summary

    def _abort(self) -> None:
        """After an error in the loop: release what an in-process caller would otherwise inherit (the metrics
        file, W&B, the process group, the signal handlers), then let the error through."""
        try:
            self.metrics.close()
            self.stop_request.close()
        finally:
            if torch.distributed.is_initialized():
                torch.distributed.destroy_process_group()

    def close(self) -> None:
        self.metrics.close()
        barrier()
        self.engine.close()
        torch.distributed.destroy_process_group()
        self.stop_request.close()
        if self.requeue_after_stop and self.dist.is_main and self.cfg.trainer.requeue:
            preemption.requeue()

    # ------------------------------------------------------------------ state and helpers
    def state_dict(self) -> dict[str, Any]:
        """The trainer state a checkpoint holds (``trainer_state.json``), beside the engine's own files."""
        plan = self.batch
        return {
            "step": self.step, "consumed_samples": self.consumed_samples,
            "consumed_tokens": self.consumed_samples * self.seq,
            "wandb_id": self.metrics.wandb_id, "family": self.family.name, "model_args": asdict(self.args),
            "world_size": self.dist.world_size, "global_batch_size": plan.global_batch_size,
            "tokenizer": str(self.tokenizer.path) if self.tokenizer.path else None,
            "zero_stage": plan.zero_stage, "tensor_parallel_size": plan.tensor_parallel_size,
            "pipeline_parallel_size": plan.pipeline_parallel_size,
            "expert_parallel_size": self.cfg.parallel.expert_model_parallel_size,
            "seed": self.cfg.seed, "name": self.cfg.name,
            "callbacks": self.callbacks.state_dict(),
        }

    def request_stop(self, reason: str, requeue: bool = False) -> None:
        """End the run after the current step, with a checkpoint of it when asked before the Checkpointer runs
        (a callback of ``order`` < 50). Every rank must ask at the same step (decide on all-reduced values, as
        the metrics record's loss is). ``requeue``: the job should come back (preemption), so SLURM requeues it."""
        self.stop_reason = self.stop_reason or reason
        self.requeue_after_stop = self.requeue_after_stop or requeue

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.consumed_samples = int(state["step"]), int(state["consumed_samples"])

    def request_rollback(self, tag: str, consumed_samples: int) -> None:
        """Reload checkpoint ``tag`` after the current step's callbacks and continue at data position
        ``consumed_samples``; every rank must ask at the same step. The step is not saved (the Checkpointer
        skips it)."""
        self.rollback_request = (tag, consumed_samples)

    def rollback(self, tag: str, consumed_samples: int) -> None:
        """Collective, in-process: model, optimizer, LR schedule and RNG states from checkpoint ``tag`` (a resume
        without a restart), the data stream from sample ``consumed_samples`` (past what led there), ``latest``
        pointed back at ``tag``. The callbacks get the checkpoint's state (the guard keeps its memory of the
        episode) and ``on_train_start`` again: the loop restarts at the checkpoint's step."""
        self.rollback_request = None
        tag_dir = self.ckpt_dir / tag
        state = ckpt.read_state(tag_dir)
        plan = self.batch
        same = ckpt.check_layout(tag_dir, state, self.world, plan.zero_stage, plan.tensor_parallel_size,
                                 plan.pipeline_parallel_size, engine=self.cfg.engine.name,
                                 expert_parallel_size=self.cfg.parallel.expert_model_parallel_size)
        state, rng = self.engine.load(self.ckpt_dir, tag, same)
        self.load_state_dict(state)
        self.consumed_samples = consumed_samples
        self.callbacks.load_state_dict({k: v for k, v in state.get("callbacks", {}).items() if k != self.guard.state_key})
        self.guard.rolled_back(self, state)
        if self.dist.is_main:
            ckpt.set_latest(self.ckpt_dir, tag)
        self.seek_data(consumed_samples)
        self.callbacks.on_train_start(self)
        if rng is not None:
            ckpt.set_rng_state(rng)
        log.info("rolled back to %s: step %d, continuing at sample %d", tag_dir, self.step, consumed_samples)

    def seek_data(self, consumed_samples: int) -> None:
        """The training stream from global sample ``consumed_samples`` on (all ranks together)."""
        self.batches = BatchStream(iter(self.loader(self.data.train, self.num_train_samples, consumed_samples)))

    def loader(self, dataset, total: int, start: int):
        """Batches of this data-parallel rank from sample ``start`` on (``total`` samples in all)."""
        from pretrain.data.sampler import PretrainingSampler, make_loader

        plan = self.batch
        sampler = PretrainingSampler(total, start, plan.micro_batch_size, self.dp_rank, plan.data_parallel_size)
        return make_loader(dataset, sampler, self.cfg.data.num_workers, self.transform)

    def _log_setup(self, peak_src: str) -> None:
        cfg, plan, args = self.cfg, self.batch, self.args
        log.info(
            "model %s (%s): %.2fM parameters (%d layers, hidden %d, vocab %d) | %s on %d x %s (%s) | "
            "tp %d x pp %d x dp %d%s, %s | global batch %d = micro %d x dp %d x accum %d | "
            "%.3g model FLOPs/token | peak %.3g FLOP/s/device (%s)",
            cfg.model.name, self.family.name, self.n_params / 1e6, args.num_layers, args.hidden_size,
            args.vocab_size, self.precision, self.dist.world_size, self.device.type, self.dist.backend,
            plan.tensor_parallel_size, plan.pipeline_parallel_size, plan.data_parallel_size,
            f" x cp {plan.context_parallel_size}" if plan.context_parallel_size > 1 else "", self.engine.describe(plan),
            plan.global_batch_size, plan.micro_batch_size, plan.data_parallel_size, plan.grad_accum_steps,
            self.flops["model"], self.peak_flops, peak_src,
        )

