"""MinHash signatures, the LSH parameter math and the vectorised union-find, in isolation."""

from __future__ import annotations

import random

import numpy as np
import pytest

from data_pipelines.dedup import (
    DedupConfig,
    MinHashParams,
    compute_signatures,
    estimate_jaccard,
    exact_hash,
    optimal_bands_rows,
)
from data_pipelines.dedup.config import as_dedup_config
from data_pipelines.dedup.minhash import EMPTY
from data_pipelines.dedup.synthetic import jaccard, shingle_set, stdlib_docstrings
from data_pipelines.dedup.unionfind import connected_components
from pretrain.core.errors import ConfigError


@pytest.fixture(scope="module")
def docs() -> list[str]:
    return stdlib_docstrings(min_words=60, limit=120)


def test_documented_bands_rows_match_the_math():
    # config.py's docstring promises these numbers; datasketch uses the same criterion
    assert optimal_bands_rows(0.7, 256) == (25, 10)
    datasketch_lsh = pytest.importorskip("datasketch.lsh", reason="datasketch (dev extra) cross-checks the optimiser")
    assert optimal_bands_rows(0.7, 256) == datasketch_lsh._optimal_param(0.7, 256, 0.5, 0.5)
    code = DedupConfig().params_for("code")
    assert (code.bands, code.rows, code.num_perm, code.shingle) == (25, 10, 256, "token")
    assert code.threshold == pytest.approx(0.725, abs=1e-3)
    assert [round(float(code.detection_probability(j)), 2) for j in (0.5, 0.6, 0.7, 0.8)] == [0.02, 0.14, 0.51, 0.94]
    web = DedupConfig().params_for("web")
    assert (web.bands, web.rows, web.ngram, web.shingle) == (14, 8, 5, "word")
    assert web.threshold == pytest.approx(0.719, abs=1e-3)
    assert [round(float(web.detection_probability(j)), 2) for j in (0.5, 0.6, 0.72, 0.8, 0.85)] == [0.05, 0.21, 0.65, 0.92, 0.99]


def test_bad_config_names_key_and_value():
    with pytest.raises(ConfigError, match=r"^dedup: bands x rows = 20 x 8 = 160 .* num_perm=112"):
        DedupConfig(bands=20).params_for(None)
    with pytest.raises(ConfigError, match=r"^dedup.kinds.code: shingle='bpe': expected one of word, token, char"):
        as_dedup_config({"kinds": {"code": {"shingle": "bpe"}}})
    with pytest.raises(ConfigError, match="unknown key.*bandz"):
        as_dedup_config({"bandz": 3})


def test_signature_estimates_jaccard(docs):
    params = MinHashParams(num_perm=256, bands=32, rows=8)
    rng = random.Random(0)
    errors = []
    for text in docs[:60]:
        words = text.split()
        for _ in range(rng.randint(1, 12)):
            words[rng.randrange(len(words))] = f"edit{rng.random():.6f}"
        copy = " ".join(words)
        sig = compute_signatures([text, copy], params)
        errors.append(estimate_jaccard(sig[0], sig[1]) - jaccard(shingle_set(text, params), shingle_set(copy, params)))
    errors = np.array(errors)
    # unbiased, and the spread of a 256-permutation estimate (sd <= 0.5/sqrt(256) = 0.031)
    assert abs(errors.mean()) < 0.015
    assert errors.std() < 0.045


def test_signatures_deterministic_and_seeded(docs):
    a = compute_signatures(docs[:20], DedupConfig())
    b = compute_signatures(list(reversed(docs[:20])), DedupConfig())[::-1]
    assert a.dtype == np.uint32 and a.shape == (20, 112)
    assert np.array_equal(a, b)  # a document's signature does not depend on its batch
    c = compute_signatures(docs[:20], DedupConfig(seed=2))
    assert (a != c).mean() > 0.9


def test_normalisation_short_and_empty_documents():
    cfg = DedupConfig()
    sig = compute_signatures(["Hello   World", "hello world", "héllo", "he\u0301llo", "", "   \n"], cfg)
    assert np.array_equal(sig[0], sig[1])  # case and whitespace
    assert np.array_equal(sig[2], sig[3])  # NFC
    assert (sig[0] != EMPTY).all()  # fewer words than ngram: one shingle of all of them
    assert (sig[4] == EMPTY).all() and (sig[5] == EMPTY).all()
    assert exact_hash("A  b\tC") == exact_hash("a b c") != exact_hash("a b d")


def test_ascii_fast_path_matches_unicode_path():
    from data_pipelines.dedup.minhash import _unit_hashes

    params = MinHashParams()
    for text in ["Hello  World\x1cfoo\tbar\n", "ABC def\x0bghi", "  x  "]:
        fast = _unit_hashes(text, params)  # ASCII: bytes path
        slow = _unit_hashes(text + " \u00e9", params)[:-1]  # one non-ASCII word: str path
        assert np.array_equal(fast, slow), text


def test_token_and_char_shingles():
    code_a = "def add(a, b):\n    return a + b\n\nprint(add(1, 2))\n" * 3
    code_b = "def add(a,b):\n  return a+b\n\nprint(add(1,2))\n" * 3  # only spacing/punctuation spacing differs
    token = DedupConfig().params_for("code")
    sig = compute_signatures([code_a, code_b], token)
    assert estimate_jaccard(sig[0], sig[1]) == 1.0
    char = MinHashParams(shingle="char", ngram=5)
    sig = compute_signatures([code_a, code_a.replace("add", "sum"), "completely unrelated text"], char)
    assert 0.2 < estimate_jaccard(sig[0], sig[1]) < 0.9
    assert estimate_jaccard(sig[0], sig[2]) < 0.1


def _reference_components(n: int, edges: list[tuple[int, int]]) -> list[int]:
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            x = parent[x]
        return x

    for a, b in edges:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return [min(i for i in range(n) if find(i) == find(x)) for x in range(n)]


@pytest.mark.parametrize("seed", range(5))
def test_union_find_matches_reference(seed):
    rng = np.random.default_rng(seed)
    n = 300
    edges = rng.integers(0, n, size=(rng.integers(50, 400), 2))
    roots = connected_components(n, edges[:, 0], edges[:, 1])
    assert roots.tolist() == _reference_components(n, [tuple(e) for e in edges.tolist()])
    shuffled = edges[rng.permutation(len(edges))][:, ::-1]
    assert np.array_equal(connected_components(n, shuffled[:, 0], shuffled[:, 1]), roots)


def test_union_find_long_path():
    n = 20000
    perm = np.random.default_rng(0).permutation(n)  # a single path visiting the nodes in random order
    roots = connected_components(n, perm[:-1], perm[1:])
    assert (roots == 0).all()
