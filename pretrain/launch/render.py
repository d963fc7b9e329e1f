"""Render sbatch scripts: ``#SBATCH`` lines and settings from :class:`SlurmConfig`, then the verbatim body of
a script in ``slurm/`` (one implementation of the launch logic, whether submitted by hand or by a helper)."""

from __future__ import annotations

import logging
import shlex
import shutil
import subprocess
from pathlib import Path

from pretrain.core.errors import ConfigError
from pretrain.launch.config import REPO, SLURM_DIR, SlurmConfig

log = logging.getLogger(__name__)
BODY_MARK = "# ---- body"


def body_of(script: str) -> str:
    """Everything after the ``# ---- body`` line of ``slurm/<script>``."""
    text = (SLURM_DIR / script).read_text()
    head, mark, rest = text.partition(BODY_MARK)
    if not mark:
        raise ConfigError(f"{SLURM_DIR / script}: no '{BODY_MARK}' line separating its #SBATCH header from its body")
    return rest.split("\n", 1)[1]


def allocation_lines(s: SlurmConfig, job_name: str, ntasks_per_node: int, output: str,
                     signal: bool = True) -> list[str]:
    """The ``#SBATCH`` options of a job (one task per node for torchrun, one per GPU for srun)."""
    opts = [f"--job-name={s.job_name or job_name}", f"--nodes={s.nodes}", f"--ntasks-per-node={ntasks_per_node}"]
    if s.gpus_per_node > 0:
        opts.append(f"--gpus-per-node={s.gpus_per_node}")
    if s.cpus_per_task:
        opts.append(f"--cpus-per-task={s.cpus_per_task}")
    if s.mem is not None:
        opts.append(f"--mem={s.mem}")
    opts.append(f"--time={s.time}")
    for key in ("partition", "account", "qos", "constraint", "reservation"):
        if getattr(s, key):
            opts.append(f"--{key}={getattr(s, key)}")
    if s.exclusive:
        opts.append("--exclusive")
    if signal and s.signal_seconds > 0:
        # B: the batch shell gets it and forwards it to the training step (slurm/train.sbatch)
        opts.append(f"--signal=B:USR1@{s.signal_seconds}")
    opts.append("--requeue" if s.requeue else "--no-requeue")
    opts += ["--open-mode=append", f"--output={output}"]
    opts += list(s.extra_sbatch)
    return [f"#SBATCH {o}" for o in opts]


def exports(values: dict[str, object]) -> list[str]:
    return [f"export {k}={shlex.quote(str(v))}" for k, v in values.items() if v is not None]


def script(header: list[str], settings: list[str], setup: list[str], args: list[str], body_script: str,
           comment: str) -> str:
    lines = ["#!/bin/bash", f"# {comment}", *header, "", "# ---- settings (rendered from the config) ----",
             *settings, *setup, "set -- " + " ".join(shlex.quote(a) for a in args), BODY_MARK + " (slurm/"
             + body_script + ") ----"]
    return "\n".join(lines) + "\n" + body_of(body_script)


def common_settings(s: SlurmConfig) -> list[str]:
    return exports({"PRETRAIN_REPO": REPO, "PRETRAIN_VENV": s.venv or REPO / ".venv", **s.env})


def sbatch(path: Path, extra: list[str] = (), env: dict[str, str] | None = None) -> str:
    """Submit; return the job id (``sbatch --parsable`` prints ``id[;cluster]``)."""
    exe = shutil.which("sbatch")
    if exe is None:
        raise ConfigError("sbatch is not on PATH: run this on a SLURM login node (or use --dry-run)")
    proc = subprocess.run([exe, "--parsable", *extra, str(path)], capture_output=True, text=True, env=env, timeout=120)
    if proc.returncode != 0:
        raise ConfigError(f"sbatch {path} failed ({proc.returncode}): {(proc.stderr or proc.stdout).strip()}")
    return proc.stdout.strip().split(";")[0]
