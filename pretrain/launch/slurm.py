"""Submit a training run to SLURM from its Hydra config.

    python -m pretrain.launch.slurm experiment=gpt_125m data.path=/data/pipeline trainer.micro_batch_size=8 \\
        slurm.nodes=4 slurm.gpus_per_node=8 slurm.partition=gpu slurm.time=48:00:00
    python -m pretrain.launch.slurm --dry-run experiment=gpt_125m trainer.micro_batch_size=8 slurm.nodes=4
    python -m pretrain.launch.slurm --wait experiment=gpt_tiny slurm=cpu             # block until the job ends

``slurm.*`` keys (``conf/slurm/``) describe the allocation; every other argument is a training override and
is checked by composing the training config before anything is submitted. The script is
``slurm/train.sbatch``'s body under ``#SBATCH`` lines rendered from the config, written to
``<run_dir>/slurm/<job id>.sbatch`` (what ran is on disk); the job's log is ``<run_dir>/slurm/<job id>.out``
(appended across requeues). The job id is printed on stdout.

Before anything is rendered, the pre-flight planner (``pretrain.planner``, ``python -m pretrain.plan``) predicts
the memory per GPU of the layout on ``slurm.gpu`` and refuses one that will not fit (``slurm.skip_plan=true``
submits anyway).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

from pretrain.core.errors import ConfigError, UserError
from pretrain.launch.config import SlurmConfig, compose
from pretrain.launch.render import allocation_lines, common_settings, exports, sbatch, script

log = logging.getLogger("pretrain.launch.slurm")


def render_train(overrides: list[str]) -> tuple[str, Path, SlurmConfig]:
    """(script text, run dir, SLURM settings) for a training command line."""
    from pretrain.config import validate_schema
    from pretrain.engines import batch_plan

    cfg, s = compose("train", overrides)
    validate_schema(cfg)
    # the layout of the whole allocation, checked here: a mistake is one line now, not an error on every rank
    # of a job that waited in the queue (data paths are checked by the job, on the nodes that read them)
    batch_plan(cfg, s.nodes * s.procs)
    preflight(cfg, s)
    run_dir = Path(cfg.run_dir).absolute()
    per_node_tasks = 1 if s.launcher == "torchrun" else s.procs
    header = allocation_lines(s, str(cfg.name), per_node_tasks, str(run_dir / "slurm" / "%j.out"))
    settings = common_settings(s) + exports({
        "LAUNCHER": s.launcher, "NPROC_PER_NODE": s.procs, "MAX_RESTARTS": s.max_restarts,
        "MASTER_PORT": s.master_port,
    })
    # the run dir is pinned: every node, every torchrun restart and every requeue resume the same run
    args = [o for o in overrides if o.split("=", 1)[0].lstrip("+") not in ("run_dir",) and not _is_slurm(o)]
    args.append(f"run_dir={run_dir}")
    if not s.requeue:
        args.append("trainer.requeue=false")
    comment = (f"training job of {cfg.name}: {s.nodes} node(s) x {s.procs} process(es), launcher {s.launcher}; "
               f"rendered by python -m pretrain.launch.slurm")
    return script(header, settings, list(s.setup), args, "train.sbatch", comment), run_dir, s


def preflight(cfg, s: SlurmConfig) -> None:
    """Refuse a layout the planner predicts will not fit in ``slurm.gpu``'s memory, in seconds instead of after
    the queue (``slurm.skip_plan=true`` submits anyway). CPU jobs (``slurm.gpus_per_node=0``) are not planned,
    and neither is a model whose vocabulary comes from a tokenizer this host cannot read (a warning says so)."""
    if s.skip_plan:
        log.info("plan: skipped (slurm.skip_plan=true)")
        return
    if s.gpus_per_node == 0:
        log.info("plan: skipped (a CPU job, slurm.gpus_per_node=0)")
        return
    from pretrain.planner import UnknownVocabulary, make_plan
    from pretrain.planner.layouts import gib

    world = s.nodes * s.procs
    try:
        res = make_plan(cfg, world, s.gpu, s.nodes, enumerate_all=False)
    except UnknownVocabulary as e:
        log.warning("plan: skipped: %s", e)
        return
    c = res["configured"]
    summary = (f"{gib(c.memory['total']):.1f} GiB of {gib(c.usable_bytes):.1f} GiB usable per {s.gpu} (model states "
               f"{gib(c.memory['model_states']):.1f}, activations {gib(c.memory['activations']):.1f}); "
               f"~{c.time['step_s']:.2f} s/step, MFU ~{100 * c.time['mfu']:.0f}%")
    if c.fits:
        log.info("plan: fits: %s", summary)
        return
    best = make_plan(cfg, world, s.gpu, s.nodes)["best"]  # the vocabulary is known by now: the first plan read it
    hint = f"; a layout that fits: {' '.join(best.overrides)}" if best is not None else ""
    raise ConfigError(f"the layout does not fit: predicted {summary}{hint} (python -m pretrain.plan ... --gpus "
                      f"{world} --gpu {s.gpu} lists them all); set slurm.skip_plan=true to submit anyway")


def _is_slurm(arg: str) -> bool:
    return arg.split("=", 1)[0].lstrip("+").split(".")[0] == "slurm"


def submit(text: str, run_dir: Path, wait: bool = False) -> tuple[str, int]:
    """Write the script into ``<run_dir>/slurm/``, submit it, keep it as ``<job id>.sbatch``. Returns the job
    id and, with ``wait``, the job's exit code (``sbatch --wait``)."""
    folder = run_dir / "slurm"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "submit.sbatch"
    path.write_text(text)
    if not wait:
        job = sbatch(path)
        rc = 0
    else:
        # --wait: sbatch prints the id at once and returns the job's exit code at the end
        exe = shutil.which("sbatch")
        if exe is None:
            raise ConfigError("sbatch is not on PATH: run this on a SLURM login node (or use --dry-run)")
        proc = subprocess.Popen([exe, "--parsable", "--wait", str(path)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        job = proc.stdout.readline().strip().split(";")[0]
        if not job:
            raise ConfigError(f"sbatch {path} failed ({proc.wait()}): see its message above")
        print(job, flush=True)
        rc = proc.wait()
    final = folder / f"{job}.sbatch"
    os.replace(path, final)
    log.info("submitted job %s: script %s, log %s", job, final, folder / f"{job}.out")
    return job, rc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pretrain.launch.slurm", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="print the rendered sbatch script, submit nothing")
    p.add_argument("--wait", action="store_true", help="wait for the job to end (sbatch --wait); exit with its code")
    p.add_argument("overrides", nargs="*", help="training overrides and slurm.* keys")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        text, run_dir, _ = render_train(a.overrides)
        if a.dry_run:
            sys.stdout.write(text)
            return 0
        job, rc = submit(text, run_dir, a.wait)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not a.wait:
        print(job)
    return rc


if __name__ == "__main__":
    sys.exit(main())
