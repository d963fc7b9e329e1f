"""Decontamination: planted eval-set overlaps at known rates are found (recall, precision printed), clean
documents are never dropped, ``cut`` removes exactly the overlapping spans, short eval texts are matched whole,
and bad eval files are refused naming the file before any work.

The corpus is synthetic (random words of a made-up vocabulary, so no 13-gram repeats by chance) and runs with
``filters=none``; dedup stays on, so the hit list (keyed by read row) must compose with dedup's removals.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hydra import compose, initialize_config_dir

from data_pipelines.decontam import EvalIndex, EvalSet, cut
from data_pipelines.run import Pipeline, run_pipeline
from pretrain.core.errors import ConfigError

CONF = Path(__file__).resolve().parents[2] / "conf"
RATES = {"alpha": 0.1, "beta": 0.3}  # fraction of each source's documents with a planted overlap
DOCS = 120  # per source


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("pipeline", overrides=overrides)


def _words(rng: random.Random, n: int, vocab: list[str]) -> list[str]:
    return [rng.choice(vocab) for _ in range(n)]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Eval sets (JSONL with corrupt records, Parquet), a corpus with plants, and what was planted where."""
    root = tmp_path_factory.mktemp("decon")
    rng = random.Random(7)
    vocab = ["".join(rng.choice("bcdfghklmnprstvz") + rng.choice("aeiou") for _ in range(3)) for _ in range(3000)]
    vocab = sorted(set(vocab))
    # eval set "qa" (JSONL): a 30-word question, a 6-word answer (matched whole), a 3-word answer (too short)
    qa = [{"question": " ".join(_words(rng, 30, vocab)), "answer": " ".join(_words(rng, 6 if i % 2 else 3, vocab))}
          for i in range(40)]
    with open(root / "qa.jsonl", "w") as f:
        for i, r in enumerate(qa):
            f.write(json.dumps(r) + "\n")
            if i == 5:
                f.write("{not json\n")  # corrupt records: skipped and counted
                f.write(json.dumps(["a list"]) + "\n")
                f.write(json.dumps({"unrelated": "x"}) + "\n")
    # eval set "reading" (Parquet): a 40-word context per row, a SQuAD-style nested answers field
    reading = [{"context": " ".join(_words(rng, 40, vocab)), "question": " ".join(_words(rng, 8, vocab)),
                "answers": {"text": ["x"]}} for _ in range(30)]
    pq.write_table(pa.Table.from_pylist(reading), root / "reading.parquet")

    planted: dict[str, str] = {}  # doc id -> the planted string (cut mode must remove exactly that)
    near: set[str] = set()  # docs with a 12-word overlap or a too-short answer: must be kept
    srcs = {}
    for src, rate in RATES.items():
        d = root / src
        d.mkdir()
        lines = []
        for i in range(DOCS):
            doc_id = f"{src}-{i}"
            left, right = " ".join(_words(rng, 40, vocab)), " ".join(_words(rng, 40, vocab))
            r = rng.random()
            if r < rate:
                kind = rng.choice(["question", "context", "answer6"])
                if kind == "question":
                    words = rng.choice(qa)["question"].split()
                    k = rng.randint(13, 30)
                    start = rng.randint(0, 30 - k)
                    span = words[start:start + k]
                elif kind == "context":
                    span = rng.choice(reading)["context"].split()[5:25]
                else:
                    span = rng.choice([r for i2, r in enumerate(qa) if i2 % 2])["answer"].split()
                # normalisation: other case and punctuation between the words still match
                text_span = ", ".join(w.upper() if j % 3 == 0 else w for j, w in enumerate(span))
                planted[doc_id] = text_span
                text = f"{left} {text_span} {right}."
            elif r < rate + 0.2:
                words = rng.choice(qa)["question"].split()
                extra = " ".join(words[:12]) if rng.random() < 0.5 else rng.choice(qa[0::2])["answer"]
                near.add(doc_id)
                text = f"{left} {extra} {right}."
            else:
                text = f"{left} {right}."
            lines.append(json.dumps({"id": doc_id, "text": text}))
        if src == "beta":  # a copy of an early clean document first: dedup keeps the copy and removes the
            # original, so every later row of the part shifts between the read output and what dedup passes on
            k = next(i for i in range(DOCS) if f"beta-{i}" not in planted and f"beta-{i}" not in near)
            lines.insert(0, json.dumps({"id": "beta-dup", "text": json.loads(lines[k])["text"]}))
            dedup_removed = f"beta-{k}"
        (d / "docs.jsonl").write_text("\n".join(lines) + "\n")
        srcs[src] = d
    return {"root": root, "sources": srcs, "planted": planted, "near": near, "dedup_removed": dedup_removed,
            "evals": [root / "qa.jsonl", root / "reading.parquet"]}


def _overrides(world, out: Path, *extra: str) -> list[str]:
    evals = ",".join(str(p) for p in world["evals"])
    return [f"output_dir={out}", "sources=none", "filters=none", "tokenizer.vocab_size=300",
            "executor.progress=false",
            *(f"+sources.{n}={{kind: jsonl, paths: [{p}]}}" for n, p in world["sources"].items()),
            f"decontamination.eval_paths=[{evals}]", *extra]


def _documents(out: Path) -> dict[str, str]:
    rows = {}
    for f in sorted((out / "documents").rglob("*.parquet")):
        for r in pq.read_table(f, columns=["id", "text"]).to_pylist():
            rows[r["id"]] = r["text"]
    return rows


def tree_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` except logs/."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.relative_to(root).as_posix().startswith("logs/")}


def _all_docs(world) -> dict[str, str]:
    docs = {}
    for d in world["sources"].values():
        for line in (d / "docs.jsonl").read_text().splitlines():
            r = json.loads(line)
            docs[r["id"]] = r["text"]
    return docs


@pytest.fixture(scope="module")
def dropped_run(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("drop") / "out"
    summary = run_pipeline(_compose(_overrides(world, out)))
    assert summary.complete
    return out


def test_planted_contamination_is_found_and_clean_documents_are_kept(world, dropped_run):
    docs, kept = _all_docs(world), _documents(dropped_run)
    planted, near = set(world["planted"]), world["near"]
    assert world["dedup_removed"] not in kept and "beta-dup" in kept
    dropped = set(docs) - set(kept) - {world["dedup_removed"]}
    hit = dropped & planted
    recall, precision = len(hit) / len(planted), len(hit) / max(1, len(dropped))
    print(f"\ndecontamination: {len(planted)} planted of {len(docs)} documents ({len(near)} near misses); "
          f"recall {recall:.3f}, precision {precision:.3f}")
    assert recall >= 0.95 and len(planted) >= 30
    assert dropped <= planted, f"false drops: {sorted(dropped - planted)}"  # no document without overlap dropped
    assert near <= set(kept)
    for src, rate in RATES.items():  # the planted rate per source, within sampling error
        n = sum(i.startswith(src) for i in planted)
        assert abs(n / DOCS - rate) < 0.1, (src, n)

    report = json.loads((dropped_run / "report.json").read_text())
    for name, s in report["sources"].items():
        stages = s["stages"]
        assert [x["stage"] for x in stages] == ["read", "dedup", "decontaminate", "tokenize"]
        for st in stages:
            assert st["docs_in"] == st["docs_out"] + sum(st["dropped"].values()) + sum(st["skipped"].values())
        for a, b in zip(stages, stages[1:]):
            assert b["docs_in"] == a["docs_out"]
        decon = stages[2]
        assert decon["dropped"] == {"contaminated": sum(i.startswith(name) for i in dropped)}
    d = report["decontamination"]
    assert d["mode"] == "drop" and d["ngram"] == 13 and d["documents_hit"] == len(dropped)
    assert {h["id"] for h in d["documents"]} == dropped and all(h["action"] == "dropped" for h in d["documents"])
    by_set = {name: sum(per.values()) for name, per in d["hits"].items()}
    assert by_set["qa"] > 0 and by_set["reading"] > 0 and set(d["hits"]["qa"]) <= set(RATES)
    assert sum(by_set.values()) >= len(dropped)
    qa = d["eval_sets"]["qa"]
    assert qa["skipped"] == {"invalid_json": 1, "no_text": 1, "not_an_object": 1} and qa["examples"] == 40
    assert qa["short_texts"] == 20 and qa["too_short"] == 20 and qa["ngrams"] > 0
    assert d["eval_sets"]["reading"]["examples"] == 30
    md = (dropped_run / "report.md").read_text()
    assert "## Decontamination" in md and "| qa |" in md and "| reading |" in md


def test_cut_mode_removes_exactly_the_overlapping_spans(world, dropped_run, tmp_path):
    import shutil

    out = tmp_path / "cut"
    shutil.copytree(dropped_run, out)
    before = {p: p.stat().st_mtime_ns for p in (out / "work" / "markers" / "decontaminate").rglob("*.json")}
    summary = run_pipeline(_compose(_overrides(world, out, "decontamination.mode=cut")))
    runs = {t.stage: (t.tasks_run, t.tasks_skipped) for t in summary.timings}
    assert runs["decontaminate"] == (0, 2) and runs["documents"] == (2, 0)  # only what the mode changes is redone
    assert all(p.stat().st_mtime_ns == m for p, m in before.items())
    docs, kept = _all_docs(world), _documents(out)
    assert set(kept) == set(docs) - {world["dedup_removed"]}  # nothing dropped: every planted span was cut
    for doc_id, text in docs.items():
        if doc_id == world["dedup_removed"]:
            continue
        if doc_id in world["planted"]:
            assert kept[doc_id] == text.replace(world["planted"][doc_id], ""), doc_id
        else:
            assert kept[doc_id] == text, doc_id
    report = json.loads((out / "report.json").read_text())
    decon = {s["stage"]: s for s in report["sources"]["beta"]["stages"]}["decontaminate"]
    assert decon["dropped"] == {} and decon["modified"]["contamination_cut"] > 0
    assert decon["bytes_out"] < decon["bytes_in"]


def test_shard_runs_with_two_workers_give_the_same_bytes(world, dropped_run, tmp_path):
    """The stage as a SLURM array task runs it (executor.shard of num_shards), then the global stages."""
    out = tmp_path / "sharded"

    def run(stages: str, shard: int | None = None, *extra: str):
        more = [f"executor.stages=[{stages}]", *extra]
        if shard is not None:
            more += [f"executor.shard={shard}", "executor.num_shards=2"]
        return run_pipeline(_compose(_overrides(world, out, *more)))

    for shard in (0, 1):
        run("read,signatures,decontaminate", shard, "executor.workers=2", "executor.start_method=fork")
    run("cluster")
    for shard in (0, 1):
        run("documents", shard)
    assert run("tokenizer,tokenize,report").complete
    assert tree_hashes(out) == tree_hashes(dropped_run)


def test_short_eval_texts_and_the_index():
    sets = [EvalSet("s", "s.jsonl", [(0, ["The Quick brown fox jumps"]), (1, ["too short"]),
                                     (2, [" ".join(f"w{i}" for i in range(20))])])]
    idx = EvalIndex.build(sets, ngram=13, min_words=5)
    assert idx.lengths == [5, 13] and idx.summaries["s"].too_short == 1 and idx.summaries["s"].ngrams == 8
    text = "Yesterday the quick-brown FOX jumps; over."
    spans, hits = idx.match(text)
    assert hits == {"s": [0]} and cut(text, spans) == "Yesterday ; over."
    assert idx.match("the quick brown fox") == ([], {})  # a part of a short text is no match
    assert idx.match("too short, too short")[1] == {}
    long = "a " + " ".join(f"w{i}" for i in range(3, 16)) + " b"  # 13 words of example 2
    spans, hits = idx.match(long)
    assert hits == {"s": [2]} and cut(long, spans) == "a  b"
    assert idx.match(" ".join(f"w{i}" for i in range(3, 15)))[1] == {}  # 12 words: below the n-gram


def test_a_json_array_eval_file_and_nested_fields(tmp_path):
    from data_pipelines.decontam import read_eval_set

    path = tmp_path / "squad.json"
    path.write_text(json.dumps({"data": [{"context": "one two three four five six", "answers": {"text": ["x y"]}},
                                         {"context": 7}, "bad"]}))
    es = read_eval_set(str(path), ["context", "answers"])
    assert es.examples == [(0, ["one two three four five six", "x y"])] and es.records == 3
    assert dict(es.skipped) == {"no_text": 1, "not_an_object": 1}


def test_off_by_default_and_on_slurm_with_the_read_array(world, tmp_path):
    from data_pipelines.executor.slurm import plan

    off = _compose([o for o in _overrides(world, tmp_path / "off") if not o.startswith("decontamination.")])
    pipe = Pipeline(off)
    assert not pipe.by_name["decontaminate"].enabled(pipe) and off.decontamination.eval_paths == []
    assert [j.stages for j in plan(off, 2)][0] == ["read", "signatures"]
    on = _compose(_overrides(world, tmp_path / "on"))
    assert [j.stages for j in plan(on, 2)][0] == ["read", "signatures", "decontaminate"]


def test_an_edited_eval_set_changes_the_fingerprints(world, tmp_path):
    import shutil

    evals = [tmp_path / p.name for p in world["evals"]]
    for a, b in zip(world["evals"], evals):
        shutil.copy(a, b)
    overrides = [*_overrides(world, tmp_path / "o")[:-1], f"decontamination.eval_paths=[{evals[0]},{evals[1]}]"]
    before = Pipeline(_compose(overrides))
    part = before.parts[0]
    with open(evals[0], "a") as f:  # the same path, one more example
        f.write(json.dumps({"question": "one more question of the eval set that nobody planted"}) + "\n")
    after = Pipeline(_compose(overrides))
    assert after.fp("read", part) == before.fp("read", part)
    for stage in ("decontaminate", "documents", "tokenize"):
        assert after.fp(stage, part) != before.fp(stage, part), stage
    cut = Pipeline(_compose([*overrides, "decontamination.mode=cut"]))  # the mode: documents onwards only
    assert cut.fp("decontaminate", part) == after.fp("decontaminate", part)
    assert cut.fp("documents", part) != after.fp("documents", part)


@pytest.mark.parametrize("name,content,needle", [
    ("missing.jsonl", None, "does not exist"),
    ("broken.parquet", b"PAR1 this is not parquet", "not a readable Parquet file"),
    ("allbad.jsonl", b"{oops\n[1, 2]\n", "no usable eval record"),
    ("cut.jsonl.gz", b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03K", "unreadable"),
    ("eval.csv", b"question\nwhat\n", "unknown file type"),
])
def test_bad_eval_files_are_refused_naming_the_file_before_any_work(world, tmp_path, name, content, needle):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    out = tmp_path / "out"
    cfg = _compose([*_overrides(world, out)[:-1], f"decontamination.eval_paths=[{path}]"])
    with pytest.raises(ConfigError, match=needle) as e:
        Pipeline(cfg)
    assert str(path) in str(e.value) and not out.exists()


def test_bad_decontamination_keys_are_refused(world, tmp_path):
    for extra, needle in [("decontamination.mode=erase", "decontamination.mode"),
                          ("decontamination.min_words=20", "decontamination.min_words"),
                          (f"decontamination.eval_paths=[{world['evals'][0]},{world['evals'][0]}]", "same eval set")]:
        with pytest.raises(ConfigError, match=needle):
            Pipeline(_compose([*_overrides(world, tmp_path / "x"), extra]))
