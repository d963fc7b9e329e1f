"""Submit the data pipeline to SLURM: each stage a job, per-part stages as job arrays over shards, chained.

    python -m data_pipelines.executor.slurm output_dir=/data/pipeline slurm.array=64 slurm.cpus_per_task=16 \\
        slurm.partition=cpu slurm.time=12:00:00 [pipeline overrides] [--dry-run]

The stages in order (:data:`data_pipelines.stages.STAGES`) are cut into groups: a run of consecutive per-part
stages (``read, signatures`` / ``documents`` / ``tokenize``) becomes one job array of ``slurm.array`` tasks,
task ``i`` doing the parts ``i`` owns (``executor=slurm``, the same sharding as ``--shard i --num-shards N``);
each global stage (``cluster``, ``tokenizer``, ``report``) becomes one task. Each job starts ``afterok`` the
previous one. Before submitting, the helper reads the same completion markers the pipeline writes: a group
that is complete is not submitted, and an array covers only the shards with missing parts, so resubmitting
after a failure redoes only what is missing. Scripts and logs go to ``<output_dir>/logs/slurm/``; the job ids
are printed one per line, the last one is the job that writes the report.

The allocation keys (``slurm.*``, ``conf/slurm/``) and the script rendering are the trainer's
(:mod:`pretrain.launch`); this module only knows the pipeline's stages.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from data_pipelines.config import validate  # registers the pipeline schema, which compose() needs
from data_pipelines.executor.parts import parts_for_shard
from data_pipelines.run import Pipeline
from data_pipelines.stages import GLOBAL
from pretrain.core.errors import ConfigError, UserError
from pretrain.launch.config import SlurmConfig, compose
from pretrain.launch.render import allocation_lines, common_settings, sbatch, script

log = logging.getLogger("data_pipelines.executor.slurm")
PROG = "python -m data_pipelines.executor.slurm"
HELPER_KEYS = ("executor", "executor.stages", "executor.shard", "executor.num_shards")


@dataclass
class Job:
    name: str
    stages: list[str]
    shards: list[int] | None  # array indices; None = one task (a global stage)
    text: str = ""


def plan(cfg, num_shards: int) -> list[Job]:
    """The stage groups still to run, with the shards of each array that have parts left to do."""
    pipe = Pipeline(cfg)
    stages = [s for s in pipe.stages if s.name in cfg.executor.stages and s.enabled(pipe)]
    groups: list[list[str]] = []
    for s in stages:
        if s.scope != GLOBAL and groups and pipe.by_name[groups[-1][-1]].scope != GLOBAL:
            groups[-1].append(s.name)
        else:
            groups.append([s.name])
    jobs: list[Job] = []
    for g in groups:
        if pipe.by_name[g[0]].scope == GLOBAL:
            if jobs or not pipe.done(g[0]):
                jobs.append(Job(g[0], g, None))
            continue
        shards = [i for i in range(num_shards)
                  if any(not pipe.done(s, p) for s in g for p in parts_for_shard(pipe.parts, i, num_shards))]
        if jobs:  # an upstream job will rewrite inputs of this group: every shard with parts runs (and skips what is done)
            shards = [i for i in range(num_shards) if parts_for_shard(pipe.parts, i, num_shards)]
        if shards:
            jobs.append(Job("+".join(g), g, shards))
    return jobs


def _array_spec(shards: list[int], parallelism: int | None) -> str:
    ranges, start = [], shards[0]
    for prev, cur in zip(shards, shards[1:] + [None]):
        if cur != prev + 1:
            ranges.append(f"{start}-{prev}" if prev != start else str(start))
            start = cur
    return ",".join(ranges) + (f"%{parallelism}" if parallelism else "")


def render(overrides: list[str]) -> tuple[list[Job], Path, SlurmConfig]:
    for o in overrides:
        key = o.split("=", 1)[0].lstrip("+~")
        if key in HELPER_KEYS:
            raise ConfigError(f"{o}: the helper sets {key} itself (per job); leave it out and use slurm.array=N")
    cfg, s = compose("pipeline", overrides)
    validate(cfg)
    out = Path(cfg.output_dir).absolute()
    logs = out / "logs" / "slurm"
    user = [o for o in overrides if o.split("=", 1)[0].lstrip("+~").split(".")[0] != "slurm"
            and o.split("=", 1)[0] != "output_dir"] + [f"output_dir={out}"]
    jobs = plan(cfg, s.array)
    for job in jobs:
        stage_list = "[" + ",".join(job.stages) + "]"
        if job.shards is None:
            args = [*user, f"executor.stages={stage_list}", "executor.progress=false",
                    f"executor.workers={s.cpus_per_task or 1}"]
            extra = []
            output = str(logs / f"%j-{job.name}.out")
        else:
            args = [*user, "executor=slurm", f"executor.num_shards={s.array}", f"executor.stages={stage_list}"]
            extra = [f"#SBATCH --array={_array_spec(job.shards, s.array_parallelism)}"]
            output = str(logs / f"%A_%a-{job.name}.out")
        one_task = SlurmConfig(**{**s.__dict__, "nodes": 1, "gpus_per_node": 0})
        header = allocation_lines(one_task, f"pipeline-{job.name}", 1, output, signal=False) + extra
        comment = f"data pipeline stage(s) {', '.join(job.stages)} of {out}; rendered by {PROG}"
        job.text = script(header, common_settings(s), list(s.setup), args, "pipeline.sbatch", comment)
    return jobs, logs, s


def submit(jobs: list[Job], logs: Path) -> list[str]:
    logs.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    ids: list[str] = []
    for i, job in enumerate(jobs):
        path = logs / f"{stamp}-{i}-{job.name}.sbatch"
        path.write_text(job.text)
        dep = [f"--dependency=afterok:{ids[-1]}", "--kill-on-invalid-dep=yes"] if ids else []
        ids.append(sbatch(path, dep))
        log.info("stage %-22s job %s%s  (%s)", job.name, ids[-1],
                 f" array {len(job.shards)} tasks" if job.shards else "", path)
    return ids


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="print the scripts, submit nothing")
    p.add_argument("overrides", nargs="*", help="pipeline overrides (output_dir=... required) and slurm.* keys")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        if not any(o.split("=", 1)[0].lstrip("+") == "output_dir" for o in a.overrides):
            raise ConfigError(f"output_dir: missing; run `{PROG} output_dir=<dir> ...`")
        jobs, logs, _ = render(a.overrides)
        if not jobs:
            log.info("every stage is complete: nothing to submit")
            return 0
        if a.dry_run:
            for job in jobs:
                sys.stdout.write(job.text + "\n")
            return 0
        ids = submit(jobs, logs)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("\n".join(ids))
    return 0


if __name__ == "__main__":
    sys.exit(main())
