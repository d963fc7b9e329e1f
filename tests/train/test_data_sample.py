"""The built-in sample data: built once under concurrent callers, deterministic, lossless, and trainable."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from pretrain.core.errors import DataError
from pretrain.core.indexed import IndexedDataset
from pretrain.core.manifest import read_manifest
from pretrain.data import sample
from pretrain.data.dataset import build_datasets, check_vocab

REPO = Path(__file__).resolve().parents[2]

CHILD = textwrap.dedent("""
    import logging, sys
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s %(message)s")
    from pretrain.data.sample import ensure_sample_data
    print(ensure_sample_data())
""")


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """Two processes build the default sample data into an empty PRETRAIN_CACHE at the same time."""
    cache = tmp_path_factory.mktemp("pretrain-cache")
    env = {**os.environ, "PRETRAIN_CACHE": str(cache), "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", CHILD], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    results = [(p.communicate(timeout=120), p.returncode) for p in procs]
    for (out, err), rc in results:
        assert rc == 0, err
    return SimpleNamespace(path=cache, outs=[o.strip() for (o, _), _ in results], errs=[e for (_, e), _ in results])


def test_concurrent_callers_build_once(cache):
    root = Path(cache.outs[0])
    assert cache.outs[0] == cache.outs[1]
    assert root.parent == cache.path and root.name == f"sample-v{sample.BUILDER_VERSION}-{sample.build_key()}"
    assert sum(e.count("building sample data") for e in cache.errs) == 1, cache.errs
    assert sorted(p.name for p in cache.path.iterdir()) == sorted([root.name, f".{root.name}.lock"])  # no temp left


def test_second_call_is_a_cheap_no_op(cache, monkeypatch, caplog):
    monkeypatch.setenv("PRETRAIN_CACHE", str(cache.path))
    root = Path(cache.outs[0])
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    with caplog.at_level("INFO", logger="pretrain.data.sample"):
        assert sample.ensure_sample_data() == root
    assert "building" not in caplog.text
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before


def test_build_is_deterministic(cache, tmp_path):
    again = sample.ensure_sample_data(tmp_path / "again")  # an explicit, fresh root
    assert tree_digest(again) == tree_digest(Path(cache.outs[0]))


def test_contents_tokenizer_shards_manifest(cache):
    from tokenizers import Tokenizer

    root = Path(cache.outs[0])
    m = read_manifest(root)
    assert m.tokenizer == root / "tokenizer" / "tokenizer.json"
    tok = Tokenizer.from_file(str(m.tokenizer))
    assert tok.get_vocab_size() == m.vocab_size == 4096
    assert tok.id_to_token(0) == "<|endoftext|>" and m.eod_id == 0 and m.dtype == "uint16"
    assert list(m.corpora) == ["code", "prose"]
    for name, corpus in m.corpora.items():
        ds = IndexedDataset(corpus.prefixes[0])
        assert len(ds) == corpus.documents > 100 and ds.num_tokens == corpus.tokens > 100_000
        ends = np.asarray([ds[i][-1] for i in range(len(ds))])
        assert np.all(ends == 0) and ds.max_token() < 4096  # EOD closes every document
        with gzip.open(sample.CORPUS_DIR / f"{name}.jsonl.gz", "rt") as f:
            texts = [json.loads(line)["text"] for _, line in zip(range(5), f)]
        for i, text in enumerate(texts):  # byte-level BPE is lossless
            assert tok.decode(ds[i][:-1].tolist()) == text
    assert "def " in tok.decode(IndexedDataset(m.corpora["code"].prefixes[0])[0].tolist())


def test_build_datasets_defaults_to_sample_data(cache, monkeypatch, tmp_path):
    monkeypatch.setenv("PRETRAIN_CACHE", str(cache.path))
    data_cfg = SimpleNamespace(path=None, weights=None, split="98,2", num_workers=0)
    b = build_datasets(data_cfg, seq_length=128, seed=1, num_train_samples=256, num_valid_samples=32,
                       cache_dir=str(tmp_path / "idx"))
    assert b.manifest.root == Path(cache.outs[0]) and b.vocab_size == 4096 and b.eod_id == 0
    assert b.corpus_names == ["code", "prose"] and abs(sum(b.corpus_weights) - 1) < 1e-12
    assert {b.train.source(i)[0] for i in range(64)} == {"code", "prose"}
    assert any((b.train[i][:-1] == 0).any() for i in range(32))  # windows run across documents
    assert b.valid is not None and len(b.valid) == 32 and b.valid[31].shape == (129,)
    check_vocab(b, 4096)
    with pytest.raises(DataError, match="vocabulary of 4096 tokens but model.vocab_size is 2048"):
        check_vocab(b, 2048)


def test_foreign_folder_is_not_overwritten(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="exists but does not hold sample data"):
        sample.ensure_sample_data(tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_bundled_corpus_is_prose_and_code_with_licence_note():
    readme = (sample.CORPUS_DIR / "README.md").read_text()
    assert "PSF" in readme and "make_corpus.py" in readme
    total = sum(f.stat().st_size for f in sample.corpus_files())
    assert 1_000_000 < total < 3_000_000
    with gzip.open(sample.CORPUS_DIR / "prose.jsonl.gz", "rt") as f:
        doc = json.loads(f.readline())
    assert set(doc) == {"id", "text"} and doc["id"].startswith("cpython/Lib/")
