"""The pipeline run end to end: determinism, resume after kill -9, shard-of-N runs, config errors, report.

A small JSONL corpus of real English prose (standard-library docstrings, the heapq essay, the PSF licence)
with planted exact and near duplicates, junk and a broken line is split into one part per file, so every
stage has several parts to run, skip, kill and resume.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from data_pipelines.executor import fingerprint
from data_pipelines.run import Pipeline, run_pipeline
from data_pipelines.stages import PartStage
from data_pipelines.stages.io import iter_texts
from pretrain.core.atomic import atomic_write
from pretrain.core.errors import ConfigError, DataError
from pretrain.core.indexed import IndexedDataset
from pretrain.core.manifest import read_manifest
from pretrain.core.provenance import read_provenance

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "conf"
MODULES = ("heapq", "difflib", "argparse", "textwrap", "collections", "functools", "itertools", "string", "bisect",
           "sched", "statistics", "fractions")


def _documents() -> list[str]:
    """~100-word documents of real prose, in a fixed order."""
    import heapq

    from data_pipelines.samples.make_samples import psf_license_text

    text = heapq.__about__ + "\n\n" + psf_license_text()
    for m in MODULES:
        text += "\n\n" + (__import__(m).__doc__ or "")
    paras = [" ".join(p.split()) for p in re.split(r"\n\s*\n", text) if len(p.split()) >= 15]
    docs, cur = [], []
    for p in paras:
        cur.append(p)
        if sum(len(x.split()) for x in cur) >= 90:
            docs.append("\n\n".join(cur))
            cur = []
    return docs


def _near(doc: str) -> str:
    words = doc.split(" ")
    words[len(words) // 2] = "altered"
    return " ".join(words)


def build_corpus(tmp_path_factory) -> dict[str, Path]:
    """Two JSONL sources: alpha (4 files) and beta (2 files: copies, near copies, junk, a broken line).
    The ``corpus`` fixture (conftest.py, once per session: test_ray.py reads it too)."""
    root = tmp_path_factory.mktemp("corpus")
    docs = _documents()
    assert len(docs) >= 24, len(docs)
    alpha, beta = root / "alpha", root / "beta"
    alpha.mkdir()
    beta.mkdir()
    for f in range(4):
        with open(alpha / f"a{f}.jsonl", "w") as fh:
            for i in range(f, 20, 4):
                fh.write(json.dumps({"id": f"a-{i}", "text": docs[i]}) + "\n")
    with open(beta / "b0.jsonl", "w") as fh:
        for i in range(20, len(docs)):
            fh.write(json.dumps({"id": f"b-{i}", "text": docs[i]}) + "\n")
        fh.write(json.dumps({"id": "b-copy-1", "text": docs[1]}) + "\n")  # exact duplicate of a-1
        fh.write("{this line is not json\n")  # skipped by the reader
        fh.write(json.dumps({"id": "b-empty", "text": "   "}) + "\n")  # dropped by the reader (empty)
    with open(beta / "b1.jsonl", "w") as fh:
        fh.write(json.dumps({"id": "b-near-2", "text": _near(docs[2])}) + "\n")  # near duplicate of a-2
        fh.write(json.dumps({"id": "b-copy-3", "text": docs[3]}) + "\n")
        fh.write(json.dumps({"id": "b-junk", "text": "Buy now! Click here."}) + "\n")  # too short: filtered
    return {"alpha": alpha, "beta": beta}


def _overrides(corpus: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [
        f"output_dir={out}", "sources=none",
        f"+sources.alpha={{kind: jsonl, paths: [{corpus['alpha']}]}}",
        f"+sources.beta={{kind: jsonl, paths: [{corpus['beta']}]}}",
        "tokenizer.vocab_size=400", "executor.part_size_mb=0.000001", "executor.progress=false", *extra,
    ]


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("pipeline", overrides=overrides)


def tree_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` except logs/ (run logs and timings are not data)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and not rel.startswith("logs/"):
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def reference_run(corpus, tmp_path_factory) -> Path:
    """One uninterrupted in-process run with a single worker: the bytes every other run must reproduce.
    The ``reference`` fixture (conftest.py, once per session)."""
    out = tmp_path_factory.mktemp("reference")
    summary = run_pipeline(_compose(_overrides(corpus, out)))
    assert summary.complete and summary.parts == 6
    return out


def _cmd(overrides: list[str]) -> list[str]:
    return [sys.executable, "-m", "data_pipelines.run", *overrides]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}


# --------------------------------------------------------------------------------------------------- tests
def test_outputs_and_report_counts(reference):
    report = json.loads((reference / "report.json").read_text())
    for name, src in report["sources"].items():
        stages = src["stages"]
        assert [s["stage"] for s in stages][0] == "read" and stages[-1]["stage"] == "tokenize"
        for st in stages:  # every stage: in = out + removed, by reason
            assert st["docs_in"] == st["docs_out"] + sum(st["dropped"].values()) + sum(st["skipped"].values()), (name, st)
        for a, b in zip(stages, stages[1:]):  # and the stages chain
            assert b["docs_in"] == a["docs_out"], (name, a["stage"], b["stage"])
        assert src["documents"] == stages[-1]["docs_out"]
    beta = report["sources"]["beta"]
    read = beta["stages"][0]
    assert read["skipped"] == {"invalid_json": 1} and read["dropped"] == {"empty": 1}
    dedup = {s["stage"]: s for s in beta["stages"]}["dedup"]
    assert dedup["dropped"].get("exact_duplicate") == 2 and dedup["dropped"].get("near_duplicate") == 1, dedup
    sizes = report["dedup"]["extra"]["cluster_sizes"]
    removed = sum(report["dedup"]["dropped"].values())
    assert sizes and sum((int(k) - 1) * v for k, v in sizes.items()) == removed  # one kept per cluster
    per_source = sum(sum(s["dropped"].values()) for src in report["sources"].values() for s in src["stages"]
                     if s["stage"] == "dedup")
    assert per_source == removed
    assert sum(report["totals"]["removed"].values()) >= 5

    manifest = read_manifest(reference)
    tok = json.loads((reference / "tokenizer" / "tokenizer.json").read_text())
    eod = {t["content"]: t["id"] for t in tok["added_tokens"]}["<|endoftext|>"]
    assert manifest.eod_id == eod and manifest.dtype == "uint16"
    for name, corpus in manifest.corpora.items():
        assert corpus.documents == report["sources"][name]["documents"]
        assert corpus.tokens == report["sources"][name]["tokens"] > 0
        shards = [IndexedDataset(p) for p in corpus.prefixes]
        assert sum(len(s) for s in shards) == corpus.documents
        assert all(int(s[i][-1]) == eod for s in shards for i in range(len(s)))
        # every document's provenance sidecar record, in shard order: its source, file and id
        origins = [read_provenance(p) for p in corpus.prefixes]
        assert [len(o) for o in origins] == [len(s) for s in shards]
        recs = [o[i] for o in origins for i in range(len(o))]
        assert all(r["source"] == name and r["file"] and r["id"] and r["fingerprint"] for r in recs), recs[:2]
        assert len({r["id"] for r in recs}) == len(recs)
    md = (reference / "report.md").read_text()
    assert "## alpha" in md and "exact_duplicate" in md
    for png in ("funnel", "removals", "clusters", "tokens"):
        assert (reference / "report" / f"{png}.png").read_bytes()[:4] == b"\x89PNG"


def test_rerun_is_a_no_op_and_two_workers_give_identical_bytes(reference, corpus, tmp_path):
    before = tree_hashes(reference)
    assert run_pipeline(_compose(_overrides(corpus, reference))).complete
    assert tree_hashes(reference) == before
    out = tmp_path / "two-workers"
    run_pipeline(_compose(_overrides(corpus, out, "executor.workers=2", "executor.start_method=fork")))
    assert tree_hashes(out) == before


class _Bar:
    """Stands in for a stage's tqdm bar: its total and how far it got."""

    def __init__(self, stage: str, total: int | None, unit: str):
        self.stage, self.total, self.n = stage, total, 0

    def update(self, n: int) -> None:
        self.n += n

    def set_postfix_str(self, *args, **kwargs) -> None:
        pass

    def close(self) -> None:
        pass


def test_every_per_part_bar_ends_at_its_total_with_duplicates_dropped(corpus, tmp_path, monkeypatch):
    """The documents bar counts the read documents it is sized by, kept or dropped by dedup (it stopped short)."""
    from data_pipelines.executor import LocalExecutor

    bars: list[_Bar] = []
    monkeypatch.setattr(LocalExecutor, "_bar", lambda self, *a: bars.append(_Bar(*a)) or bars[-1])
    summary = run_pipeline(_compose(_overrides(corpus, tmp_path / "bars", "executor.stages=[read,signatures,cluster,"
                                                                          "documents]")))
    by_stage = {b.stage: b for b in bars}
    assert {"read", "signatures", "documents"} <= set(by_stage)
    for b in bars:
        assert b.n == b.total, (b.stage, b.n, b.total)
    (docs,) = [t for t in summary.timings if t.stage == "documents"]
    written = sum(json.loads(p.read_text())["docs"]
                  for p in (tmp_path / "bars" / "work" / "markers" / "documents").rglob("*.done.json"))
    assert by_stage["documents"].total == docs.docs > written  # duplicates were dropped, the bar still ended


def test_resume_after_kill_9_redoes_only_unfinished_parts(reference, corpus, tmp_path):
    out = tmp_path / "killed"
    cmd = _cmd(_overrides(corpus, out, "executor.workers=2"))
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    markers = out / "work" / "markers"
    deadline = time.monotonic() + 120
    try:
        while not list((markers / "documents").glob("*/*.done.json")):
            assert proc.poll() is None, f"run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
            assert time.monotonic() < deadline, "no part finished within 120 s"
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the whole job, workers included, as SLURM or the OOM killer would
        proc.wait()
    done = {p: p.stat().st_mtime_ns for p in markers.rglob("*.done.json")}
    assert not (out / "report.json").exists(), "the run was not interrupted"
    assert any("documents" in p.parts for p in done)
    rerun = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    for p, mtime in done.items():  # completed units were not redone
        assert p.stat().st_mtime_ns == mtime, p
    assert "already complete" in rerun.stderr
    assert tree_hashes(out) == tree_hashes(reference)


def _proc_stat(pid: int) -> tuple[int, str, int] | None:
    """(parent pid, state, start time) of a process from /proc, None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return int(fields[1]), fields[0], int(fields[19])


def _pool_workers(parent: int) -> dict[int, int]:
    """{pid: start time} of the multiprocessing workers whose parent is ``parent``: spawned ones (``spawn_main``)
    or forked ones (the parent's command line; ``start_method: auto`` forks on Linux)."""
    found = {}
    try:
        parent_cmdline = Path(f"/proc/{parent}/cmdline").read_bytes()
    except OSError:
        return found
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        stat = _proc_stat(int(entry))
        if stat is None or stat[0] != parent:
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in cmdline or cmdline == parent_cmdline:
            found[int(entry)] = stat[2]
    return found


def _alive(pid: int, start: int) -> bool:
    """Still running: not gone, not a zombie waiting to be reaped, and not a new process with a reused pid."""
    stat = _proc_stat(pid)
    return stat is not None and stat[1] != "Z" and stat[2] == start


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the workers through /proc (Linux)")
def test_workers_exit_when_the_main_process_is_killed(corpus, tmp_path):
    """kill -9 of the main process only (not its process group): its pool workers must not live on."""
    cmd = _cmd(_overrides(corpus, tmp_path / "orphaned", "executor.workers=2"))
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    workers: dict[int, int] = {}
    try:
        deadline = time.monotonic() + 120
        while len(workers) < 2:
            assert proc.poll() is None, "the run ended before its workers were seen"
            assert time.monotonic() < deadline, f"no 2 pool workers within 120 s (found {workers})"
            workers = _pool_workers(proc.pid)
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 5
        while any(_alive(p, t) for p, t in workers.items()):
            assert time.monotonic() < deadline, f"workers {sorted(p for p, t in workers.items() if _alive(p, t))} " \
                                                "outlived the main process by 5 s"
            time.sleep(0.05)
    finally:
        for pid, start in workers.items():  # stop what this test started, by pid
            if _alive(pid, start):
                os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_shard_of_n_runs_combine_to_the_same_output(reference, corpus, tmp_path):
    out = tmp_path / "sharded"

    def run(stages: str, shard: int | None = None):
        extra = [f"executor.stages=[{stages}]"]
        if shard is not None:
            extra += [f"executor.shard={shard}", "executor.num_shards=2"]
        return run_pipeline(_compose(_overrides(corpus, out, *extra)))

    # A shard run of every stage stops at the first global stage.
    s0 = run("read,signatures,cluster,documents,tokenizer,tokenize,report", 0)
    assert s0.stopped_before == "cluster" and s0.parts_in_shard == 3
    # A per-part stage whose global prerequisite has not run fails with what to run.
    with pytest.raises(DataError, match="cluster"):
        run("documents", 0)
    run("read,signatures", 1)
    run("cluster")
    for stage in ("documents", "tokenizer", "tokenize", "report"):
        if stage in ("tokenizer", "report"):
            run(stage)
        else:
            run(stage, 0)
            run(stage, 1)
    assert tree_hashes(out) == tree_hashes(reference)


class WordCount(PartStage):
    """A stage added from outside: words per part of the final documents (what docs/extending.md shows)."""

    name = "wordcount"
    upstream = ("documents",)
    folder = "work/wordcount"

    def output(self, layout, part):
        return layout.part_file(self.folder, part, ".json")

    def fingerprint(self, pipe, part):
        return fingerprint({"documents": pipe.fp("documents", part)})

    def measure(self, payload):
        return payload["docs"], 0

    def run(self, task, progress):
        texts = list(iter_texts(task.layout.documents(task.part), task.batch_size))
        words = sum(len(t.split()) for t in texts)
        atomic_write(self.output(task.layout, task.part), json.dumps({"words": words}).encode())
        progress.update(docs=len(texts), units=len(texts))
        return {"docs": len(texts), "words": words}


def test_a_new_stage_is_one_object_in_the_list(reference, corpus, tmp_path):
    from data_pipelines.stages import STAGE_NAMES, STAGES, check_order

    at = STAGE_NAMES.index("documents") + 1
    stages = [*STAGES[:at], WordCount(), *STAGES[at:]]
    names = ",".join(s.name for s in stages)
    out = tmp_path / "extended"
    cfg = _compose(_overrides(corpus, out, f"executor.stages=[{names}]"))
    assert run_pipeline(cfg, Pipeline(cfg, stages)).complete
    counts = sorted((out / "work" / "wordcount").rglob("*.json"))
    assert len(counts) == 6 and all(json.loads(p.read_text())["words"] > 0 for p in counts[:4])  # alpha parts
    ours = ("work/wordcount/", "work/markers/wordcount/")
    assert {k: v for k, v in tree_hashes(out).items() if not k.startswith(ours)} == tree_hashes(reference)
    marker = out / "work" / "markers" / "wordcount" / "alpha" / "part-00000.done.json"
    mtime = marker.stat().st_mtime_ns
    counts[1].unlink()  # one part's output lost: a run of that stage redoes only that part
    only = _compose(_overrides(corpus, out, "executor.stages=[wordcount]"))
    summary = run_pipeline(only, Pipeline(only, stages))
    assert {t.stage: (t.tasks_run, t.tasks_skipped) for t in summary.timings}["wordcount"] == (1, 5)
    assert counts[1].exists() and marker.stat().st_mtime_ns == mtime
    with pytest.raises(ConfigError, match="executor.stages: unknown stage 'wordcount'"):
        Pipeline(cfg)  # the default list does not know it
    with pytest.raises(ValueError, match="upstream \\['documents'\\] must come earlier"):
        check_order([WordCount(), *STAGES])


def test_filters_none_dedup_none_and_a_unigram_tokenizer(corpus, tmp_path):
    out = tmp_path / "raw"
    overrides = _overrides(corpus, out, "filters=none", "dedup=none", "tokenizer=unigram", "tokenizer.vocab_size=400",
                           "tokenizer.sentinel_tokens=10", "executor.keep_intermediate=false")
    run_pipeline(_compose(overrides))
    assert not (out / "work" / "read").exists()  # intermediate documents removed after the report
    before = tree_hashes(out)
    assert run_pipeline(_compose(overrides)).complete and tree_hashes(out) == before
    report = json.loads((out / "report.json").read_text())
    for src in report["sources"].values():  # nothing filtered, nothing deduplicated
        assert [s["stage"] for s in src["stages"]] == ["read", "tokenize"]
        assert src["documents"] == src["stages"][0]["docs_out"]
    assert report["sources"]["beta"]["documents"] == 16
    assert not (out / "work" / "signatures").exists()
    manifest = read_manifest(out)
    vocab = json.loads((out / "tokenizer" / "tokenizer.json").read_text())
    ids = {t["content"]: t["id"] for t in vocab["added_tokens"]}
    assert manifest.eod_id == ids["</s>"] == 1 and ids["<pad>"] == 0
    assert ids["<extra_id_0>"] == manifest.vocab_size - 1


def test_config_errors_name_the_key_before_any_work(corpus, tmp_path):
    out = tmp_path / "bad"
    cases = [
        (["sources=none", "+sources.enwiki={kind: wiki, paths: [/data/nope/enwiki.xml.bz2]}"], "/data/nope/enwiki.xml.bz2"),
        (["sources=none", f"+sources.enwiki={{kind: wikipedia, paths: [{corpus['alpha']}]}}"], "wikipedia"),
    ]
    for extra, needle in cases:
        r = subprocess.run(_cmd([f"output_dir={out}", *extra]), cwd=tmp_path, env=_env(), capture_output=True,
                           text=True, timeout=120)
        assert r.returncode != 0
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and needle in lines[0] and "enwiki" in lines[0], r.stderr
        assert "Traceback" not in r.stderr
    assert not (out / "work").exists()
    # the same checks in-process, plus what the executor validates
    for extra, match in [
        (["executor.stages=[read,bogus]"], "executor.stages"),
        (["executor.shard=2", "executor.num_shards=2"], "executor.shard"),
        (["tokenizer.path=/nonexistent/tokenizer.json"], "tokenizer.path"),
        ([f"+sources.gamma={{paths: [{corpus['alpha']}]}}"], "sources.gamma.kind"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(match)):
            Pipeline(_compose(_overrides(corpus, out, *extra)))


def test_keys_forced_in_with_plus_plus_are_refused_like_the_trainer_does(corpus, tmp_path):
    """Hydra's ``++key=value`` bypasses the typed schema at compose time; the pipeline re-checks against it."""
    out = tmp_path / "forced"
    r = subprocess.run(_cmd([f"output_dir={out}", "++foo.bar=1"]), cwd=tmp_path, env=_env(), capture_output=True,
                       text=True, timeout=120)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[0].startswith("error: config key 'foo'") and "PipelineConfig" in lines[0], lines
    assert not (out / "work").exists()  # refused before any work (Hydra itself made logs/)
    for extra, match in [
        (["++executor.wokers=2"], "config key 'executor.wokers': Key 'wokers' not in 'ExecutorConfig'; "
                                  "did you mean 'executor.workers'?"),
        (["++filters.webb=[]"], "config key 'filters.webb'"),
        (["++dedup.nested.key=1"], "config key 'dedup.nested'"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(match)):
            Pipeline(_compose(_overrides(corpus, out, *extra)))
    assert Pipeline(_compose(_overrides(corpus, out, "++executor.workers=2"))).ex.workers == 2  # a known key is fine


def test_end_to_end_on_the_bundled_samples(tmp_path):
    """`python -m data_pipelines.run` as a user runs it: samples of all four kinds -> everything the trainer needs."""
    out = tmp_path / "samples"
    r = subprocess.run(_cmd([f"output_dir={out}", "tokenizer.vocab_size=1000", "--workers", "2"]), cwd=tmp_path,
                       env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "summary" in r.stderr and "docs/s/worker" in r.stderr
    import pyarrow.parquet as pq

    manifest = read_manifest(out)
    assert set(manifest.corpora) == {"web", "wiki", "books", "code"}
    provenance = {"web": "url", "wiki": "title", "books": "book_id", "code": "path"}
    for name, field in provenance.items():
        table = pq.read_table(out / "documents" / name / "part-00000.parquet")
        assert {"id", "text", "source", "file", field} <= set(table.column_names)
        rows = table.to_pylist()
        assert rows and all(row["source"] == name and row["text"] and row["file"] and row[field] for row in rows)
        assert manifest.corpora[name].documents == len(rows)
    tok = json.loads((out / "tokenizer" / "tokenizer.json").read_text())
    assert tok["model"]["type"] == "BPE" and manifest.eod_id == 0 and manifest.tokenizer == out / "tokenizer" / "tokenizer.json"
    for corpus in manifest.corpora.values():
        for prefix in corpus.prefixes:
            assert IndexedDataset(prefix).max_token() < manifest.vocab_size
    report = json.loads((out / "report.json").read_text())
    assert (out / "report.md").is_file() and report["totals"]["tokens"] > 0
    # the planted duplicates (make_samples.py): a page at two URLs, a reposted essay, a vendored source file
    removed = {name: s["removed"] for name, s in report["sources"].items()}
    assert removed["web"]["exact_duplicate"] == 1 and removed["web"]["near_duplicate"] == 1
    assert removed["code"]["near_duplicate"] == 1
    urls = pq.read_table(out / "documents" / "web" / "part-00000.parquet").column("url").to_pylist()
    assert "https://docs.example.org/library/heapq.html" in urls and not any("mirror." in u or "weekly." in u for u in urls)
    assert not (tmp_path / "outputs").exists() and not (out / ".hydra").exists()  # no Hydra clutter
    assert (out / "logs" / "run.log").is_file()


def test_a_given_tokenizer_file_is_used_as_it_is(reference, corpus, tmp_path):
    given = reference / "tokenizer" / "tokenizer.json"
    out = tmp_path / "given"
    run_pipeline(_compose(_overrides(corpus, out, f"tokenizer.path={given}", "dedup=none")))
    assert (out / "tokenizer" / "tokenizer.json").read_bytes() == given.read_bytes()
    report = json.loads((out / "report.json").read_text())
    assert report["tokenizer"]["given"] == str(given) and report["tokenizer"]["train_docs"] == 0
    assert read_manifest(out).eod_id == read_manifest(reference).eod_id


def test_a_given_tokenizer_file_edited_in_place_redoes_the_shards(reference, corpus, tmp_path):
    """The fingerprint holds the given file's content, not only its path: new file -> new tokenizer and shards."""
    from tokenizers import Tokenizer

    given = tmp_path / "tokenizer.json"
    given.write_bytes((reference / "tokenizer" / "tokenizer.json").read_bytes())
    out = tmp_path / "out"
    overrides = _overrides(corpus, out, f"tokenizer.path={given}", "dedup=none")
    run_pipeline(_compose(overrides))
    tok = Tokenizer.from_file(str(given))
    tok.add_tokens(["heapq", "tournament"])  # same path, different vocabulary
    tok.save(str(given))
    run_pipeline(_compose(overrides))
    assert (out / "tokenizer" / "tokenizer.json").read_bytes() == given.read_bytes()
    assert read_manifest(out).vocab_size == tok.get_vocab_size(with_added_tokens=True)


def test_changed_inputs_drop_parts_that_no_longer_exist(corpus, tmp_path):
    import shutil

    inputs = {k: tmp_path / "in" / k for k in corpus}
    for k, v in corpus.items():
        shutil.copytree(v, inputs[k])
    out, fresh = tmp_path / "out", tmp_path / "fresh"
    run_pipeline(_compose(_overrides(inputs, out)))
    (inputs["alpha"] / "a3.jsonl").unlink()  # the last alpha part goes away
    run_pipeline(_compose(_overrides(inputs, out)))
    assert not (out / "documents" / "alpha" / "part-00003.parquet").exists()
    run_pipeline(_compose(_overrides(inputs, fresh)))
    assert tree_hashes(out) == tree_hashes(fresh)


def test_command_line_spellings_and_the_slurm_preset(monkeypatch, tmp_path):
    from data_pipelines.run import _translate_argv

    assert _translate_argv(["output_dir=x", "--shard", "3", "--num-shards=8", "--workers", "4"]) == [
        "output_dir=x", "executor.shard=3", "executor.num_shards=8", "executor.workers=4"]
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "5")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "16")
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "8")
    cfg = _compose([f"output_dir={tmp_path}", "executor=slurm"])
    assert (cfg.executor.shard, cfg.executor.num_shards, cfg.executor.workers) == (5, 16, 8)
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID")
    cfg = _compose([f"output_dir={tmp_path}", "executor=slurm"])
    assert cfg.executor.shard is None and cfg.tokenizer.kind == "bpe"


def test_bench_prints_stage_throughput_and_the_datasketch_ratio(capsys):
    from data_pipelines import bench

    assert bench.main(["--copies", "2", "--workers", "1", "--dedup-docs", "40"]) == 0
    out = capsys.readouterr().out
    for stage in ("read", "signatures", "cluster", "documents", "tokenizer", "tokenize"):
        assert re.search(rf"^\| {stage} +\| 1 +\| [\d,]+ ", out, re.M), (stage, out)
    assert "datasketch (MinHash + MinHashLSH)" in out and re.search(r"speed-up over datasketch: [\d.]+x", out)


def test_a_clustering_key_reclusters_without_rehashing(corpus, tmp_path):
    """dedup.threshold, verify_window, bucket_parts and memory_mb are read by the clustering only: changing one
    redoes the clustering, not the signatures (verify=exact does: its signature files hold the shingles)."""
    out = tmp_path / "out"
    stages = "executor.stages=[read,signatures,cluster]"
    run_pipeline(_compose(_overrides(corpus, out, stages)))
    markers = out / "work" / "markers"

    def mtimes(stage: str) -> dict:
        return {p: p.stat().st_mtime_ns for p in (markers / stage).rglob("*.json")}

    sigs, cluster = mtimes("signatures"), (out / "work" / "dedup" / "dedup.json").stat().st_mtime_ns
    assert sigs
    run_pipeline(_compose(_overrides(corpus, out, stages, "dedup.threshold=0.9", "dedup.memory_mb=16")))
    assert mtimes("signatures") == sigs
    assert (out / "work" / "dedup" / "dedup.json").stat().st_mtime_ns != cluster
    run_pipeline(_compose(_overrides(corpus, out, stages, "dedup.verify=exact")))
    assert all(mtimes("signatures")[p] != t for p, t in sigs.items())
