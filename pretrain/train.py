"""Training entry point.

    python -m pretrain.train experiment=gpt_tiny run_dir=runs/tiny                 # one process
    torchrun --nproc_per_node 8 -m pretrain.train experiment=gpt_125m data.path=D   # one node

Order of work: check the config and the data (cheap, before any process group or model exists), then
start the process group, build model and DeepSpeed engine, resume from the latest checkpoint in the run
directory if there is one, and train.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from pretrain import checkpoint as ckpt
from pretrain import preemption
from pretrain.config import register_configs, validate_schema
from pretrain.distributed import (
    all_reduce_mean, barrier, ensure_launcher_env, env_rank, env_world_size, init_distributed, pick_device,
)
from pretrain.engine import batch_plan, check_precision, current_loss_scale, deepspeed_config, initialize
from pretrain.core.errors import ConfigError, UserError
from pretrain.flops import peak_flops_per_device
from pretrain.metrics import MetricsLogger, peak_memory_gb
from pretrain.models import TokenizerInfo, get_family
from pretrain.parallel import reshard
from pretrain.parallel.pipeline import PP_COMM, build_pipeline, parameter_names, to_pipe_batch
from pretrain.parallel.tensor import TP_COMM

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
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def run(cfg: DictConfig) -> dict[str, Any]:
    ensure_launcher_env()
    rank, world = env_rank(), env_world_size()
    run_dir = Path(cfg.run_dir).absolute()
    setup_logging(rank, run_dir)
    # SIGUSR1/SIGTERM and trainer.max_wall_time_s -> checkpoint at a step boundary, then requeue (preemption.py)
    stop = preemption.StopRequest(cfg.trainer.max_wall_time_s)

    # ---- 1. everything that can be checked without a process group or a model ----
    validate_schema(cfg)
    device = pick_device(cfg.trainer.device)
    precision = cfg.trainer.precision.value
    check_precision(precision, device)
    plan = batch_plan(cfg, world)
    if plan.zero_stage != cfg.parallel.zero_stage:
        log.info("parallel.zero_stage=%d with one data-parallel rank partitions nothing: running ZeRO stage 0",
                 cfg.parallel.zero_stage)
    if cfg.trainer.max_steps < 1:
        raise ConfigError(f"trainer.max_steps={cfg.trainer.max_steps} must be >= 1")
    if cfg.trainer.eval_interval < 0 or cfg.trainer.log_interval < 1:
        raise ConfigError("trainer.eval_interval must be >= 0 and trainer.log_interval >= 1")

    from pretrain.data.dataset import build_datasets, check_vocab, tokenizer_vocab_size

    family = get_family(cfg.model.family)
    n_eval = cfg.trainer.eval_iters * plan.micro_batch_size * plan.data_parallel_size
    cache_dir = cfg.data.index_cache_dir or str(run_dir / "data_index")
    from pretrain.core.manifest import read_manifest
    from pretrain.data.sample import ensure_sample_data

    manifest = read_manifest(cfg.data.path if cfg.data.path else ensure_sample_data(kind=cfg.data.sample_tokenizer))
    tokenizer = TokenizerInfo.load(manifest.tokenizer, None, manifest.eod_id)
    tokenizer.vocab_size = tokenizer_vocab_size(manifest.tokenizer) if manifest.tokenizer else manifest.vocab_size
    args = family.resolve_args(cfg.model, tokenizer)

    ckpt_dir = Path(cfg.checkpoint.dir or run_dir / "checkpoints").absolute()
    ckpt_dir, resume_tag = ckpt.resolve_resume(cfg.checkpoint.resume, ckpt_dir)
    resume_state: dict[str, Any] = {}
    if resume_tag:
        resume_state = ckpt.read_state(ckpt_dir / resume_tag)
        ckpt.check_model_shape(ckpt_dir / resume_tag, resume_state, args, family.name)
        same_layout = ckpt.check_layout(ckpt_dir / resume_tag, resume_state, world, plan.zero_stage,
                                        plan.tensor_parallel_size, plan.pipeline_parallel_size)
    # The samples this run reads: from the checkpoint's position on, one global batch per remaining step. Not
    # max_steps x global batch: a resume at another data-parallel size (or batch size) has consumed a
    # different number of samples per step so far.
    start_step, start_consumed = int(resume_state.get("step", 0)), int(resume_state.get("consumed_samples", 0))
    saved_gbs = resume_state.get("global_batch_size")
    if saved_gbs is not None and saved_gbs != plan.global_batch_size:
        log.warning("the global batch changed since the checkpoint (%d -> %d samples per step): the run continues "
                    "at sample %d with the new batch, so its losses will not follow the old run's",
                    saved_gbs, plan.global_batch_size, start_consumed)
    num_train_samples = start_consumed + max(0, cfg.trainer.max_steps - start_step) * plan.global_batch_size
    data = build_datasets(cfg.data, seq_length=family.sample_length(args) - 1, seed=cfg.seed,
                          num_train_samples=num_train_samples, num_valid_samples=n_eval, cache_dir=cache_dir)
    check_vocab(data, args.vocab_size)
    transform = family.make_transform(args, tokenizer, cfg.seed)
    seq = family.tokens_per_sample(args)
    init_from = cfg.model.init_from if not resume_tag else None  # a checkpoint to resume wins over init_from
    if init_from:
        from pretrain import hf

        hf.check_compatible(init_from, family.name, args)  # config.json only: family and shape, before any work

    # ---- 2. process group, model, engine ----
    dist = init_distributed(device, cfg.parallel.backend, cfg.parallel.timeout_s)
    if cfg.trainer.deterministic:
        torch.use_deterministic_algorithms(True)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    from pretrain.parallel.topology import ParallelGrid

    grid = ParallelGrid(plan.tensor_parallel_size, plan.pipeline_parallel_size)
    pipelined = plan.pipeline_parallel_size > 1
    dp_rank, dp_group = grid.get_data_parallel_rank(), grid.get_data_parallel_group()
    seed_everything(cfg.seed)  # identical initial weights on every rank
    model = family.build(args)
    if init_from:
        hf.load_into(model, init_from, family.name, args)
    n_params = family.num_parameters(args)  # the whole model, whatever the sharding
    if plan.tensor_parallel_size > 1:
        from pretrain.parallel.parallelize import parallelize

        parallelize(model, grid.get_tensor_model_parallel_group(),  # slices the seeded full weights
                    sequence_parallel=cfg.parallel.sequence_parallel)
    param_names = parameter_names(model)  # names in the unsharded model, for the layout-free checkpoint
    if pipelined:  # this rank's stage of the model, wrapping the modules just built (same weights)
        model = build_pipeline(model, family.name, grid, cfg.parallel.pipeline_partition)
        PP_COMM.install()
    # gradient bytes a ring all-reduce moves per step and rank (ZeRO's reduce-scatter + all-gather: the same)
    dp = plan.data_parallel_size
    grad_bytes = 2 if precision in ("bf16", "fp16") else 4
    dp_bytes_per_step = int(2 * (dp - 1) / dp * sum(p.numel() for p in model.parameters()) * grad_bytes)
    ds_cfg = deepspeed_config(cfg, plan, device)
    engine, scheduler = initialize(model, cfg, ds_cfg, device, mpu=grid)
    del model  # the engine holds this rank's part; the rest of the full model is freed
    # dropout: different masks per data-parallel rank, the same within a tensor-parallel group
    seed_everything(grid.dropout_seed(cfg.seed))

    step, consumed, rng = 0, 0, None
    if resume_tag:
        if same_layout:
            state, rng = ckpt.load(engine, ckpt_dir, resume_tag, dist.rank, dist.world_size)
        else:  # another tp x pp x dp layout or ZeRO stage: weights and optimizer from the layout-free copy
            reshard.load(engine, ckpt_dir / resume_tag, param_names, grid)
            state = resume_state
            engine.global_steps, engine.global_samples = int(state["step"]), int(state["consumed_samples"])
            log.warning("the layout changed: RNG streams (dropout) restart from the seed")
        step, consumed = int(state["step"]), int(state["consumed_samples"])
        log.info("resumed from %s at step %d (%d samples consumed)", ckpt_dir / resume_tag, step, consumed)
    lost, last_logged = preemption.steps_lost(run_dir / "metrics.jsonl", step)
    if resume_tag and dist.is_main:
        log.info("restart: %d steps lost (logged up to step %d before it, resuming at step %d)%s",
                 lost, last_logged, step, "".join(f", {k}={v}" for k, v in preemption.restart_info().items()))

    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        (run_dir / "deepspeed.json").write_text(json.dumps(ds_cfg, indent=2) + "\n")
    resolved = OmegaConf.to_container(cfg, resolve=True)
    metrics = MetricsLogger(
        run_dir, dist.is_main, cfg.logger.wandb, resolved, resume_state.get("wandb_id"), step, cfg.trainer.max_steps
    )

    flops = family.flops_per_token(args)
    peak, peak_src = peak_flops_per_device(device, precision, cfg.trainer.peak_flops_per_device)
    log.info(
        "model %s (%s): %.2fM parameters (%d layers, hidden %d, vocab %d) | %s on %d x %s (%s) | tp %d x pp %d x dp %d, ZeRO-%d | "
        "global batch %d = micro %d x dp %d x accum %d | %.3g model FLOPs/token | peak %.3g FLOP/s/device (%s)",
        cfg.model.name, family.name, n_params / 1e6, args.num_layers, args.hidden_size, args.vocab_size, precision,
        dist.world_size, device.type, dist.backend, plan.tensor_parallel_size, plan.pipeline_parallel_size,
        plan.data_parallel_size, plan.zero_stage, plan.global_batch_size,
        plan.micro_batch_size, plan.data_parallel_size, plan.grad_accum_steps, flops["model"], peak, peak_src,
    )

    def state_dict(at_step: int, at_consumed: int) -> dict[str, Any]:
        return {
            "step": at_step, "consumed_samples": at_consumed, "consumed_tokens": at_consumed * seq,
            "wandb_id": metrics.wandb_id, "family": family.name, "model_args": asdict(args),
            "world_size": dist.world_size, "global_batch_size": plan.global_batch_size,
            "tokenizer": str(tokenizer.path) if tokenizer.path else None,
            "zero_stage": plan.zero_stage, "tensor_parallel_size": plan.tensor_parallel_size,
            "pipeline_parallel_size": plan.pipeline_parallel_size,
            "seed": cfg.seed, "name": cfg.name,
        }

    def write_universal(tag_dir: Path) -> None:
        if cfg.checkpoint.universal:
            reshard.save(engine, tag_dir, param_names, grid)

    from pretrain.data.sampler import PretrainingSampler, make_loader

    def loader(dataset, total: int, start: int):
        sampler = PretrainingSampler(total, start, plan.micro_batch_size, dp_rank, plan.data_parallel_size)
        return make_loader(dataset, sampler, cfg.data.num_workers, transform)

    checksum = [0]  # sum of the token ids this rank trained on: the data order, cheaply comparable

    def pipe_batches(it):
        """Loader batches as DeepSpeed's pipeline engine takes them (it pulls them on the first and last stage)."""
        for batch in it:
            checksum[0] += int(batch["input_ids"].sum())
            yield to_pipe_batch(family.name, batch)

    def evaluate() -> float:
        if pipelined:
            loss = engine.eval_batch(pipe_batches(iter(loader(data.valid, n_eval, 0))),
                                     num_micro_batches=cfg.trainer.eval_iters)
            TP_COMM.take(), PP_COMM.take()
            return all_reduce_mean([float(loss)], device, dp_group)[0]
        engine.eval()
        total, n = 0.0, 0
        with torch.no_grad():
            for batch in loader(data.valid, n_eval, 0):
                total += engine(**{k: v.to(device) for k, v in batch.items()}).item()
                n += 1
        engine.train()
        TP_COMM.take()  # evaluation traffic is not a training step's
        return all_reduce_mean([total / max(n, 1)], device, dp_group)[0]

    # ---- 3. train ----
    max_steps = cfg.trainer.max_steps
    tokens_per_step = plan.global_batch_size * seq
    batches = iter(loader(data.train, num_train_samples, consumed))
    train_iter = pipe_batches(batches) if pipelined else None
    engine.train()
    if rng is not None:
        ckpt.set_rng_state(rng)  # last, so the dropout stream continues exactly where it stopped
    t_start, first_step, last_loss, last_val = time.perf_counter(), step, float("nan"), None
    stopped, last_logged_step = None, step
    while step < max_steps:
        preemption.maybe_hang(step + 1, dist.rank)
        t0 = time.perf_counter()
        lr = engine.get_lr()[0]
        loss_sum = torch.zeros((), device=device)
        checksum[0] = 0
        if pipelined:  # 1F1B over the step's micro-batches; the mean loss comes back on every stage
            loss_sum += engine.train_batch(data_iter=train_iter).float() * plan.grad_accum_steps
        else:
            for _ in range(plan.grad_accum_steps):
                batch = next(batches)
                checksum[0] += int(batch["input_ids"].sum())
                loss = engine(**{k: v.to(device, non_blocking=True) for k, v in batch.items()})
                engine.backward(loss)
                engine.step()
                loss_sum += loss.detach().float()
        step += 1
        consumed += plan.global_batch_size
        do_log = step % cfg.trainer.log_interval == 0 or step == max_steps or step == first_step + 1
        do_eval = (data.valid is not None and cfg.trainer.eval_interval > 0
                   and (step % cfg.trainer.eval_interval == 0 or step == max_steps))
        if do_log:
            last_loss, mean_checksum = all_reduce_mean(
                [loss_sum.item() / plan.grad_accum_steps, checksum[0]], device, dp_group
            )
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            dt = time.perf_counter() - t0
            tok_s = tokens_per_step / dt
            tflops = flops["model"] * tok_s / dist.world_size / 1e12
            gnorm = engine.get_global_grad_norm()
            record = {
                "step": step,
                "loss": last_loss,
                "ppl": float(torch.tensor(last_loss).clamp(max=50).exp()),
                "lr": lr,
                "grad_norm": float(gnorm) if gnorm is not None else None,
                "loss_scale": current_loss_scale(engine),
                "step_time_s": dt,
                "tokens_per_s": tok_s,
                "tokens_per_s_per_device": tok_s / dist.world_size,
                "tflops_per_device": tflops,
                "hw_tflops_per_device": flops["hardware"] * tok_s / dist.world_size / 1e12,
                "mfu": tflops * 1e12 / peak,
                "consumed_samples": consumed,
                "consumed_tokens": consumed * seq,
                "peak_mem_gb": peak_memory_gb(device),
                "batch_checksum": round(mean_checksum * plan.data_parallel_size),
                # bytes moved per step by each parallel dimension: tensor-parallel collectives as counted by
                # the sharded layers (forward and backward), data-parallel gradient all-reduce as a ring moves it
                **{f"comm_tp_{k}_bytes": v // (step - last_logged_step) for k, v in TP_COMM.take().items()},
                "comm_dp_allreduce_bytes": dp_bytes_per_step,
            }
            if pipelined:  # activations and their gradients this rank sent to its neighbour stages
                record["comm_pp_send_bytes"] = PP_COMM.take() // (step - last_logged_step)
        if do_eval:
            last_val = evaluate()
            val = {"val_loss": last_val, "val_ppl": float(torch.tensor(last_val).clamp(max=50).exp())}
            if do_log:
                record.update(val)
            else:
                record = {"step": step, **val}
        if do_log or do_eval:
            metrics.log(record)
        if do_log:
            last_logged_step = step
        interval = cfg.checkpoint.interval
        stopped = stop.check(device) if step < max_steps else None  # every rank stops after the same step
        if (interval > 0 and step % interval == 0) or (step == max_steps and cfg.checkpoint.save_at_end) or stopped:
            path = ckpt.save(engine, ckpt_dir, step, state_dict(step, consumed), dist.rank, cfg.checkpoint.keep_last,
                             write_extra=write_universal)
            log.info("saved checkpoint %s", path)
        if stopped:
            log.info("stopping after step %d of %d (%s); the checkpoint is complete", step, max_steps, stopped)
            break

    elapsed = time.perf_counter() - t_start
    summary = {
        "steps": step, "steps_this_run": step - first_step, "final_loss": last_loss, "final_val_loss": last_val,
        "consumed_tokens": consumed * seq, "wall_time_s": round(elapsed, 2), "parameters": n_params,
        "stopped": stopped, "steps_lost": lost if resume_tag else 0,
    }
    if step == first_step:
        log.info("nothing to do: the checkpoint is at step %d and trainer.max_steps=%d", step, max_steps)
    metrics.summary(summary)
    metrics.close()
    barrier()
    torch.distributed.destroy_process_group()
    stop.close()
    if stopped and dist.is_main and cfg.trainer.requeue:
        preemption.requeue()
    return summary


@hydra.main(config_path="../conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except RuntimeError as e:
        if not preemption.is_collective_timeout(e):
            raise
        print(f"error: rank {env_rank()}: distributed communication failed: {str(e).splitlines()[0][:300]}. A rank "
              f"that hangs or dies ends the job after parallel.timeout_s={cfg.parallel.timeout_s} s instead of "
              "blocking forever; restart it to resume from the last checkpoint", file=sys.stderr)
        sys.exit(1)


register_configs()

if __name__ == "__main__":
    main()
