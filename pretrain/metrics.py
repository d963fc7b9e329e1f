"""Per-step metrics: the record of a step (:class:`StepRecorder`) and where it goes (:class:`MetricsLogger`):
``<run_dir>/metrics.jsonl``, Weights & Biases, and a console line with the ETA.

Only rank 0 writes; every rank builds the record (its all-reduce is a collective).
"""

from __future__ import annotations

import json
import logging
import math
import resource
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from pretrain.callbacks import Callback, StepOutput
from pretrain.distributed import all_reduce_mean
from pretrain.flops import check_mfu, forget_cpu_peak
from pretrain.parallel.pipeline import PP_COMM
from pretrain.parallel.tensor import TP_COMM

if TYPE_CHECKING:
    from pretrain.trainer import Trainer

log = logging.getLogger("pretrain")

METRICS_FILE = "metrics.jsonl"


def peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux -> GiB


def truncate_metrics(path: Path, last_step: int) -> None:
    """On resume, forget records of steps after the checkpoint (they will be logged again)."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line).get("step", 0) <= last_step]
    path.write_text("".join(line + "\n" for line in kept))


class StepRecorder(Callback):
    """Every ``trainer.log_interval`` steps, the first step of a run and the last: loss (mean over the
    data-parallel ranks), throughput, MFU, memory, data position, the batch checksum and the bytes each
    parallel dimension moved per step."""

    order = 10

    def __init__(self, log_interval: int):
        self.log_interval = log_interval
        self.last_logged_step = 0
        self.warned_mfu = False

    def on_train_start(self, trainer: "Trainer") -> None:
        self.last_logged_step = trainer.step

    def due(self, trainer: "Trainer", step: int) -> bool:
        return step % self.log_interval == 0 or step == trainer.max_steps or step == trainer.first_step + 1

    def on_step_end(self, trainer: "Trainer", out: StepOutput) -> None:
        if not self.due(trainer, out.step) and not out.record:  # a step the guard acted on is always recorded
            return
        plan, device, world = trainer.batch, trainer.device, trainer.dist.world_size
        loss, mean_checksum = all_reduce_mean(
            [out.loss_sum.item() / plan.grad_accum_steps, out.checksum], device, trainer.dp_group
        )
        trainer.last_loss = loss
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        dt = time.perf_counter() - out.t0
        tok_s = plan.global_batch_size * trainer.seq / dt
        tflops = trainer.flops["model"] * tok_s / world / 1e12
        since = out.step - self.last_logged_step
        out.record.update({
            "step": out.step,
            "loss": loss,
            "ppl": float(torch.tensor(loss).clamp(max=50).exp()),
            "lr": out.lr,
            "grad_norm": trainer.engine.grad_norm(),
            "loss_scale": trainer.engine.loss_scale(),
            "step_time_s": dt,
            "tokens_per_s": tok_s,
            "tokens_per_s_per_device": tok_s / world,
            "tflops_per_device": tflops,
            "hw_tflops_per_device": trainer.flops["hardware"] * tok_s / world / 1e12,
            "mfu": tflops * 1e12 / trainer.peak_flops,
            "consumed_samples": trainer.consumed_samples,
            "consumed_tokens": trainer.consumed_samples * trainer.seq,
            "peak_mem_gb": peak_memory_gb(device),
            "batch_checksum": round(mean_checksum * plan.data_parallel_size),
            # bytes moved per step by each parallel dimension: tensor-parallel collectives as counted by
            # the sharded layers (forward and backward), data-parallel gradient all-reduce as a ring moves it
            **{f"comm_tp_{k}_bytes": v // since for k, v in TP_COMM.take().items()},
            "comm_dp_allreduce_bytes": trainer.dp_bytes_per_step,
        })
        if not self.warned_mfu and (warning := check_mfu(out.record["mfu"], trainer.peak_source)):
            if "cached in" in trainer.peak_source and trainer.dist.is_main and forget_cpu_peak(trainer.precision):
                warning += "; the cached CPU peak is dropped, so the next run measures it again"
            log.warning(warning)
            self.warned_mfu = True
        if trainer.pipelined:  # activations and their gradients this rank sent to its neighbour stages
            out.record["comm_pp_send_bytes"] = PP_COMM.take() // since
        self.last_logged_step = out.step


class MetricsLogger(Callback):
    order = 30

    def __init__(self, run_dir: Path, enabled: bool, wandb_cfg, config: dict[str, Any], wandb_id: str | None,
                 resume_step: int, max_steps: int):
        self.enabled = enabled
        self.max_steps = max_steps
        self.run = None
        self.path = run_dir / METRICS_FILE
        self._t0 = time.perf_counter()
        self._start_step = resume_step
        if not enabled:
            return
        truncate_metrics(self.path, resume_step)
        self._file = open(self.path, "a")
        mode = wandb_cfg.mode.value if hasattr(wandb_cfg.mode, "value") else str(wandb_cfg.mode)
        if mode != "disabled":
            import wandb

            self.run = wandb.init(
                dir=str(run_dir), project=wandb_cfg.project, entity=wandb_cfg.entity, name=wandb_cfg.name,
                group=wandb_cfg.group, tags=list(wandb_cfg.tags), id=wandb_id, resume="allow", mode=mode,
                config=config,
            )
            self.run.define_metric("*", step_metric="step")

    @property
    def wandb_id(self) -> str | None:
        return self.run.id if self.run is not None else None

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        self._file.write(json.dumps(clean) + "\n")
        self._file.flush()
        if self.run is not None:
            self.run.log({k: v for k, v in record.items() if v is not None})
        log.info(self._line(record))

    def _line(self, r: dict[str, Any]) -> str:
        step = r["step"]
        if "loss" not in r:  # validation-only record
            return f"step {step:>6}/{self.max_steps} | val_loss {r['val_loss']:.4f} | val_ppl {r['val_ppl']:.2f}"
        done = step - self._start_step
        elapsed = time.perf_counter() - self._t0
        eta = elapsed / max(done, 1) * (self.max_steps - step)
        parts = [
            f"step {step:>6}/{self.max_steps}",
            f"loss {r['loss']:.4f}",
            f"lr {r['lr']:.2e}",
            f"gnorm {r['grad_norm']:.3f}" if r.get("grad_norm") is not None else "gnorm -",
            f"{r['tokens_per_s'] / 1e3:.1f}k tok/s",
            f"{r['tflops_per_device']:.2f} TFLOP/s/dev",
            f"MFU {100 * r['mfu']:.1f}%",
            f"{r['step_time_s']:.3f} s/step",
            f"mem {r['peak_mem_gb']:.1f} GiB",
            f"ETA {time.strftime('%H:%M:%S', time.gmtime(eta))}",
        ]
        if "val_loss" in r:
            parts.append(f"val_loss {r['val_loss']:.4f}")
        if "guard_action" in r:
            parts.append(f"guard {r['guard_action']}")
        if "moe_aux_loss" in r:  # pretrain.models.gpt.moe_metrics
            parts.append(f"moe aux {r['moe_aux_loss']:.3f} drop {100 * r['moe_dropped_fraction']:.1f}% "
                         f"load {r['moe_expert_load_min']:.2f}-{r['moe_expert_load_max']:.2f}")
        return " | ".join(parts)

    def on_step_end(self, trainer: "Trainer", out: StepOutput) -> None:
        if out.record:
            self.log(out.record)

    def on_train_end(self, trainer: "Trainer", summary: dict[str, Any]) -> None:
        self.summary(summary)

    def summary(self, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if self.run is not None:
            for k, v in values.items():
                self.run.summary[k] = v
        log.info("summary: " + ", ".join(f"{k}={v}" for k, v in values.items()))

    def close(self) -> None:
        if not self.enabled:
            return
        self._file.close()
        if self.run is not None:
            self.run.finish()
