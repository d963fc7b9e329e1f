"""``python -m pretrain.data.inspect``: the documents a logged step's batch was cut from, traced through their
provenance sidecars to the original records, whose tokens re-encode to exactly that step's batch."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from pretrain.core.errors import DataError
from pretrain.data.inspect import inspect_step, main

REPO = Path(__file__).resolve().parents[2]


def original_texts(file: str) -> dict[str, str]:
    with gzip.open(REPO / file, "rt", encoding="utf-8") as f:
        return {r["id"]: r["text"] for r in map(json.loads, f)}


def metrics(run_dir: Path) -> dict[int, dict]:
    return {r["step"]: r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "loss" in r}


def test_inspect_returns_the_documents_whose_tokens_are_the_logged_batch(e2e_run):
    from tokenizers import Tokenizer

    run = e2e_run("gpt_one_process").dir  # 30 steps of 8 samples, 2 accumulated micro-batches of 4
    logged = metrics(run)
    texts: dict[str, dict[str, str]] = {}
    tok = None
    for step in (1, 17, 30):
        info = inspect_step(run, step)
        assert info.first_sample == (step - 1) * 8 and len(info.samples) == 8
        assert [s.micro_batch for s in info.samples] == [0] * 4 + [1] * 4
        assert info.checksum == info.logged_checksum == logged[step]["batch_checksum"]
        checksum = 0
        for s in info.samples:
            pieces = []
            for p in s.pieces:
                rec = p.provenance
                assert rec["source"] == s.source and rec["fingerprint"].startswith("pretrain-sample-")
                original = texts.setdefault(rec["file"], original_texts(rec["file"]))[rec["id"]]
                assert p.text == original  # detokenized = the record the sidecar names
                if tok is None:
                    tok = Tokenizer.from_file(str(Path(p.shard).parents[2] / "tokenizer" / "tokenizer.json"))
                ids = tok.encode(original, add_special_tokens=False).ids + [0]  # the document as tokenized, EOD
                assert len(ids) == p.length
                pieces.append(ids[p.start:p.end])
            tokens = np.concatenate(pieces)  # the sample re-encoded from its original documents
            assert tokens.tolist() == s.tokens.tolist()
            checksum += int(tokens[:-1].sum())
        assert checksum == logged[step]["batch_checksum"]


def fake_layout(src: Path, dst: Path, micro: int, accum: int) -> Path:
    """A copy of a run's files as if it had run on another data-parallel layout (the same global batch)."""
    dst.mkdir()
    for name in ("config.yaml", "metrics.jsonl"):
        shutil.copy(src / name, dst / name)
    ds = json.loads((src / "deepspeed.json").read_text())
    ds.update(train_micro_batch_size_per_gpu=micro, gradient_accumulation_steps=accum)
    (dst / "deepspeed.json").write_text(json.dumps(ds))
    return dst


def test_rank_selects_the_samples_that_rank_read(e2e_run, tmp_path):
    run = e2e_run("gpt_one_process").dir
    dp2 = fake_layout(run, tmp_path / "dp2", micro=2, accum=2)  # 2 ranks x 2 micro-batches of 2
    ranks = [inspect_step(dp2, 5, rank=r) for r in (0, 1)]
    assert [s.index for s in ranks[0].samples] == [32, 33, 36, 37]
    assert [s.index for s in ranks[1].samples] == [34, 35, 38, 39]
    whole = inspect_step(run, 5)
    assert ranks[0].checksum == whole.checksum == whole.logged_checksum  # the step's checksum covers every rank
    assert {s.index for r in ranks for s in r.samples} == {s.index for s in whole.samples}
    with pytest.raises(DataError, match="--rank 2: the run has data-parallel ranks 0..1"):
        inspect_step(dp2, 5, rank=2)
    with pytest.raises(DataError, match="--step 31: the run in .* has trained 30 steps"):
        inspect_step(dp2, 31)


def test_the_command_prints_sources_origins_and_text(e2e_run, capsys):
    run = e2e_run("gpt_one_process").dir
    assert main([str(run), "--step", "3", "--chars", "30"]) == 0
    out = capsys.readouterr().out
    assert "batch checksum" in out and ": agrees" in out
    assert "source=code file=pretrain/data/sample_corpus/code.jsonl.gz id=cpython/Lib/" in out
    assert out.count("\nsample ") == 8
    assert main([str(run), "--step", "3", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["checksum"] == data["logged_checksum"] and len(data["samples"]) == 8
    assert main([str(run.parent / "nowhere"), "--step", "1"]) == 2
    assert "is not a run directory" in capsys.readouterr().err


def test_shards_without_a_sidecar_print_no_provenance(e2e_run, tmp_path, capsys):
    run = e2e_run("gpt_one_process").dir
    copy = fake_layout(run, tmp_path / "run", micro=4, accum=2)
    sample = Path(inspect_step(run, 1).samples[0].pieces[0].shard).parents[2]
    data = tmp_path / "data"
    shutil.copytree(sample, data, ignore=shutil.ignore_patterns("*.prov.*"))  # shards of another tool
    cfg = yaml.safe_load((copy / "config.yaml").read_text())
    cfg["data"]["path"] = str(data)
    (copy / "config.yaml").write_text(yaml.safe_dump(cfg))
    info = inspect_step(copy, 2)
    assert info.checksum == info.logged_checksum  # the same tokens
    assert all(p.provenance is None for s in info.samples for p in s.pieces)
    assert main([str(copy), "--step", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("| no provenance") == sum(len(s.pieces) for s in info.samples)


def test_sample_data_built_before_sidecars_gets_them_added(cache_dir, tmp_path, monkeypatch):
    from pretrain.core.provenance import prov_paths, read_provenance
    from pretrain.data.sample import ensure_sample_data

    monkeypatch.setenv("PRETRAIN_CACHE", str(cache_dir))
    built = ensure_sample_data()
    old = tmp_path / built.name
    shutil.copytree(built, old, ignore=shutil.ignore_patterns("*.prov.*"))
    assert ensure_sample_data(old) == old
    for name in ("prose", "code"):
        prefix = f"tokens/{name}/part-00000"
        same = [p.read_bytes() for p in prov_paths(built / prefix)]
        assert [p.read_bytes() for p in prov_paths(old / prefix)] == same
        documents = json.loads((old / "manifest.json").read_text())["corpora"][name]["documents"]
        assert len(read_provenance(old / prefix)) == documents
