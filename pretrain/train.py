"""Training entry point.

    python -m pretrain.train experiment=gpt_tiny run_dir=runs/tiny                 # one process
    torchrun --nproc_per_node 8 -m pretrain.train experiment=gpt_125m data.path=D   # one node

The work is the :class:`pretrain.trainer.Trainer`'s: plan (config, data and resume checked before any
process group or model exists), build, resume, train, close. Here: Hydra, and errors as one line.
"""

from __future__ import annotations

import logging
import os
import sys

import hydra
from omegaconf import DictConfig

from pretrain import preemption
from pretrain.config import register_configs
from pretrain.core.errors import ConfigError, UserError
from pretrain.distributed import env_rank
from pretrain.trainer import Trainer
from pretrain.validation import check_command_line, report_user_error


def run(cfg: DictConfig) -> dict:
    return Trainer(cfg).fit()


@hydra.main(config_path="../conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except UserError as e:
        sys.exit(report_user_error(e))  # once (rank 0) under torchrun
    except RuntimeError as e:
        if not preemption.is_collective_timeout(e):
            raise
        print(f"error: rank {env_rank()}: distributed communication failed: {str(e).splitlines()[0][:300]}. A rank "
              f"that hangs or dies ends the job after parallel.timeout_s={cfg.parallel.timeout_s} s instead of "
              "blocking forever; restart it to resume from the last checkpoint", file=sys.stderr)
        sys.exit(1)


def exit_without_teardown(code: int) -> None:
    """End this rank of a multi-process job with ``code`` once its work is done and closed (checkpoint written,
    metrics and W&B finished, process group destroyed), without the interpreter's teardown.

    At that teardown the C++ objects still referenced from Python (process groups DeepSpeed's group registry
    keeps, gloo's I/O threads) are destroyed in no set order, and now and then one destroys a thread that is
    still joinable: ``terminate called without an active exception``, SIGABRT, and torchrun marks a finished
    run as failed (seen after the final checkpoint of ``t5_tp2`` and ``llama_dp2_zero2_accum2`` runs). Every
    file of ours is closed by then; logging handlers, the standard streams and C's stdio buffers (native
    libraries' ``printf`` to a log file) are flushed here. ``atexit`` callbacks do not run: persistent
    DataLoader workers end on their own when they see their parent gone, and ``wandb`` leaves its two empty
    temporary folders."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken pipe: nothing left to save
            pass
    try:
        import ctypes

        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):  # no C library to flush through (not Linux/macOS)
        pass
    os._exit(code)


register_configs()

if __name__ == "__main__":
    try:
        check_command_line(sys.argv[1:])  # a misspelt key: "did you mean ...?" before Hydra composes anything
    except ConfigError as e:
        sys.exit(report_user_error(e))
    main()
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        exit_without_teardown(0)
