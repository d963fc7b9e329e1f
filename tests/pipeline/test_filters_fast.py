"""The fast filter paths are pure speed-ups: the same scores, counts and keep/drop decisions as the reference
code, on a multilingual check set (tests/pipeline/multilingual.py, 14 languages) and the bundled samples."""

from __future__ import annotations

import os
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from py3langid.langid import MODEL_FILE, LanguageIdentifier

from data_pipelines.document import Document
from data_pipelines.filters import gopher, langid_fast, language
from data_pipelines.filters.config import filters_for_source, run_blocks
from data_pipelines.filters.langid_fast import FastLanguageIdentifier, fast_identifier
from data_pipelines.filters.ngram_batch import BatchNGrams
from data_pipelines.sources import make_reader, package_path
from data_pipelines.stats import StageStats

from .multilingual import PROSE, check_set

REPO = Path(__file__).resolve().parents[2]
SAMPLES = {"web": "data_pipelines/samples/web", "wiki": "data_pipelines/samples/wiki",
           "books": "data_pipelines/samples/books"}


@pytest.fixture(scope="module")
def reference_langid() -> LanguageIdentifier:
    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


@pytest.fixture(scope="module")
def sample_docs() -> dict[str, list[Document]]:
    out = {}
    for kind, folder in SAMPLES.items():
        files = sorted(str(p) for p in Path(package_path(folder)).iterdir() if not p.name.startswith((".", "__")))
        reader = make_reader(kind, {"kind": kind, "paths": files})
        stats = StageStats()
        out[kind] = [d for path in files for d in reader.read(path, stats)]
    return out


def reference_duplicated_chars(words: list[str], n: int) -> int:
    """The Gopher reference rule on joined strings (datatrove's loop)."""
    grams = [" ".join(words[i : i + n]) for i in range(len(words) - n + 1)]
    seen: set[str] = set()
    chars = idx = 0
    while idx < len(grams):
        if grams[idx] in seen:
            chars += len(grams[idx])
            idx += n
        else:
            seen.add(grams[idx])
            idx += 1
    return chars


def reference_top_chars(words: list[str], n: int) -> int:
    """Characters of the most frequent n-gram string times its count (datatrove's ``Counter.most_common``)."""
    gram, count = Counter(" ".join(words[i : i + n]) for i in range(len(words) - n + 1)).most_common(1)[0]
    return len(gram) * count


def test_long_documents_take_the_numpy_path(monkeypatch):
    """Without the compiled statistics, a document past ``LONG_DOC_WORDS`` goes to the numpy n-grams and decides
    as the reference does."""
    monkeypatch.setattr(gopher, "_native", None)
    words = [f"w{i % 97}" for i in range(gopher.LONG_DOC_WORDS + 500)]
    text = " ".join(words)
    for cls in (gopher._NGrams, gopher._HashedNGrams):
        ngrams = cls(words)
        assert [ngrams.duplicated_chars(n) for n in (5, 10)] == [reference_duplicated_chars(words, n) for n in (5, 10)]
    used = []
    monkeypatch.setattr(gopher, "_HashedNGrams", lambda w: used.append(len(w)) or gopher._NGrams(w))
    assert gopher.GopherRepetition().apply(Document("long", text, "x", {}), StageStats()) == "gopher_dup_5_gram"
    assert used == [len(words)] and reference_duplicated_chars(words, 5) / len(text) > 0.15


def test_check_set_covers_ten_languages(reference_langid):
    detected = {reference_langid.classify(text)[0] for text in PROSE.values()}
    assert len(detected) >= 10 and detected == set(PROSE), detected


@pytest.fixture(params=["compiled", "compiled walk, numpy product", "numpy"])
def walk(request, monkeypatch) -> str:
    """Each language-ID test runs on the compiled walk and product (built by the install:
    data_pipelines/_native.c), on the compiled walk with numpy's product (a CPU or BLAS whose summation order
    the compiled product does not follow), and on the numpy walk an install without a C compiler takes."""
    if request.param == "numpy":
        monkeypatch.setattr(langid_fast, "_native", None)
    else:
        assert langid_fast._native is not None, "data_pipelines._native is not built: pip install -e . needs gcc"
        if request.param != "compiled":
            monkeypatch.setattr(fast_identifier(), "_fused", None)
    return request.param


def _product_runs_here() -> bool:
    """Whether this CPU runs the compiled product at all (x86-64 with AVX2 and FMA)."""
    from data_pipelines import _native

    out = np.empty((1, 1), dtype=np.float32)
    one = np.ones(1, dtype=np.float32)
    return _native.langid_scores(one, 1, np.zeros(1, dtype=np.int32), one, np.array([0, 1]), one, out, 0)


def test_compiled_product_has_numpys_bits_or_is_not_used(monkeypatch):
    """The load-time check picks the compiled product's summation order (OpenBLAS's SkylakeX or Haswell/Zen
    kernels) that gives numpy's float32 bits, and refuses one that is off by a unit in the last place."""
    from data_pipelines import _native

    fast = fast_identifier()
    assert fast._fused in ((0, 1) if _product_runs_here() else (None,))

    class OneUlpOff:
        def langid_scores(self, *args):
            ok = _native.langid_scores(*args)
            out = args[6]
            out[0, 0] = np.nextafter(out[0, 0], np.float32(np.inf))
            return ok

    monkeypatch.setattr(langid_fast, "_native", OneUlpOff())
    assert fast._fused_kernels() is None


def test_compiled_product_follows_the_haswell_kernels(sample_docs):
    """OpenBLAS runs its Haswell kernels on Haswell to Zen 4 CPUs (OPENBLAS_CORETYPE picks them here): the
    check then picks that summation order, and the scores are py3langid's bits with those kernels."""
    import json
    import subprocess
    import sys

    texts = [t for _, t in check_set()][:40] + [d.text[:3000] for docs in sample_docs.values() for d in docs][:20]
    code = ("import json, sys\n"
            "from py3langid.langid import MODEL_FILE, LanguageIdentifier\n"
            "from data_pipelines.filters.langid_fast import fast_identifier\n"
            "fast, ref = fast_identifier(), LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)\n"
            "texts = json.load(sys.stdin)\n"
            "print(json.dumps([fast._fused, sum(fast.rank(t) == ref.rank(t) for t in texts)]))")
    run = subprocess.run([sys.executable, "-c", code], input=json.dumps(texts), capture_output=True, text=True,
                         env={**os.environ, "OPENBLAS_CORETYPE": "Haswell"}, timeout=120, check=True)
    fused, same = json.loads(run.stdout)
    assert fused == (1 if _product_runs_here() else None), run.stderr
    assert same == len(texts)


def test_vectorised_langid_gives_identical_scores(reference_langid, sample_docs, walk):
    fast = fast_identifier()
    assert isinstance(fast, FastLanguageIdentifier) and fast.depth >= 4
    rng = random.Random(0)
    texts = [t for _, t in check_set()] + [d.text[:3000] for docs in sample_docs.values() for d in docs]
    texts += ["", "a", "ab", "ÅÄÖ", "日本", bytes(rng.randrange(256) for _ in range(4000)).decode("latin-1")]
    for text in texts:
        assert fast.rank(text) == reference_langid.rank(text), text[:80]  # same floats, same order


def test_batched_langid_walk_gives_each_texts_own_scores(reference_langid, sample_docs, monkeypatch, walk):
    """``detect_many`` walks a batch of texts joined by a reset byte: each text gets exactly the result of
    py3langid's ``rank`` on it alone, whatever its neighbours (texts that end mid-n-gram, empty and
    one-byte texts, NUL bytes, surrogates, upper-case texts that py3langid lowers)."""
    fast = fast_identifier()
    assert fast._reset is not None  # the bundled model has one, so the batched walk is what runs
    rng = random.Random(2)
    texts = [t for _, t in check_set()] + [d.text[:3000] for docs in sample_docs.values() for d in docs]
    texts += ["", "a", "ab", "the", "ÅÄÖ", "日本", "x\x00y", "\ud800 the cat", "THE CAT SAT ON THE MAT",
              bytes(rng.randrange(256) for _ in range(4000)).decode("latin-1")]
    rng.shuffle(texts)
    for languages in ([], ["en"], ["de", "fr"]):
        expected = []
        for text in texts:
            ranked = reference_langid.rank(text)
            scores = dict(ranked)
            best = max(languages, key=lambda lang: scores[lang]) if languages else ranked[0][0]
            expected.append((best, scores[best], ranked[0][0]))
        assert fast.detect_many(texts, languages) == expected
        assert fast.detect_many(texts[:7], languages) == expected[:7]  # another batch, the same results
        with monkeypatch.context() as m:  # walks cut by bytes (a text longer than the cut walks alone)
            m.setattr(langid_fast, "WALK_BYTES", 200)
            assert fast.detect_many(texts, languages) == expected
        with monkeypatch.context() as m:  # texts past the compiled product's sizes mixed with the others
            m.setattr(langid_fast, "FUSED_MAX", 40)
            assert fast.detect_many(texts, languages) == expected


def test_compiled_walk_refuses_tables_that_do_not_fit_together():
    """A table entry out of range is a ValueError naming it, never a read outside the arrays; the scratch counts
    are zero again afterwards."""
    from data_pipelines import _native

    fast = fast_identifier()
    data = "the cat sat on the mat".encode()
    n = len(data)
    ends = np.array([n], dtype=np.int64)

    def pairs(rowbase, output):
        return np.stack((rowbase, np.maximum(output, -1).astype(np.int32)), axis=1)

    def walk(nextmove, states, feats_len=n, scratch=None):
        scratch = np.zeros(len(fast._ptc), dtype=np.int32) if scratch is None else scratch
        feats, counts, bounds = (np.zeros(feats_len, np.int32), np.zeros(feats_len, np.int32),
                                 np.zeros(2, np.int64))
        k = _native.langid_walk(data, ends, nextmove, states, feats, counts, bounds, scratch, fast.depth)
        return k, feats[:k], counts[:k], scratch

    k, feats, counts, scratch = walk(fast._next, fast._states)
    assert k > 0 and counts.sum() == int((fast._features(data) >= 0).sum()) and not scratch.any()
    bad_next = np.array(fast._next)
    bad_next[fast._rowbase[0] + data[0]] = len(fast._rowbase)  # not a state
    bad_out = np.array(fast._out)
    bad_out[bad_out >= 0] = len(fast._ptc)  # not a feature
    for args, message in (((bad_next, fast._states), "not a state"),
                          ((fast._next, pairs(fast._rowbase, bad_out)), "not a feature"),
                          ((fast._next, pairs(fast._rowbase + len(fast._next), fast._out)), "outside nextmove"),
                          ((fast._next, fast._states.ravel()[:-1]), "do not fit together")):
        with pytest.raises(ValueError, match=message):
            walk(*args)
    scratch = np.zeros(len(fast._ptc), dtype=np.int32)
    with pytest.raises(ValueError, match="feats is too short"):
        walk(fast._next, fast._states, feats_len=2, scratch=scratch)
    assert not scratch.any()
    with pytest.raises(ValueError, match="items of 8 bytes, expected 4"):
        walk(fast._next.astype(np.int64), fast._states)
    assert _native.langid_walk(b"", np.zeros(0, np.int64), fast._next, fast._states,
                               *np.zeros((2, 1), np.int32), np.ones(1, np.int64), np.zeros(len(fast._ptc), np.int32),
                               fast.depth) == 0  # no texts
    with pytest.raises(ValueError, match="depth must be at least 1"):
        _native.langid_walk(data, ends, fast._next, fast._states, *np.zeros((2, n), np.int32),
                            np.zeros(2, np.int64), np.zeros(len(fast._ptc), np.int32), 0)


def test_compiled_walk_streams_cut_anywhere_give_each_texts_own_features(monkeypatch):
    """The compiled walk cuts a batch into 16 streams at arbitrary bytes (inside texts, next to empty ones,
    within a text's first ``depth`` bytes): every text's scores equal the numpy walk's, batch after batch."""
    fast = fast_identifier()
    rng = random.Random(8)
    pool = [t for _, t in check_set()] + ["", "a", "ab", "日本語", "THE END"]
    for _ in range(20):
        texts = [rng.choice(pool)[: rng.randint(0, 400)] for _ in range(rng.randint(20, 80))]
        compiled = fast.detect_many(texts, [])
        with monkeypatch.context() as m:
            m.setattr(langid_fast, "_native", None)
            assert fast.detect_many(texts, []) == compiled


def test_threads_sharing_the_identifier_get_their_own_results():
    """The compiled walk runs without the GIL: threads calling ``detect_many`` on the one process-wide identifier
    each get the single-threaded results (the walk's scratch counts are per call)."""
    from concurrent.futures import ThreadPoolExecutor

    fast = fast_identifier()
    rng = random.Random(6)
    texts = [t for _, t in check_set()]
    batches = [[" ".join(rng.choice(texts) for _ in range(40)) for _ in range(6)] for _ in range(4)]
    expected = [fast.detect_many(b, ["en"]) for b in batches]
    with ThreadPoolExecutor(4) as pool:
        for _ in range(3):
            assert list(pool.map(lambda b: fast.detect_many(b, ["en"]), batches)) == expected


@pytest.mark.parametrize("version", [None, 1])
def test_a_build_from_another_source_is_not_used(monkeypatch, caplog, version):
    """An extension built from another version of the source (a checkout ahead of its last ``pip install -e .``:
    functions missing, or taking other arguments) is left out with a warning saying how to rebuild it, rather than
    failing on every document."""
    import importlib
    import logging
    import sys
    import types

    from data_pipelines import native

    stale = types.ModuleType("data_pipelines._native")
    stale.langid_walk = stale.gopher_ngrams = stale.c4_lines = lambda *a: None
    if version is not None:
        stale.VERSION = version
    stale.__file__ = "/old/_native.so"
    import data_pipelines

    monkeypatch.setitem(sys.modules, "data_pipelines._native", stale)
    monkeypatch.setattr(data_pipelines, "_native", stale)
    try:
        with caplog.at_level(logging.WARNING, logger=native.__name__):
            assert importlib.reload(native).compiled is None
        assert f"(version {version or '1 or older'}, expected {native.VERSION})" in caplog.text
        assert "pip install -e ." in caplog.text
    finally:
        monkeypatch.undo()
        assert importlib.reload(native).compiled is not None


def _batched(words_sets: list[list[str]]) -> list:
    batch = BatchNGrams(words_sets)
    return [batch.view(d) for d in range(len(words_sets))]


@pytest.mark.parametrize("ngrams_class", ["_NGrams", "_HashedNGrams", "BatchNGrams"])
def test_repetition_counts_match_the_reference_loop(ngrams_class):
    rng = random.Random(1)
    words_sets = [t.split() for _, t in check_set()]
    for _ in range(400):
        vocab = [f"w{i}" * rng.randint(1, 3) for i in range(rng.randint(1, 10))]
        words_sets.append([rng.choice(vocab) for _ in range(rng.randint(1, 60))])
    # neighbours in a batch share words and n-grams: each document must still count only its own
    words_sets += [["a", "b", "a", "b"], ["a", "b"], ["b", "a", "b", "a", "b"], ["a"], ["a", "b", "c", "a", "b", "c"]]
    if ngrams_class == "BatchNGrams":
        all_ngrams = _batched(words_sets)
    else:
        all_ngrams = [getattr(gopher, ngrams_class)(words) for words in words_sets]
    for words, ngrams in zip(words_sets, all_ngrams):
        for n in range(1, 11):
            if len(words) >= n:
                assert ngrams.duplicated_chars(n) == reference_duplicated_chars(words, n), (words, n)
                assert ngrams.top_chars(n) == reference_top_chars(words, n), (words, n)
                grams = list(zip(*(words[i:] for i in range(n))))
                if ngrams_class != "_HashedNGrams":  # the hashed one answers "maybe" until it has counted
                    assert ngrams.repeats(n) == (len(set(grams)) < len(grams)), (words, n)


def test_compiled_repetition_statistics_match_the_reference_loop(sample_docs):
    """``_native.gopher_ngrams`` splits as ``str.split`` (every whitespace Python knows, in 1-, 2- and 4-byte
    strings) and gives each n's top and duplicate characters as the reference loops, up to n = 10; a
    document's filter decision is the Python path's."""
    from data_pipelines import _native

    rng = random.Random(4)
    spaces = [" ", "  ", "\t", "\n", "\x1c", "\x1f", "\x85", "\xa0", "\u2003", "\u3000", "\u2028"]
    texts = [t for _, t in check_set()] + [d.text for docs in sample_docs.values() for d in docs]
    texts += ["", " ", "a", "\u3000x\u3000", "x\u200by", "😀 a 😀 a 😀 a", "é e\u0301 é e\u0301"]
    for _ in range(300):
        vocab = ["".join(rng.choice("abé日😀") for _ in range(rng.randint(1, 3))) for _ in range(rng.randint(1, 8))]
        texts.append("".join(rng.choice(vocab) + rng.choice(spaces) for _ in range(rng.randint(0, 80))))
    ns = list(range(1, 11))
    for text in texts:
        words = text.split()
        num_words, tops, dups = _native.gopher_ngrams(text, ns, ns)
        assert num_words == len(words), text[:80]
        for n, top, dup in zip(ns, tops, dups):
            want = (reference_top_chars(words, n), reference_duplicated_chars(words, n)) if len(words) >= n else (0, 0)
            assert (top, dup) == want, (text[:80], n)
    with pytest.raises(ValueError, match="expected 1 to 1000"):
        _native.gopher_ngrams("a b", [0], [])
    # the paragraph and line counts: find_duplicates over PARAGRAPH_SPLIT's pieces and non_empty_lines
    from data_pipelines.filters.text import PARAGRAPH_SPLIT, find_duplicates, non_empty_lines

    pieces = ["a", "a b", "é", "日本", "😀", " ", "\t", "\n", "\n\n", "\n\n\n", " \n\n ", "\u3000", "\x85", "x\n"]
    texts += ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 30))) for _ in range(1500)]
    for text in texts:
        paragraphs = [p for p in PARAGRAPH_SPLIT.split(text.strip()) if p.strip()]
        lines = non_empty_lines(text)
        want = (len(paragraphs), *find_duplicates(paragraphs), len(lines), *find_duplicates(lines))
        assert _native.gopher_lines(text) == want, text[:80]
    block = gopher.GopherRepetition(top_n_grams={2: 0.05}, dup_n_grams={3: 0.05})
    decided = [block._native_checks(t) for t in texts if t.split()]
    python = [block._ngram_checks(t, t.split(), gopher._NGrams(t.split())) for t in texts if t.split()]
    assert decided == python and {"gopher_top_2_gram", None} <= set(decided)


def test_compiled_fineweb_counts_are_the_python_paths(sample_docs, monkeypatch):
    """``_native.fineweb_counts`` counts FineWebFilter's stripped lines (stop strings of several characters,
    short lines, repeated lines, every whitespace Python knows) and words as its Python path, and the filter
    decides the same with several settings; a blank text is ``fineweb_empty`` on both paths."""
    from data_pipelines import _native
    from data_pipelines.filters import fineweb
    from data_pipelines.filters.text import find_duplicates, non_empty_lines

    rng = random.Random(9)
    pieces = ["a", "b c", "end.", "quote'", '"', "!?", "..", "é", "日本", "😀", " ", "\t", "\n", "\n\n", "\u3000",
              "\x85", "\u2028", "x" * 40]
    texts = [t for _, t in check_set()] + [d.text for docs in sample_docs.values() for d in docs]
    texts += ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 30))) for _ in range(1500)]
    stops = (".", "'", '"', "!", "?", "..", "😀")
    for text in texts:
        lines = [line.strip() for line in non_empty_lines(text)]
        want = (len(lines), sum(line.endswith(stops) for line in lines), sum(len(line) <= 10 for line in lines),
                sum(map(len, lines)), find_duplicates(lines)[1], len(text.split()))
        assert _native.fineweb_counts(text, stops, 10) == want, text[:80]
    docs = [Document(str(i), t, "x", {}) for i, t in enumerate(texts)]
    for settings in ({}, {"line_punct_thr": 0.5, "line_punct_exclude_zero": True, "short_line_length": 3},
                     {"line_punct_thr": None, "short_line_thr": None, "char_duplicates_ratio": 0.5}):
        block = fineweb.FineWebFilter(**settings)
        compiled = [block.apply(d, StageStats()) for d in docs]
        with monkeypatch.context() as m:
            m.setattr(fineweb, "_native", None)
            assert [block.apply(d, StageStats()) for d in docs] == compiled, settings
        assert len(set(compiled)) >= 3 and "fineweb_empty" in compiled, (settings, set(compiled))
    assert fineweb.FineWebFilter(short_line_length=10**19).apply(docs[0], StageStats()) == "fineweb_short_line_ratio"


def test_compiled_c4_line_rules_are_the_python_paths(sample_docs, monkeypatch):
    """``_native.c4_lines`` keeps, removes and drops as C4Filter's Python loop (kept texts, per-reason counts and
    their order, statistics) with several settings, on texts built from every rule's trigger (sentence ends with
    closers, "...", curly quotes, long words, policy phrases in any case, blank-line runs, Unicode whitespace,
    citations in any case and what looks like one); texts with U+0130 / U+212A, or citations and characters
    beyond Latin-1, go to the Python path."""
    from data_pipelines import _native
    from data_pipelines.filters import c4

    rng = random.Random(10)
    lines = ["A short line.", "Three words here.", "two words", "Ends without", "Wait...", "Ask?!", "Quote.\"",
             "He said ’ok’", "(see this.)", "x" * 30 + ".", "Read the Privacy Policy today.", "We USE COOKIES here.",
             "Enable JavaScript now.", "lorem IPSUM dolor sit.", "a { b } c.", "café au lait é.", "日本語の文。",
             "a.b.c d e.", "end.) next. And more!", "Cite [1] this.", "\u212aelvin is here.", "ok .", "  spaced .  ",
             "\u3000wide space.\u3000", "tab\tin line.", "[edit]", " [Citation Needed] ", "x [12][EDIT] y z.",
             "Empty [] and [ ] kept.", "Fact[3].", "ends with [4]", "Wait a bit [citation needed]...", "{[1]}",
             "Read [1] the privacy [2] policy.", "lorem[1] ipsum dolor sit.", "Caf\u00e9 [5] au lait.",
             "\u00a0[6]\u00a0", "Half [citation need] [7", "日本 [1] 語で。"]  # the last: citations beyond Latin-1
    seps = ["\n", "\n", "\n\n", "\n \n", "\n\n\n"]
    texts = [t for _, t in check_set()] + [d.text for docs in sample_docs.values() for d in docs]
    texts += ["".join(rng.choice(lines) + rng.choice(seps) for _ in range(rng.randint(1, 12))) for _ in range(1500)]
    texts += ["", "\n\n", "One. Two. Three. Four. Five."]
    texts += ["\n\n".join(rng.choice(lines) for _ in range(400)) for _ in range(3)]  # past the first 64 kept lines
    docs = [Document(str(i), t, "x", {}) for i, t in enumerate(texts)]
    for settings in ({}, {"filter_no_terminal_punct": False}, {"min_num_sentences": 1, "max_word_length": 20},
                     {"min_words_per_line": None, "min_num_sentences": None, "remove_citations": False},
                     {"filter_lorem_ipsum": False, "filter_curly_bracket": False, "filter_javascript": False,
                      "policy_substrings": ["SEE THIS"]}):
        block = c4.C4Filter(**settings)
        runs = {}
        for path in ("compiled", "python"):
            with monkeypatch.context() as m:
                if path == "python":
                    m.setattr(c4, "_native", None)
                stats = StageStats()
                copies = [Document(d.id, d.text, d.source, {}) for d in docs]
                runs[path] = ([(block.apply(d, stats), d.text) for d in copies], stats.to_dict())
        assert runs["compiled"] == runs["python"], settings
        decisions = {r for r, _ in runs["compiled"][0]}
        assert len(decisions) >= 2 and runs["compiled"][1]["extra"], (settings, decisions)
    # settings the compiled rules cannot take (63 policy phrases, a threshold past C's integers) use the loop
    for settings in ({"policy_substrings": [f"p{i}" for i in range(63)]}, {"max_word_length": 10**19}):
        block = c4.C4Filter(**settings)
        assert block._policies is None and block.apply(Document("x", "One. Two. Three. Four. Five.", "x", {}),
                                                       StageStats()) is None
    native_judged = sum(_native.c4_lines(t, True, True, 3, 1000, True, True, True, True, (b"policy",), 5) is not None
                        for t in texts)
    assert 0.3 * len(texts) < native_judged < len(texts)  # most by the compiled rules, the rest by Python
    citing = [t for t in texts if "[" in t and t.isascii()]
    assert citing and all(_native.c4_lines(t, True, True, 3, 1000, True, True, True, True, (b"policy",), 5)
                          is not None for t in citing)


@pytest.mark.parametrize("path", ["compiled", "python"])
def test_a_blank_text_has_nothing_repeated(path, monkeypatch):
    """No paragraph and no line: every repetition ratio is 0 (it divided by zero before), on both paths."""
    if path == "python":
        monkeypatch.setattr(gopher, "_native", None)
    block = gopher.GopherRepetition()
    for text in ("", "   ", "\n\n\t\u3000"):
        assert block.apply(Document("b", text, "x", {}), StageStats()) is None
        assert block.apply_batch([Document("b", text, "x", {})], StageStats()) == [None]


def test_compiled_quality_counts_and_decisions_are_the_python_paths(sample_docs, monkeypatch):
    """``_native.gopher_quality`` counts as ``words_of``, ``count_words_with_letter``, ``str.lower``, ``str.count``
    and ``non_empty_lines`` do, on texts full of Unicode edge cases (superscript digits and Roman numerals are
    \\w but not \\d, Arabic digits are \\d, the Kelvin sign lowers to ASCII, U+0130 lowers to two characters),
    and GopherQuality decides as its Python path for several settings."""
    from data_pipelines import _native
    from data_pipelines.filters.text import PUNCTUATION, count_words_with_letter, non_empty_lines, words_of

    rng = random.Random(5)
    pieces = ["the", "The", "THE", "of", "and", "\u212ahe", "\u0130", "x²", "Ⅻ", "٣٤", "42", "_", "#", "...", "…",
              "..", "....", "a.", "«quoted»", "—", "•", "- item", "* x", "  ● y", "日本", "😀", "e\u0301", "'s", "(",
              "to", "with", "have", "that", "be", "x\u200by"]
    seps = [" ", "  ", "\t", "\n", "\n\n", " \n ", "\u3000", "\x85", "\xa0", "\x1c", "\u2028"]
    texts = [t for _, t in check_set()] + [d.text for docs in sample_docs.values() for d in docs]
    texts += ["", " ", "\n", "...", "…\n…", "# # #", "a\n  \n b...  \n"]
    for _ in range(400):
        texts.append("".join(rng.choice(pieces) + rng.choice(seps) for _ in range(rng.randint(0, 40))))
    stop_words = ["the", "be", "to", "of", "and", "that", "have", "with", "k\u0131"]
    stop_set = frozenset(w.lower() for w in stop_words)
    bullets = ("•", "●", "-", "*", "->")
    ascii_stops = tuple(w.encode() for w in stop_set if w.isascii())
    for text in texts:
        words = words_of(text)
        lines = non_empty_lines(text)
        stops = sum(w.lower() in stop_set for w in words)
        want = (len(words), sum(map(len, words)), count_words_with_letter(words), min(stops, 2), text.count("#"),
                text.count("..."), text.count("…"), len(lines),
                sum(line.lstrip().startswith(bullets) for line in lines),
                sum(line.rstrip().endswith(("...", "…")) for line in lines))
        assert _native.gopher_quality(text, PUNCTUATION, bullets, ascii_stops, stop_set, 2) == want, text[:80]
    for settings in ({}, {"min_doc_words": 3, "min_stop_words": 1}, {"min_doc_words": 1, "min_alpha_words_ratio": 0.9},
                     {"min_doc_words": 2, "max_bullet_lines_ratio": 0.2, "max_ellipsis_lines_ratio": 0.1},
                     {"min_doc_words": 1, "max_symbol_word_ratio": 0.01, "min_avg_word_length": 1, "stop_words": []}):
        block = gopher.GopherQuality(**settings)
        docs = [Document(str(i), t, "x", {}) for i, t in enumerate(texts)]
        compiled = [block.apply(d, StageStats()) for d in docs]
        with monkeypatch.context() as m:
            m.setattr(gopher, "_native", None)
            assert [block.apply(d, StageStats()) for d in docs] == compiled, settings
        assert len(set(compiled)) >= 3, (settings, set(compiled))  # several rules decide


def _run_chain(kind: str, docs: list[Document]) -> tuple[list[tuple], list[dict]]:
    cfg = yaml.safe_load((REPO / "conf/filters/default.yaml").read_text())
    blocks = filters_for_source(cfg, kind, kind)
    stats = [StageStats() for _ in blocks]
    copies = [Document(d.id, d.text, d.source, dict(d.metadata)) for d in docs]
    kept = [(d.id, d.text, sorted(d.metadata.items())) for d in run_blocks(blocks, copies, stats)]
    return kept, [s.to_dict() for s in stats]


def test_filter_chains_decide_exactly_as_the_reference(monkeypatch, reference_langid, sample_docs):
    check = [Document(name, text, "check", {}) for name, text in check_set()]
    inputs = {"web": check + sample_docs["web"], "jsonl": check, "wiki": sample_docs["wiki"] + check,
              "books": sample_docs["books"] + check}
    fast = {kind: _run_chain(kind, docs) for kind, docs in inputs.items()}
    monkeypatch.setattr(language, "_identifier", lambda: reference_langid)
    monkeypatch.setattr(gopher, "_native", None)  # the Python n-grams, each statistic the reference loop's
    monkeypatch.setattr(gopher.GopherRepetition, "batch_size", 1)  # one document at a time: no BatchNGrams
    for cls in (gopher._NGrams, gopher._HashedNGrams):  # the long books take the numpy n-grams
        monkeypatch.setattr(cls, "duplicated_chars", lambda self, n: reference_duplicated_chars(self._words, n))
        monkeypatch.setattr(cls, "top_chars", lambda self, n: reference_top_chars(self._words, n))
    for kind, docs in inputs.items():
        assert _run_chain(kind, docs) == fast[kind], kind
    kept_web = {doc_id for doc_id, _, _ in fast["web"][0]}
    kept_wiki = {doc_id for doc_id, _, _ in fast["wiki"][0]}
    assert kept_web and "de-prose" not in kept_web and "de-prose" not in kept_wiki  # English only
    assert any(k.startswith("en-") for k in kept_wiki)
    assert sum(sum(s["dropped"].values()) for s in fast["web"][1]) >= len(check) // 2  # both decisions exercised


def test_batches_keep_one_at_a_time_results(monkeypatch, sample_docs):
    """A batched block (``batch_size`` > 1) keeps and counts exactly as one document at a time, across batch
    edges and with empty documents in a batch."""
    docs = [Document(name, text, "check", {}) for name, text in check_set()] + sample_docs["web"]
    docs[3:3] = [Document("empty", "", "check", {}), Document("blank", " \n\t", "check", {})]

    def run(batch_size: int) -> tuple:
        block = language.LanguageFilter(languages=["en"])  # the chain's normaliser would drop the empty ones
        block.batch_size = batch_size
        stats = StageStats()
        kept = [(d.id, sorted(d.metadata.items())) for d in block([Document(d.id, d.text, d.source, {})
                                                                 for d in docs], stats)]
        return kept, stats.to_dict()

    batched = run(language.LanguageFilter.batch_size)
    assert batched[1]["dropped"]["language_empty"] >= 2 and batched[1]["dropped"]["lang_below_threshold"] > 5
    assert run(1) == batched and run(5) == batched
    chain = _run_chain("web", docs)
    monkeypatch.setattr(language.LanguageFilter, "batch_size", 1)
    assert _run_chain("web", docs) == chain
    monkeypatch.setattr(gopher, "_native", None)  # Gopher's batches through BatchNGrams, as without a compiler
    assert _run_chain("web", docs) == chain


def test_normalize_shortcut_is_exactly_the_full_path(monkeypatch, sample_docs):
    """``Normalize._unchanged`` skips the regex passes only where they would change nothing: same texts and
    the same change counts as the full path, for every option set, on real and adversarial texts."""
    import re

    from data_pipelines.filters import normalize

    everything = "".join(map(chr, range(0x110000)))
    acted_on = set(re.findall(r"\s", everything)) - {" ", "\t", "\n"}
    acted_on |= set(normalize._CONTROL.findall(everything)) | set(normalize._LINE_BREAKS.findall(everything))
    assert set(normalize._SUSPECT.findall(everything)) == acted_on

    rng = random.Random(3)
    alphabet = ["a", "b", ".", " ", " ", "\t", "\n", "\n", "\r", "\x00", "\x0b", "\u200b", "\xa0", "\u3000", "\x85",
                "\u2028", "é", "e\u0301", "\ud800", "\x1f", "\x7f", "\x9f", "\u2060", "\ufeff", "\u2009", "\u1680",
                "\u3001", "\U0001f600"]
    texts = [t for _, t in check_set()] + [d.text for docs in sample_docs.values() for d in docs[:20]]
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12))) for _ in range(3000)]
    options = [{}, {"collapse_spaces": False, "strip_leading": False, "max_newlines": 3}, {"max_newlines": 1},
               {"max_newlines": None, "form": None}, {"remove_control": False, "strip_trailing": False}]
    for opts in options:
        block = normalize.Normalize(**opts)
        compiled = [block._unchanged(t) for t in texts]  # the compiled test is the Python one, text for text
        with monkeypatch.context() as m:
            m.setattr(normalize, "_native", None)
            assert [block._unchanged(t) for t in texts] == compiled, opts
        assert 100 < sum(compiled) < len(texts) - 100
        fast_stats = StageStats()
        fast = [block.normalize(t, fast_stats) for t in texts]
        with monkeypatch.context() as m:
            m.setattr(normalize.Normalize, "_unchanged", lambda self, text: False)
            full_stats = StageStats()
            assert [block.normalize(t, full_stats) for t in texts] == fast, opts
        assert fast_stats.to_dict() == full_stats.to_dict(), opts


def test_pii_pre_checks_skip_only_passes_that_find_nothing(monkeypatch, sample_docs):
    import re

    from data_pipelines.filters import pii

    rng = random.Random(5)
    alphabet = list("0123456789") * 3 + list(".:-+ ()@_%abcdefAFgx\n") + ["1.2.3.4", "::", "+44 ", "(415) ", "415.",
                                                                        "555-", "2671", "a@b.co", "e.g.::", "é"]
    texts = [t for _, t in check_set()] + [d.text for docs in sample_docs.values() for d in docs]
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 30))) for _ in range(3000)]
    for found in ("+44 20 7946 0958", "(415) 555-2671", "415.555.2671", "1-415-555-2671", "ann@example.org",
                  "a.b-c+d%e_f@x.io", "8.8.8.8", "123.45.67.89", "2001:4860:4860::8888"):
        texts += [found, f"call {found} now.", f"x{found}x"]
    block = pii.PIIRedactor(kinds=["secret", "email", "ip", "phone"])
    fast = [block.redact(t) for t in texts]
    # the compiled scan is each candidate pattern's search, on these texts and on Unicode digits and hex runs
    from data_pipelines import _native

    extra = ["١.٢.٣.٤", "1.2.3.4", "1.2345.6.7", "1.22.333.4", ":abcd:", ":abcde:", "::", "+٣", "٥٥٥-١٢٣٤",
             "a@b", "@b", "a@", "x.@Y", "12.3.4", "0.1.2.3.", "1a1.1.1.1", "x::", "e.g.::", ".::", "_::", "é::",
             "٣::", "abcd::", "abcde::", " abcd:1:", "g+1", "_+1", "-+1", "++1", "é+1", " +1", "555-1234-",
             "555-1234.5", "555-1234.", "555-1234x", "555-1234é", "555-1234_", "555-1234 ", "555-1234٣"]
    more = alphabet + ["٣", "a", "F", "g"]
    extra += ["".join(rng.choice(more) for _ in range(rng.randint(1, 20))) for _ in range(4000)]
    patterns = {"email": pii._EMAIL_CANDIDATE, "ipv4": pii._IPV4_CANDIDATE, "ipv6": pii._IPV6_CANDIDATE,
                "phone": pii._PHONE_CANDIDATE}
    for text in texts + extra:
        want = sum(pii._CANDIDATE_BITS[k] for k, p in patterns.items() if p.search(text))
        assert _native.pii_candidates(text) == want, text
    compiled = [block.redact(t) for t in extra]
    with monkeypatch.context() as m:
        m.setattr(pii, "_native", None)
        assert [block.redact(t) for t in texts] == fast and [block.redact(t) for t in extra] == compiled
    # the Python pre-checks (the path without the compiled scan) skip only passes that would find nothing
    monkeypatch.setattr(pii, "_native", None)
    everything = re.compile("")
    for name in ("_EMAIL_CANDIDATE", "_IPV4_CANDIDATE", "_IPV6_CANDIDATE", "_PHONE_CANDIDATE"):
        monkeypatch.setattr(pii, name, everything)
    monkeypatch.setattr(pii, "_LITERAL_LED", {kind: (everything,) for kind in pii._LITERAL_LED})
    assert [block.redact(t) for t in texts] == fast
    assert sum(bool(r[1]) for r in fast) > 100  # the random texts do hold addresses and numbers


def test_one_marker_scan_finds_what_in_finds_and_redacts_the_same(monkeypatch, sample_docs):
    """``_native.markers_in`` is ``marker in text`` for every marker (non-ASCII markers and texts, overlaps, the
    empty marker, the text's end), and the PII block redacts exactly as with one ``in`` test per marker; after a
    rule replaces a secret, later rules see the markers of the redacted text."""
    from data_pipelines import _native
    from data_pipelines.filters import pii

    from .test_filters_code_pii import SECRETS_PY

    rng = random.Random(7)
    markers = ("AKIA", "ghp_", "://", "xox", "é", "日本", "😀x", "aa", "", "eyJ", "hooks.slack.com")
    alphabet = ["a", "A", "K", "I", "gh", "p_", ":", "/", "x", "o", "é", "日", "本", "😀", " ", "eyJ", "hooks.slack."]
    texts = ["", "a", "aa", "AKI", "AKIA", "xAKIAx", "😀x", "ghp", "://"]
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30))) for _ in range(2000)]
    for text in texts:
        want = sum(1 << i for i, m in enumerate(markers) if m in text)
        assert _native.markers_in(text, markers) == want, text
    with pytest.raises(ValueError, match="at most 64"):
        _native.markers_in("x", tuple(map(str, range(65))))

    block = pii.PIIRedactor(kinds=["secret", "email", "ip", "phone"])
    docs = [d.text for docs in sample_docs.values() for d in docs] + [SECRETS_PY, SECRETS_PY.replace("\n", " ")]
    docs += ["".join(rng.choice(SECRETS_PY.splitlines()) + rng.choice(["\n", " "]) for _ in range(8))
             for _ in range(200)]
    compiled = [block.redact(t) for t in docs]
    monkeypatch.setattr(pii, "_native", None)
    assert [block.redact(t) for t in docs] == compiled
    assert sum(r[1].get("secret", 0) for r in compiled) > 200


def test_bench_filter_table_has_every_block_and_the_chain():
    from data_pipelines import bench

    table = bench.filter_table([t for _, t in check_set()], repeats=1)
    for name in ("normalize", "language", "gopher_quality", "gopher_repetition", "c4", "fineweb", "pii", "whole chain"):
        assert f"| {name} " in table, table


def test_utf8_len_is_the_encoded_length(sample_docs):
    from data_pipelines.stats import utf8_len

    texts = [t for _, t in check_set()] + [d.text for docs in sample_docs.values() for d in docs]
    texts += ["", "abc", "é", "日本", "\ud800", "a\x00b", "\U0001f600", "\udfff\ud800"]
    assert [utf8_len(t) for t in texts] == [len(t.encode("utf-8", "surrogatepass")) for t in texts]


def test_a_batched_block_that_rewrites_texts_counts_as_one_at_a_time():
    """Bytes in are counted before the block runs and emptiness is judged then, whatever apply_batch does to
    the texts (here: upper-cases them and drops the ones it empties)."""
    from data_pipelines.filters.base import DocumentFilter

    class Shout(DocumentFilter):
        name = "shout"

        def apply(self, doc, stats):
            doc.text = doc.text.upper() if "drop" not in doc.text else ""
            return "shout_emptied" if not doc.text else None

    texts = ["a b", "", "drop me", "  ", "é c", "drop", "x"]
    results = []
    for size in (1, 3):
        block = Shout()
        block.batch_size = size
        stats = StageStats()
        kept = [d.text for d in block([Document(str(i), t, "x", {}) for i, t in enumerate(texts)], stats)]
        results.append((kept, stats.to_dict()))
    assert results[0] == results[1] and results[0][0] == ["A B", "É C", "X"]
    assert results[0][1]["bytes_in"] == sum(len(t.encode()) for t in texts)
