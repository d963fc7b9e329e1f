"""Entry point: raw corpora -> cleaned, deduplicated documents, a tokenizer, token shards and a report.

    python -m data_pipelines.run output_dir=data/pipeline
    python -m data_pipelines.run output_dir=D sources=none +sources.enwiki='{kind: wiki, paths: [/data/enwiki.xml.bz2]}'
    python -m data_pipelines.run output_dir=D filters=none dedup=none tokenizer=wordpiece executor.workers=8

On many machines (a SLURM job array of N tasks, indices 0..N-1), each task runs the per-part stages for its
share of the parts, then one unsharded run does the global stages and whatever is left::

    python -m data_pipelines.run output_dir=D --shard $SLURM_ARRAY_TASK_ID --num-shards N   # or executor=slurm
    python -m data_pipelines.run output_dir=D                                             # after all tasks

(``--shard``/``--num-shards`` are spellings of ``executor.shard``/``executor.num_shards``;
``executor.stages=[read,signatures]`` restricts a run to some stages.) Completed parts are never redone, so
any run can be killed and started again. The trainer reads the result with ``data.path=<output_dir>``
(``<output_dir>/manifest.json``). ``python -m data_pipelines.executor.slurm`` submits the whole pipeline as
chained SLURM job arrays.

:class:`Pipeline` walks the stage list (:data:`data_pipelines.stages.STAGES`) and does what every stage
shares: fingerprints, completion markers, prerequisites, skipping what is done, sharding and timings.
"""

from __future__ import annotations

import functools
import json
import logging
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import hydra
from omegaconf import DictConfig, OmegaConf

from data_pipelines.config import plain, validate
from data_pipelines.executor import (
    LocalExecutor,
    MiB,
    Part,
    StageTiming,
    dump_json,
    parts_for_shard,
    plan_parts,
    plan_to_json,
    read_marker,
    remove_stale_tmp,
    require,
    summary_table,
    write_marker,
)
from data_pipelines.stages import GLOBAL, PART, STAGES, GlobalStage, Layout, PartStage, Stage, Task
from data_pipelines.stages.base import dedup_enabled
from pretrain.core.atomic import atomic_write
from pretrain.core.errors import UserError

log = logging.getLogger("data_pipelines.run")


@dataclass
class RunSummary:
    """What a run did: per-stage timings (for the summary and the benchmark), and where it stopped."""

    output_dir: Path
    parts: int
    parts_in_shard: int
    timings: list[StageTiming] = field(default_factory=list)
    complete: bool = False
    stopped_before: str | None = None


class Pipeline:
    """One run over ``cfg``: the plan, the fingerprints, and the stages of ``stages`` in order.

    Stages read from here what they need: the plain config sections (``sources``, ``filters``, ``dedup``,
    ``tokenizer``), the ``parts``, the ``layout``, the upstream fingerprints (:meth:`fp`) and markers."""

    def __init__(self, cfg: DictConfig, stages: Sequence[Stage] = STAGES):
        from data_pipelines.sources import source_inputs
        from data_pipelines.sources.split import split_file

        validate(cfg, stages)
        self.cfg = cfg
        self.stages: tuple[Stage, ...] = tuple(stages)
        self.by_name: dict[str, Stage] = {s.name: s for s in self.stages}
        self.layout = Layout(Path(cfg.output_dir).resolve())
        self.ex = cfg.executor
        self.config: dict[str, Any] = plain(cfg)  # what workers get (Task.config)
        self.sources: dict[str, dict[str, Any]] = {n: self.config["sources"][n] for n in sorted(cfg.sources)}
        self.filters: dict[str, Any] = self.config["filters"]
        self.dedup: dict[str, Any] = self.config["dedup"]
        self.tokenizer: dict[str, Any] = self.config["tokenizer"]
        self.dedup_on = dedup_enabled(self.dedup)
        inputs = [(n, s["kind"], source_inputs(n, s)) for n, s in self.sources.items()]
        split = functools.partial(split_file, cache=self.layout.work / "splits")  # huge files into many parts
        self.parts: list[Part] = plan_parts(inputs, max(1, int(self.ex.part_size_mb * MiB)), split,
                                            int(self.ex.get("split_min_mb", 1.0) * MiB))
        self.mine = parts_for_shard(self.parts, self.ex.shard, self.ex.num_shards)
        # Fingerprints chain in stage order (each may read its upstream ones): a changed filter list of one
        # source redoes that source's parts and everything global after them, nothing else.
        self._fp: dict[tuple[str, int | None], str] = {}
        for stage in self.stages:
            for part in self.units(stage):
                self._fp[stage.name, None if part is None else part.global_index] = stage.fingerprint(self, part)

    # -------------------------------------------------------------------------------------- bookkeeping
    def units(self, stage: Stage) -> list[Part | None]:
        """The units of work of a stage: every part, or the one global unit (``None``)."""
        return list(self.parts) if stage.scope == PART else [None]

    def fp(self, stage: str, part: Part | None = None) -> str:
        return self._fp[stage, part.global_index if part is not None else None]

    def marker(self, stage: str, part: Part | None = None) -> dict[str, Any] | None:
        return read_marker(self.layout.marker(stage, part), self.fp(stage, part))

    def done(self, stage: str, part: Part | None = None) -> bool:
        out = self.by_name[stage].output(self.layout, part)
        return self.marker(stage, part) is not None and out.exists()

    def complete(self) -> bool:
        """Whether the last stage (the report) is complete: then so is everything it depends on."""
        last = self.stages[-1]
        return all(self.done(last.name, u) for u in self.units(last))

    def task(self, part: Part, stage: str) -> Task:
        return Task(root=str(self.layout.root), part=part, fingerprint=self.fp(stage, part), config=self.config,
                    batch_size=int(self.ex.batch_size))

    def sync_plan(self) -> None:
        """Record the plan; when the inputs changed since the last run here, remove parts that no longer exist."""
        path = self.layout.work / "plan.json"
        new = plan_to_json(self.parts)
        if path.exists():
            try:
                old = json.loads(path.read_text(encoding="utf-8"))
            except ValueError:
                old = None
            if old == new:
                return
            wanted = {(p.source, p.name) for p in self.parts}
            per_part = [s for s in self.stages if s.scope == PART]
            removed = 0
            for d in [s.folder for s in per_part] + [f"work/markers/{s.name}" for s in per_part]:
                base = self.layout.root / d
                if not base.is_dir():
                    continue
                for src_dir in sorted(base.iterdir()):
                    if not src_dir.is_dir():
                        continue
                    for f in sorted(src_dir.iterdir()):
                        if f.name.startswith("part-") and (src_dir.name, f.name.split(".")[0]) not in wanted:
                            f.unlink(missing_ok=True)  # shard tasks may prune at the same time
                            removed += 1
                    if not any(src_dir.iterdir()):  # a source that is gone
                        src_dir.rmdir()
            if removed:
                log.warning("inputs changed since the last run in %s: removed %d files of parts that no longer exist",
                            self.layout.root, removed)
        atomic_write(path, dump_json(new))

    # -------------------------------------------------------------------------------------------- running
    def run(self, executor: LocalExecutor) -> RunSummary:
        lay = self.layout
        lay.work.mkdir(parents=True, exist_ok=True)
        self.sync_plan()
        summary = RunSummary(lay.root, len(self.parts), len(self.mine), executor.timings)
        shard = self.ex.shard
        where = "" if shard is None else f" (shard {shard} of {self.ex.num_shards}: {len(self.mine)} of {len(self.parts)} parts)"
        log.info("pipeline: %d sources, %d parts -> %s%s", len(self.sources), len(self.parts), lay.root, where)
        if shard is None and self.stages[-1].name in self.ex.stages and self.complete():
            log.info("every stage is complete in %s; nothing to do", lay.root)
            summary.complete = True
            return summary
        self._start_workers(executor)
        for stage in self.stages:
            if stage.name not in self.ex.stages or not stage.enabled(self):
                continue
            if isinstance(stage, GlobalStage):
                if self.done(stage.name):
                    executor.record(StageTiming(stage.name, tasks_skipped=1))
                    continue
                if shard is not None:
                    log.info(
                        "shard %d: per-part stages done up to '%s'; the global stage '%s' runs in one run without "
                        "executor.shard once every shard has finished", shard, stage.name, stage.name,
                    )
                    summary.stopped_before = stage.name
                    return summary
                self._global(stage, executor)
            else:
                self._per_part(stage, executor)
        summary.complete = shard is None and self.complete()
        if summary.complete and not self.ex.keep_intermediate:
            for stage in self.stages:
                if stage.intermediate:
                    shutil.rmtree(lay.root / stage.folder, ignore_errors=True)
            log.info("removed intermediate data under %s (executor.keep_intermediate=false)", lay.work)
        return summary

    def _start_workers(self, executor: LocalExecutor) -> None:
        """Start the worker processes before the first stage when some per-part stage of this run has two or more
        parts to do (so that it would use them), with the set-up of those stages done ahead of their tasks."""
        if executor.workers <= 1:
            return
        busy = []
        for stage in self.stages:
            if isinstance(stage, PartStage) and stage.name in self.ex.stages and stage.enabled(self):
                undone = 0
                for p in self.mine:
                    undone += not self.done(stage.name, p)
                    if undone > 1:
                        busy.append(stage)
                        break
        if busy:
            executor.start(functools.partial(warm_worker, tuple(busy), self.config))

    def _prerequisites(self, stage: Stage, parts: list[Part]) -> None:
        """Every enabled upstream stage is complete for ``parts`` (a global stage: for every part)."""
        for up in (self.by_name[u] for u in stage.upstream):
            if not up.enabled(self):
                continue
            if up.scope == GLOBAL:
                require(self.done(up.name), f"stage '{stage.name}' needs the global stage '{up.name}': run "
                                            f"`python -m data_pipelines.run output_dir={self.layout.root} "
                                            f"executor.stages=[{up.name}]` (no executor.shard) first")
                continue
            missing = [p.label for p in parts if not self.done(up.name, p)]
            more = " ..." if len(missing) > 5 else ""
            if stage.scope == PART:
                require(not missing, f"stage '{stage.name}' needs stage '{up.name}' of parts {missing[:5]}{more}; "
                                     f"run it first (executor.stages=[{up.name}] with the same shard settings)")
            else:
                require(not missing, f"stage '{up.name}' is incomplete for parts {missing[:5]}{more}; "
                                     "run the shards that own them (or a run without executor.shard) first")

    def _per_part(self, stage: PartStage, executor: LocalExecutor) -> None:
        todo = [p for p in self.mine if not self.done(stage.name, p)]
        skipped = len(self.mine) - len(todo)
        if skipped:
            log.info("stage %s: %d parts already complete, %d to do", stage.name, skipped, len(todo))
        self._prerequisites(stage, todo)
        for p in todo:  # a marker a killed run was writing (its part is redone now)
            remove_stale_tmp(self.layout.marker(stage.name, p).parent, p.name)
        total = sum(p.size for p in todo) if stage.unit == "B" else self._docs_in(stage, todo)
        tasks = [self.task(p, stage.name) for p in todo]
        executor.map(stage.name, stage.execute, tasks, total=total, unit=stage.unit, skipped=skipped,
                     measure=stage.measure)

    def _docs_in(self, stage: Stage, parts: list[Part]) -> int | None:
        """Documents the stage will see: the counts in the markers of its first per-part upstream stage."""
        up = next((u for u in stage.upstream if self.by_name[u].scope == PART), None)
        if up is None:
            return None
        return sum(int((self.marker(up, p) or {}).get("docs", 0)) for p in parts)

    def _global(self, stage: GlobalStage, executor: LocalExecutor) -> None:
        self._prerequisites(stage, self.parts)
        remove_stale_tmp(self.layout.marker(stage.name).parent, stage.name)
        t0 = time.perf_counter()
        payload = stage.run(self, executor)
        dt = time.perf_counter() - t0
        docs, nbytes = stage.measure(payload)
        executor.record(StageTiming(stage.name, 1, 0, docs, nbytes, dt, dt))
        write_marker(self.layout.marker(stage.name), self.fp(stage.name), payload)


def warm_worker(stages: Sequence[PartStage], config: dict[str, Any]) -> None:
    """A worker's set-up ahead of its first task: each stage's :meth:`~data_pipelines.stages.PartStage.warm`."""
    for stage in stages:
        stage.warm(config)


def run_pipeline(cfg: DictConfig, pipe: Pipeline | None = None) -> RunSummary:
    """Run the stages ``cfg.executor.stages`` (all by default) over ``cfg``; see the module docstring.

    ``pipe``: the :class:`Pipeline` of ``cfg`` when the caller already built it (validated and planned)."""
    pipe = pipe if pipe is not None else Pipeline(cfg)
    ex = cfg.executor
    if ex.get("backend", "local") == "ray":  # executor=ray: the tasks on a Ray cluster (data_pipelines/executor/ray.py)
        from data_pipelines.executor.ray import RayExecutor

        executor: Any = RayExecutor.from_config(ex)
    else:
        executor = LocalExecutor(int(ex.workers), str(ex.start_method), bool(ex.progress))
    with executor:
        summary = pipe.run(executor)
    if executor.timings:
        log.info("summary (%s):\n%s", summary.output_dir, summary_table(executor.timings))
    if summary.complete:
        log.info("done: %s (manifest.json, report.md, documents/, tokenizer/, tokens/)", summary.output_dir)
    return summary


# --------------------------------------------------------------------------------------------- command line
def _log_name(cfg: DictConfig) -> str:
    shard = cfg.executor.shard
    return "run.log" if shard is None else f"run-shard{int(shard):05d}-of-{int(cfg.executor.num_shards):05d}.log"


def _setup_logging(cfg: DictConfig) -> None:
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not any(isinstance(h, logging.StreamHandler) and getattr(h, "stream", None) is sys.stderr for h in root.handlers):
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(fmt)
        root.addHandler(h)
    logs = Path(cfg.output_dir) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    fh = logging.FileHandler(logs / _log_name(cfg))
    fh.setFormatter(fmt)
    root.addHandler(fh)


@hydra.main(config_path="../conf", config_name="pipeline", version_base="1.3")
def _main(cfg: DictConfig) -> None:
    try:
        pipe = Pipeline(cfg)  # validates and plans before anything is written: a config error names the key
        _setup_logging(cfg)
        logs = Path(cfg.output_dir) / "logs"
        atomic_write(logs / _log_name(cfg).replace(".log", ".config.yaml"), OmegaConf.to_yaml(cfg, resolve=True).encode())
        summary = run_pipeline(cfg, pipe)
        atomic_write(logs / _log_name(cfg).replace(".log", ".timings.json"), dump_json(
            [t.__dict__ | {"docs_per_s_per_worker": t.per_worker()[0], "mb_per_s_per_worker": t.per_worker()[1]}
             for t in summary.timings]
        ))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def _translate_argv(argv: list[str]) -> list[str]:
    """``--shard 3`` / ``--shard=3`` / ``--num-shards 8`` -> Hydra overrides ``executor.shard=3`` ..."""
    names = {"--shard": "executor.shard", "--num-shards": "executor.num_shards", "--num_shards": "executor.num_shards",
             "--workers": "executor.workers"}
    out: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        key, eq, val = a.partition("=")
        if key in names:
            if not eq:
                if i + 1 >= len(argv):
                    print(f"error: {key} needs a value", file=sys.stderr)
                    sys.exit(2)
                val = argv[i + 1]
                i += 1
            out.append(f"{names[key]}={val}")
        else:
            out.append(a)
        i += 1
    return out


def main() -> None:
    args = _translate_argv(sys.argv[1:])
    info = any(a in ("--help", "-h", "--hydra-help", "--info", "-i", "--cfg", "-c") or a.startswith("--info=") or
               a.startswith("--cfg=") for a in args)
    if not info and not any(a.split("=", 1)[0].lstrip("+") == "output_dir" for a in args):
        # Hydra would fail on its run dir (${output_dir}/logs) with a traceback before our code runs.
        print("error: output_dir: missing; run `python -m data_pipelines.run output_dir=<dir> [overrides]`", file=sys.stderr)
        sys.exit(2)
    sys.argv = [sys.argv[0], *args]
    _main()


if __name__ == "__main__":
    main()
