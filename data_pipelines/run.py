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
(``<output_dir>/manifest.json``).
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from pretrain.core.atomic import atomic_write
from data_pipelines.config import GLOBAL_STAGES, STAGES, plain, validate
from data_pipelines.executor import (
    MiB,
    LocalExecutor,
    Part,
    StageTiming,
    dump_json,
    fingerprint,
    parts_for_shard,
    plan_parts,
    plan_to_json,
    read_marker,
    remove_stale_tmp,
    require,
    summary_table,
    write_marker,
)
from data_pipelines.stages import (
    Layout,
    Task,
    bucket_task,
    documents_part,
    read_part,
    signatures_part,
    tokenize_part,
    train_tokenizer_file,
)
from pretrain.core.errors import UserError

log = logging.getLogger("data_pipelines.run")

PER_PART = {"read": read_part, "signatures": signatures_part, "documents": documents_part, "tokenize": tokenize_part}
# The stage each per-part stage reads from (same part).
UPSTREAM = {"signatures": "read", "documents": "read", "tokenize": "documents"}
STAGE_DIRS = ("work/read", "work/signatures", "documents", "tokens", *(f"work/markers/{s}" for s in PER_PART))


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
    """One run over ``cfg``: the plan, the fingerprints, and the stages in order."""

    def __init__(self, cfg: DictConfig):
        from data_pipelines.filters import filter_spec_for_source
        from data_pipelines.sources import source_inputs

        validate(cfg)
        self.cfg = cfg
        self.layout = Layout(Path(cfg.output_dir).resolve())
        self.ex = cfg.executor
        self.sources: dict[str, dict[str, Any]] = {n: plain(cfg.sources[n]) for n in sorted(cfg.sources)}
        self.filters: dict[str, Any] = plain(cfg.filters)
        self.dedup: dict[str, Any] = plain(cfg.dedup)
        self.tokenizer: dict[str, Any] = plain(cfg.tokenizer)
        self.dedup_on = bool(self.dedup.get("exact") or self.dedup.get("minhash"))
        inputs = [(n, s["kind"], source_inputs(n, s)) for n, s in self.sources.items()]
        self.parts: list[Part] = plan_parts(inputs, max(1, int(self.ex.part_size_mb * MiB)))
        self.mine = parts_for_shard(self.parts, self.ex.shard, self.ex.num_shards)
        self._fp: dict[tuple[str, int | None], str] = {}
        # Per-part fingerprints chain: a changed filter list of one source redoes that source's parts and
        # everything global after them, nothing else.
        for p in self.parts:
            spec, _ = filter_spec_for_source(self.filters, p.source, p.kind)
            self._fp["read", p.global_index] = fingerprint(
                {"source": self.sources[p.source], "filters": plain(spec), "files": p.files, "sizes": p.sizes,
                 "index": p.index}
            )
            # the global index is the part's dedup key space: a shifted index needs new signatures
            self._fp["signatures", p.global_index] = fingerprint(
                {"read": self._fp["read", p.global_index], "dedup": self.dedup, "key": p.global_index}
            )
        self._fp["cluster", None] = fingerprint(
            {"sig": [self._fp["signatures", p.global_index] for p in self.parts], "keys": [p.global_index for p in self.parts]}
        )
        for p in self.parts:
            self._fp["documents", p.global_index] = fingerprint(
                {"read": self._fp["read", p.global_index], "dedup": self._fp["cluster", None] if self.dedup_on else self.dedup}
            )
        tok_cfg = {k: v for k, v in self.tokenizer.items() if k != "batch_size"}
        if tok_cfg.get("path"):  # a given file edited in place must not leave the old shards "complete"
            tok_cfg["file_sha256"] = hashlib.sha256(Path(tok_cfg["path"]).read_bytes()).hexdigest()
        self._fp["tokenizer", None] = fingerprint(
            {"docs": [self._fp["documents", p.global_index] for p in self.parts], "tokenizer": tok_cfg}
        )
        for p in self.parts:
            self._fp["tokenize", p.global_index] = fingerprint(
                {"documents": self._fp["documents", p.global_index], "tokenizer": self._fp["tokenizer", None]}
            )
        self._fp["report", None] = fingerprint(
            {"tok": [self._fp["tokenize", p.global_index] for p in self.parts], "cluster": self._fp["cluster", None],
             "dedup_on": self.dedup_on}
        )

    # -------------------------------------------------------------------------------------- bookkeeping
    def fp(self, stage: str, part: Part | None = None) -> str:
        return self._fp[stage, part.global_index if part is not None else None]

    def marker(self, stage: str, part: Part | None = None) -> dict[str, Any] | None:
        return read_marker(self.layout.marker(stage, part), self.fp(stage, part))

    def done(self, stage: str, part: Part | None = None) -> bool:
        out = self.layout.output(stage, part)
        return self.marker(stage, part) is not None and out is not None and out.exists()

    def task(self, part: Part, stage: str) -> Task:
        return Task(
            root=str(self.layout.root), part=part, fingerprint=self.fp(stage, part),
            source=self.sources[part.source], filters=self.filters, dedup=self.dedup, tokenizer=self.tokenizer,
            batch_size=int(self.ex.batch_size),
        )

    def sync_plan(self) -> None:
        """Record the plan; when the inputs changed since the last run here, remove parts that no longer exist."""
        path = self.layout.work / "plan.json"
        new = plan_to_json(self.parts)
        if path.exists():
            try:
                old = json_load(path)
            except ValueError:
                old = None
            if old == new:
                return
            wanted = {(p.source, p.name) for p in self.parts}
            removed = 0
            for d in STAGE_DIRS:
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
        if shard is None and "report" in self.ex.stages and self.done("report"):
            log.info("every stage is complete in %s; nothing to do", lay.root)
            summary.complete = True
            return summary
        for stage in STAGES:
            if stage not in self.ex.stages:
                continue
            if stage in ("signatures", "cluster") and not self.dedup_on:
                continue
            if stage in GLOBAL_STAGES:
                if self.done(stage):
                    executor.record(StageTiming(stage, tasks_skipped=1))
                    continue
                if shard is not None:
                    log.info(
                        "shard %d: per-part stages done up to '%s'; the global stage '%s' runs in one run without "
                        "executor.shard once every shard has finished", shard, stage, stage,
                    )
                    summary.stopped_before = stage
                    return summary
                remove_stale_tmp(lay.marker(stage).parent, stage)
                getattr(self, f"_{stage}")(executor)
            else:
                self._per_part(stage, executor)
        summary.complete = shard is None and self.done("report")
        if summary.complete and not self.ex.keep_intermediate:
            for d in ("read", "signatures", "dedup"):
                shutil.rmtree(lay.work / d, ignore_errors=True)
            log.info("removed intermediate data under %s (executor.keep_intermediate=false)", lay.work)
        return summary

    def _prerequisites(self, stage: str, parts: list[Part]) -> None:
        up = UPSTREAM.get(stage)
        if up is not None:
            missing = [p.label for p in parts if not self.done(up, p)]
            require(not missing, f"stage '{stage}' needs stage '{up}' of parts {missing[:5]}{' ...' if len(missing) > 5 else ''}; "
                                 f"run it first (executor.stages=[{up}] with the same shard settings)")
        glob_up = {"documents": "cluster" if self.dedup_on else None, "tokenize": "tokenizer"}.get(stage)
        if glob_up is not None:
            require(self.done(glob_up), f"stage '{stage}' needs the global stage '{glob_up}': run "
                                        f"`python -m data_pipelines.run output_dir={self.layout.root} "
                                        f"executor.stages=[{glob_up}]` (no executor.shard) first")

    def _per_part(self, stage: str, executor: LocalExecutor) -> None:
        todo = [p for p in self.mine if not self.done(stage, p)]
        skipped = len(self.mine) - len(todo)
        if skipped:
            log.info("stage %s: %d parts already complete, %d to do", stage, skipped, len(todo))
        self._prerequisites(stage, todo)
        for p in todo:  # a marker a killed run was writing (its part is redone now)
            remove_stale_tmp(self.layout.marker(stage, p).parent, p.name)
        if stage == "read":
            total, unit = sum(p.size for p in todo), "B"
        else:
            total, unit = self._docs_in(stage, todo), "doc"
        tasks = [self.task(p, stage) for p in todo]
        executor.map(stage, PER_PART[stage], tasks, total=total, unit=unit, skipped=skipped, measure=_measure(stage))

    def _docs_in(self, stage: str, parts: list[Part]) -> int:
        up = UPSTREAM[stage]
        n = 0
        for p in parts:
            m = self.marker(up, p) or {}
            n += int(m.get("docs", 0))
        return n

    # -------------------------------------------------------------------------------------- global stages
    def _all_parts_done(self, stage: str) -> None:
        missing = [p.label for p in self.parts if not self.done(stage, p)]
        require(not missing, f"stage '{stage}' is incomplete for parts {missing[:5]}{' ...' if len(missing) > 5 else ''}; "
                             "run the shards that own them (or a run without executor.shard) first")

    def _cluster(self, executor: LocalExecutor) -> None:
        from data_pipelines.dedup import merge_stage

        self._all_parts_done("signatures")
        out = self.layout.dedup_dir
        shutil.rmtree(out, ignore_errors=True)  # the folder is this stage's alone: no stale shard files
        out.mkdir(parents=True)
        n = int(self.dedup.get("bucket_parts", 1))
        paths = [str(self.layout.signatures(p)) for p in self.parts]
        t0 = time.perf_counter()
        executor.map("buckets", bucket_task, [(paths, str(out), self.dedup, i, n) for i in range(n)], total=n, unit="part", record=False)
        stats = merge_stage(str(out), self.dedup, n)
        executor.record(StageTiming("cluster", 1, 0, stats.docs_in, 0, time.perf_counter() - t0, time.perf_counter() - t0))
        write_marker(self.layout.marker("cluster"), self.fp("cluster"), {"stats": stats.to_dict()})

    def _tokenizer(self, executor: LocalExecutor) -> None:
        from pretrain.core.tokenizer import TokenizerSpec

        self._all_parts_done("documents")
        spec = TokenizerSpec.from_config(self.tokenizer)
        total = sum(int((self.marker("documents", p) or {}).get("bytes", 0)) for p in self.parts)
        t0 = time.perf_counter()
        info = train_tokenizer_file(self.layout, self.parts, spec, total, int(self.ex.batch_size))
        dt = time.perf_counter() - t0
        executor.record(StageTiming("tokenizer", 1, 0, info.get("train_docs", 0), info.get("train_bytes", 0), dt, dt))
        log.info("tokenizer: %s, vocabulary %d, eod %s = %d", spec.kind, info["vocab_size"], info["eod_token"], info["eod_id"])
        write_marker(self.layout.marker("tokenizer"), self.fp("tokenizer"), info)

    def _report(self, executor: LocalExecutor) -> None:
        from data_pipelines.report import build_report, write_manifest_for, write_report

        self._all_parts_done("tokenize")
        for d, stem in ((self.layout.root, "report"), (self.layout.root, "manifest"), (self.layout.root / "report", "")):
            remove_stale_tmp(d, stem)
        t0 = time.perf_counter()
        per_part = {
            p.global_index: {s: self.marker(s, p) for s in ("read", "documents", "tokenize")} for p in self.parts
        }
        cluster = self.marker("cluster") if self.dedup_on else None
        tokenizer = self.marker("tokenizer")
        report = build_report(self.parts, per_part, cluster, tokenizer, self.dedup_on)
        write_manifest_for(self.layout, self.parts, per_part, tokenizer)
        write_report(self.layout.root, report)
        dt = time.perf_counter() - t0
        executor.record(StageTiming("report", 1, 0, 0, 0, dt, dt))
        write_marker(self.layout.marker("report"), self.fp("report"), {"sources": sorted(self.sources)})


def json_load(path: Path) -> Any:
    import json

    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _measure(stage: str):
    def measure(payload: dict[str, Any]) -> tuple[int, int]:
        if stage == "read":
            st = payload["read"]
            return int(st["docs_out"]), int(st["bytes_in"])
        if stage in ("signatures",):
            st = payload["stats"]
            return int(st["docs_in"]), int(st["bytes_in"])
        if stage == "documents":
            st = payload.get("dedup")
            return (int(st["docs_in"]), int(st["bytes_in"])) if st else (int(payload["docs"]), int(payload["bytes"]))
        return int(payload["docs"]), int(payload["bytes"])

    return measure


def run_pipeline(cfg: DictConfig, pipe: Pipeline | None = None) -> RunSummary:
    """Run the stages ``cfg.executor.stages`` (all by default) over ``cfg``; see the module docstring.

    ``pipe``: the :class:`Pipeline` of ``cfg`` when the caller already built it (validated and planned)."""
    pipe = pipe if pipe is not None else Pipeline(cfg)
    ex = cfg.executor
    with LocalExecutor(int(ex.workers), str(ex.start_method), bool(ex.progress)) as executor:
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
