"""GPT samples from token shards: windows across documents, per-epoch shuffled index that is prefix-stable,
identical across processes and cache rebuilds, weighted blend, split, validation errors, sampler and loader."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from pretrain.core.errors import ConfigError, DataError
from pretrain.core.indexed import IndexedDatasetWriter, bin_path, idx_path
from pretrain.core.manifest import read_manifest, write_manifest
from pretrain.data.blend import Blend
from pretrain.data.dataset import build_datasets, check_vocab, parse_split, split_bounds
from pretrain.data.sampler import PretrainingSampler, collate_tokens, make_loader

EOD = 0
REPO = Path(__file__).resolve().parents[2]


def write_corpus(root: Path, name: str, lengths: list[int], first_token: int, shards: int = 1) -> list[list[int]]:
    """Documents of the given lengths (EOD appended) whose tokens are unique numbers from ``first_token`` on,
    so every token tells which document and position it came from. Split over ``shards`` prefixes."""
    docs, t = [], first_token
    for n in lengths:
        docs.append(list(range(t, t + n)) + [EOD])
        t += n
    assert t < 65000
    per = -(-len(docs) // shards)
    prefixes = []
    for s in range(shards):
        prefix = root / "tokens" / name / f"part-{s:05d}"
        with IndexedDatasetWriter(prefix, dtype=np.uint16) as w:
            w.add_documents(docs[s * per : (s + 1) * per])
        prefixes.append(str(prefix))
    return docs, {"prefixes": prefixes, "documents": len(docs), "tokens": sum(map(len, docs))}


@pytest.fixture
def data(tmp_path):
    """Three corpora of different sizes; 'b' spread over two shards."""
    rng = np.random.RandomState(0)
    root = tmp_path / "data"
    docs, entries = {}, {}
    for name, n_docs, first, shards in (("a", 120, 1, 1), ("b", 80, 20000, 2), ("c", 60, 40000, 1)):
        docs[name], entries[name] = write_corpus(root, name, rng.randint(1, 90, n_docs).tolist(), first, shards)
    write_manifest(root, tokenizer=None, vocab_size=65000, eod_id=EOD, dtype="uint16", corpora=entries)
    return SimpleNamespace(root=root, docs=docs, cache=tmp_path / "cache")


def cfg(root, weights=None, split="90,10"):
    return SimpleNamespace(path=str(root), weights=weights, split=split, num_workers=0)


def build(data, *, weights=None, split="90,10", seq=16, seed=7, n_train=500, n_valid=50, cache=None):
    return build_datasets(cfg(data.root, weights, split), seq_length=seq, seed=seed, num_train_samples=n_train,
                          num_valid_samples=n_valid, cache_dir=str(cache or data.cache))


def token_home(docs: list[list[int]]) -> dict[int, tuple[int, int]]:
    return {t: (d, p) for d, doc in enumerate(docs) for p, t in enumerate(doc) if t != EOD}


def test_samples_are_windows_across_document_boundaries(data):
    b = build(data, weights={"a": 1.0}, n_train=400)
    home = token_home(data.docs["a"])
    part = b.train.parts[0]
    n = part.samples_per_epoch
    crossing = 0
    covered = np.zeros(70000, np.int64)
    for i in range(n):  # one full epoch of corpus 'a' = the first n global samples
        x = b.train[i]
        assert x.dtype == np.int64 and x.shape == (17,)
        crossing += int((x[:-1] == EOD).any())
        # between EODs, tokens are consecutive positions of one document: a suffix, whole docs, a prefix
        pieces = np.split(x, np.flatnonzero(x == EOD) + 1)
        for k, piece in enumerate(pieces):
            toks = [t for t in piece.tolist() if t != EOD]
            if not toks:
                continue
            d0, p0 = home[toks[0]]
            assert [home[t] for t in toks] == [(d0, p0 + j) for j in range(len(toks))]
            if k > 0:
                assert p0 == 0, "a document after an EOD must start at its first token"
            if k < len(pieces) - 1:
                assert len(toks) + p0 == len(data.docs["a"][d0]) - 1, "a piece before an EOD must end its document"
        np.add.at(covered, x, 1)
    assert crossing > n // 5  # documents average ~45 tokens, windows 17
    # one epoch covers the train documents' tokens once (window ends twice), the last < seq tokens not at all
    train_docs = range(part.doc_lo, part.doc_hi)
    counts = np.asarray([covered[t] for d in train_docs for t in data.docs["a"][d] if t != EOD])
    assert set(np.unique(counts)) <= {0, 1, 2}
    assert (counts == 0).sum() <= 16 and (counts >= 1).sum() >= n * 16 - sum(1 for _ in train_docs)


def test_prefix_stable_and_epochs_reshuffled(data):
    short = build(data, n_train=100, cache=data.cache / "one")
    long = build(data, n_train=2000, cache=data.cache / "two")
    for i in range(100):
        np.testing.assert_array_equal(short.train[i], long.train[i])
        assert short.train.source(i) == long.train.source(i)
    with pytest.raises(IndexError):
        short.train[100]
    # 'a' runs through several epochs within 1000 samples; each epoch has its own order
    part = long.train.parts[0]
    assert long.train.blend.counts(2000)[0] > 2 * part.samples_per_epoch
    e0, e1 = part.epoch(0), part.epoch(1)
    assert not np.array_equal(e0.seq_order, e1.seq_order)
    assert not np.array_equal(e0.shuffle, e1.shuffle)
    assert sorted(e0.seq_order.tolist()) == sorted(e1.seq_order.tolist())


def _digest(ds, n):
    h = hashlib.sha256()
    for i in range(n):
        h.update(ds[i].tobytes())
    return h.hexdigest()


def _cache_digest(cache: Path) -> dict[str, str]:
    return {str(p.relative_to(cache)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(cache.rglob("*.npy"))}


CHILD = textwrap.dedent("""
    import hashlib, json, sys
    from types import SimpleNamespace
    from pretrain.data.dataset import build_datasets
    root, cache = sys.argv[1], sys.argv[2]
    b = build_datasets(SimpleNamespace(path=root, weights={"a": 2, "b": 1, "c": 1}, split="90,10"), seq_length=16,
                       seed=7, num_train_samples=600, num_valid_samples=40, cache_dir=cache)
    out = {}
    for name, ds in (("train", b.train), ("valid", b.valid)):
        h = hashlib.sha256()
        for i in range(len(ds)):
            h.update(ds[i].tobytes())
        out[name] = h.hexdigest()
    print(json.dumps(out))
""")


def test_index_identical_across_processes_concurrent_builders_and_cache_rebuild(data):
    shared = data.cache / "shared"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, str(data.root), str(shared)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        outs.append(json.loads(out.strip().splitlines()[-1]))
    assert outs[0] == outs[1]  # two processes building the same cache at the same time

    here = build(data, weights={"a": 2, "b": 1, "c": 1}, n_train=600, n_valid=40, cache=data.cache / "here")
    assert {"train": _digest(here.train, 600), "valid": _digest(here.valid, 40)} == outs[0]
    assert _cache_digest(shared) == _cache_digest(data.cache / "here")  # byte-identical index files
    assert not [p for p in shared.rglob("*") if p.name.startswith(".epoch")]  # no temporary files left

    # reopening from the cache builds nothing and reads the same files; deleting the cache rebuilds them
    before = {p: p.stat().st_mtime_ns for p in shared.rglob("*.npy")}
    again = build(data, weights={"a": 2, "b": 1, "c": 1}, n_train=600, n_valid=40, cache=shared)
    assert {p: p.stat().st_mtime_ns for p in shared.rglob("*.npy")} == before
    assert _digest(again.train, 600) == outs[0]["train"]
    digest = _cache_digest(shared)
    for p in shared.rglob("*.npy"):
        p.unlink()
    rebuilt = build(data, weights={"a": 2, "b": 1, "c": 1}, n_train=600, n_valid=40, cache=shared)
    assert _cache_digest(shared) == digest
    assert _digest(rebuilt.train, 600) == outs[0]["train"]


def test_seed_changes_the_order(data):
    a = build(data, seed=1, n_train=50)
    b = build(data, seed=2, n_train=50)
    assert _digest(a.train, 50) != _digest(b.train, 50)


def test_blend_proportions_at_every_prefix(data):
    b = build(data, weights=OmegaConf.create({"a": 0.6, "b": 0.3, "c": 0.1}), n_train=20000)
    assert b.corpus_names == ["a", "b", "c"] and np.allclose(b.corpus_weights, [0.6, 0.3, 0.1])
    corpus, _ = b.train.blend.range(0, 20000)
    running = np.cumsum(corpus[:, None] == np.arange(3), axis=0)
    for n in (100, 101, 333, 1000, 4567, 20000):
        frac = running[n - 1] / n
        assert np.all(np.abs(frac - [0.6, 0.3, 0.1]) < 0.01), (n, frac)
    # dataset sources agree with the blend, and token ranges prove which corpus a sample came from
    firsts = {"a": 1, "b": 20000, "c": 40000}
    for i in range(0, 300, 7):
        name, _ = b.train.source(i)
        toks = b.train[i][b.train[i] != EOD]
        lo = firsts[name]
        assert toks.min() >= lo and toks.max() < lo + 20000


def test_blend_matches_a_global_sort_and_is_windowed_exactly():
    w = np.asarray([5.0, 3.0, 1.5])
    blend = Blend(w, chunk=64)  # tiny windows: many window boundaries inside the range
    wn = w / w.sum()
    ks = np.concatenate([np.full(2000, k) for k in range(3)])
    ns = np.concatenate([np.arange(2000) for _ in range(3)])
    order = np.lexsort((ks, (ns + 0.5) / wn[ks]))[:3000]
    corpus, local = blend.range(0, 3000)
    np.testing.assert_array_equal(corpus, ks[order])
    np.testing.assert_array_equal(local, ns[order])
    assert [blend[i] for i in range(1500, 1700)] == list(zip(ks[order][1500:1700], ns[order][1500:1700]))
    for n in (1, 63, 64, 65, 2999):
        np.testing.assert_array_equal(blend.counts(n), np.bincount(ks[order][:n], minlength=3))


def test_default_weights_follow_tokens_and_zero_weight_excludes(data):
    b = build(data)
    tokens = [sum(map(len, data.docs[n])) for n in "abc"]
    assert b.corpus_tokens == tokens
    assert np.allclose(b.corpus_weights, np.asarray(tokens) / sum(tokens))
    # weight 0: never sampled, and its files are not even needed
    for suffix in (".bin", ".idx"):
        os.unlink(str(data.root / "tokens" / "c" / "part-00000") + suffix)
    b = build(data, weights={"a": 1, "b": 1, "c": 0}, n_train=200)
    assert b.corpus_names == ["a", "b"]
    assert {b.train.source(i)[0] for i in range(200)} == {"a", "b"}


def test_an_empty_weights_map_means_proportional_to_tokens(data):
    """The schema's default is an empty map (so the command line can set keys in it): the same as null."""
    by_tokens = build(data)
    for empty in ({}, OmegaConf.create({})):
        b = build(data, weights=empty)
        assert b.corpus_names == by_tokens.corpus_names and b.corpus_weights == by_tokens.corpus_weights
        assert [b.train[i].tolist() for i in range(20)] == [by_tokens.train[i].tolist() for i in range(20)]


def test_split_is_disjoint_by_document(data):
    b = build(data, weights={"a": 1}, split="80,20", n_train=300, n_valid=100)
    home = token_home(data.docs["a"])
    bound = split_bounds(len(data.docs["a"]), parse_split("80,20"))[1]
    assert bound == 96
    train_docs = {home[t][0] for i in range(300) for t in b.train[i].tolist() if t != EOD}
    valid_docs = {home[t][0] for i in range(100) for t in b.valid[i].tolist() if t != EOD}
    assert max(train_docs) < bound <= min(valid_docs)
    assert len(valid_docs) > 10


def test_split_parsing_and_megatron_rounding():
    assert parse_split("98,2") == pytest.approx((0.98, 0.02))
    assert parse_split("969, 30, 1") == pytest.approx((0.969, 0.030, 0.001))
    assert parse_split("1/1") == pytest.approx((0.5, 0.5))
    assert split_bounds(10, (0.33, 0.33, 0.34)) == [0, 4, 7, 10]
    assert split_bounds(3, (0.5, 0.5)) == [0, 1, 3]
    assert split_bounds(100, (0.98, 0.02)) == [0, 98, 100]
    for bad in ("98", "a,b", "98,-2", "0,0", "1,2,3,4", "nan,1", ""):
        with pytest.raises(DataError, match="data.split=.* is malformed"):
            parse_split(bad)


def test_documents_made_of_several_sequences_stay_together(tmp_path):
    """A Megatron index whose documents span several sequences (sentence-split preprocessing)."""
    seqs = [[1, 2], [3, 4, 5], [6, 0], [7, 8, 9, 0], [10, 11], [12, 0], [13, 14, 15, 16, 0]]
    root = tmp_path / "d"
    prefix = root / "p"
    with IndexedDatasetWriter(prefix, dtype=np.uint16) as w:
        w.add_documents(seqs)
    # rewrite the document index: documents = sequences [0,3), [3,4), [4,6), [6,7)
    from pretrain.core.indexed import write_index

    write_index(idx_path(prefix), np.uint16, np.asarray([len(s) for s in seqs]), np.asarray([0, 3, 4, 6, 7]))
    write_manifest(root, tokenizer=None, vocab_size=100, eod_id=0, dtype="uint16",
                   corpora={"m": {"prefixes": [str(prefix)], "documents": 4, "tokens": 18}})
    b = build_datasets(cfg(root, split="100,0"), seq_length=3, seed=0, num_train_samples=40, num_valid_samples=8,
                       cache_dir=str(tmp_path / "c"))
    assert b.valid is None  # no validation fraction
    docs = {(1, 2, 3, 4, 5, 6, 0), (7, 8, 9, 0), (10, 11, 12, 0), (13, 14, 15, 16, 0)}
    for e in range(3):
        idx = b.train.parts[0].epoch(e)
        stream = tuple(t for s in idx.seq_order.tolist() for t in seqs[s])
        pieces = {tuple(p) + (0,) for p in np.split(np.asarray(stream), np.flatnonzero(np.asarray(stream) == 0) + 1)
                  for p in [p[:-1]] if len(p)}
        assert pieces == docs


def test_errors_name_the_file_or_key(data, tmp_path):
    with pytest.raises(DataError, match="no token-shard manifest at .*nowhere"):
        build_datasets(cfg(tmp_path / "nowhere"), seq_length=16, seed=0, num_train_samples=10, num_valid_samples=0,
                       cache_dir=str(tmp_path / "c"))
    with pytest.raises(DataError, match=r"names corpus 'web', .*available corpora: a, b, c"):
        build(data, weights={"a": 1, "web": 2})
    with pytest.raises(DataError, match=r"data.weights.a=-1.0 must be"):
        build(data, weights={"a": -1})
    with pytest.raises(DataError, match="every corpus weight 0"):
        build(data, weights={"a": 0})
    with pytest.raises(DataError, match="data.split='ninety' is malformed"):
        build(data, split="ninety")
    with pytest.raises(DataError, match=r"corpus 'b' \(.*/b/part-00000, .*/b/part-00001\) has \d+ tokens in its train "
                                        r"split \(72 documents\), fewer than the 4001 needed for one sample of seq_length 4000"):
        build(data, seq=4000)
    with pytest.raises(DataError, match="leaves no corpus .* enough validation tokens"):
        build(data, weights={"a": 1}, split="999,1", seq=200)

    shard = str(data.root / "tokens" / "b" / "part-00001")
    raw = open(bin_path(shard), "rb").read()
    open(bin_path(shard), "wb").write(raw[:-2])
    with pytest.raises(DataError, match=f"{bin_path(shard)} is truncated"):
        build(data)
    open(bin_path(shard), "wb").write(raw)
    idx = open(idx_path(shard), "rb").read()
    open(idx_path(shard), "wb").write(b"GARBAGE!!" + idx[9:])
    with pytest.raises(DataError, match=f"{idx_path(shard)} is not an indexed token file"):
        build(data)
    os.unlink(idx_path(shard))
    with pytest.raises(DataError, match=f"missing data file {idx_path(shard)}"):
        build(data)


def test_check_vocab_names_tokenizer_file_and_sizes(data, tmp_path):
    from tokenizers import Tokenizer, models

    vocab = {f"t{i}": i for i in range(300)}
    tok_file = data.root / "tokenizer" / "tokenizer.json"
    tok_file.parent.mkdir()
    Tokenizer(models.WordLevel(vocab, unk_token="t1")).save(str(tok_file))
    m = json.loads((data.root / "manifest.json").read_text())
    m["tokenizer"] = "tokenizer/tokenizer.json"
    m["vocab_size"] = 300
    (data.root / "manifest.json").write_text(json.dumps(m))
    b = build(data, n_train=10, n_valid=0)
    assert b.vocab_size == 300 and b.tokenizer_path == tok_file and b.valid is None
    check_vocab(b, 300)
    check_vocab(b, 384)
    with pytest.raises(DataError, match=rf"tokenizer {tok_file} has a vocabulary of 300 tokens but model.vocab_size is 256"):
        check_vocab(b, 256)
    with pytest.raises(DataError, match=rf"tokenizer {tok_file} has a vocabulary of 300 .* model.vocab_size is 100"):
        check_vocab(read_manifest(data.root), 100)
    tok_file.write_text("{ not json")
    with pytest.raises(DataError, match=f"tokenizer file {tok_file} cannot be loaded"):
        build(data)
    tok_file.unlink()
    with pytest.raises(DataError, match=f"tokenizer file {tok_file} .* does not exist"):
        build(data)


def test_sampler_covers_each_global_batch_once_and_resumes():
    total, micro, dp = 100, 3, 4
    per_rank = [list(PretrainingSampler(total, 0, micro, r, dp)) for r in range(dp)]
    assert all(len(p) == len(PretrainingSampler(total, 0, micro, r, dp)) == 8 for r, p in enumerate(per_rank))
    for step in range(8):
        batch = [i for r in range(dp) for i in per_rank[r][step]]
        assert batch == list(range(step * 12, step * 12 + 12))  # the global batch, split by rank in order
    # resume after 3 global batches: exactly the rest of the uninterrupted stream
    for r in range(dp):
        resumed = list(PretrainingSampler(total, 36, micro, r, dp))
        assert resumed == per_rank[r][3:]
    assert list(PretrainingSampler(total, 96, micro, 0, dp)) == []  # incomplete last stride dropped
    with pytest.raises(ConfigError, match="data-parallel rank 4"):
        PretrainingSampler(total, 0, micro, 4, dp)
    with pytest.raises(ConfigError, match="consumed_samples=101"):
        PretrainingSampler(total, 101, micro, 0, dp)
    with pytest.raises(ConfigError, match="micro_batch_size"):
        PretrainingSampler(total, 0, 0, 0, dp)


@pytest.mark.parametrize("workers", [0, 1])
def test_loader_batches_inputs_and_shifted_labels(data, workers):
    b = build(data, n_train=64, n_valid=0)
    sampler = PretrainingSampler(len(b.train), 8, 4, 1, 2)
    batches = list(make_loader(b.train, sampler, num_workers=workers))
    assert len(batches) == (64 - 8) // 8
    first = batches[0]
    assert set(first) == {"input_ids", "labels"}
    assert first["input_ids"].dtype == torch.long and first["input_ids"].shape == (4, 16)
    expected = np.stack([b.train[i] for i in range(12, 16)])  # rank 1's half of the second global batch
    np.testing.assert_array_equal(first["input_ids"].numpy(), expected[:, :-1])
    np.testing.assert_array_equal(first["labels"].numpy(), expected[:, 1:])
    out = collate_tokens([np.arange(5), np.arange(5) + 10])
    assert out["labels"].tolist() == [[1, 2, 3, 4], [11, 12, 13, 14]]


def test_dataset_pickles_for_spawned_workers(data):
    b = build(data, n_train=50)
    b.train[0]
    clone = pickle.loads(pickle.dumps(b.train))
    assert _digest(clone, 50) == _digest(b.train, 50)
