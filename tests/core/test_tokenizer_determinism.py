"""Tokenizer training gives a byte-identical ``tokenizer.json`` whatever the trainer's hash-set order.

The Unigram trainer hands the characters it must keep (but lost in training) the scores ``min, min + 1e-4, ...``
in ``AHashSet`` order, randomly seeded per process and per trainer; when the trained model's lowest piece is
itself a character, it ties with the lowest rung. These tests replay that step in every order, and train on
a corpus that produces such a tie.
"""

from __future__ import annotations

import hashlib
import inspect
import itertools
import json
import random
import textwrap

import pytest

from pretrain.core.tokenizer import (
    TokenizerSpec,
    _canonical_unigram,
    _sort_kept_characters,
    build_untrained,
    save_tokenizer,
    train_tokenizer,
)

SPEC = TokenizerSpec(kind="unigram", vocab_size=300)
SPECIALS = ["<pad>", "</s>", "<unk>"]


def _finalize_like_the_trainer(model: list[tuple[str, float]], required: list[str], noise: float = 0.0):
    """What ``UnigramTrainer::finalize`` (tokenizers 0.2x) returns, with ``required`` in the given set order.

    ``noise`` perturbs the trained scores in their last digits, as the multi-threaded E-step does.
    """
    model = [(p, s + noise) for p, s in model]
    min_score = min(s for _, s in model)
    scores = dict(model)
    pieces, penalty = [], 0.0
    for c in required:
        if c in scores:
            pieces.append((c, scores[c]))
        else:
            pieces.append((c, min_score + penalty))
            penalty += 1e-4
    pieces += [(p, s) for p, s in model if p not in required]
    pieces.sort(key=lambda x: -x[1])  # stable, as Rust's sort_by
    return [(t, 0.0) for t in SPECIALS] + pieces


def _canonical_bytes(vocab: list[tuple[str, float]]) -> str:
    from tokenizers import Tokenizer, models

    return _canonical_unigram(Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False)), SPEC).to_str()


# A trained model whose lowest piece is the character 'X' (as in the corpus where 'X'/'Z' swapped ids), with
# ties among characters and words above it; the trainer must also keep '\n', 'B', 'V', 'W', 'Z', 'k', 'q'.
MODEL = [("▁the", -3.2), ("e", -3.9), ("▁a", -4.4), ("t", -4.4), ("s", -4.4), ("▁of", -5.0), ("ing", -6.1),
         ("%", -9.011787), ("▁http://", -9.011787), ("X", -10.011069049179683), ("▁WARRANT", -10.011069049179683)]
KEPT = ["\n", "B", "V", "W", "Z", "k", "q"]


def test_kept_characters_are_ordered_the_same_whatever_the_set_order():
    required = KEPT + ["X", "e", "t", "s"]  # the trained characters are required too
    rng = random.Random(0)
    outputs = set()
    for _ in range(300):
        order = rng.sample(required, len(required))
        outputs.add(_canonical_bytes(_finalize_like_the_trainer(MODEL, order, noise=rng.choice([0, 2e-15, -3e-15]))))
    assert len(outputs) == 1
    vocab = json.loads(outputs.pop())["model"]["vocab"]
    # The chain min .. min + 6e-4 holds 8 characters (the 7 kept ones and the tied 'X'): sorted onto its scores.
    lo = -10.011069
    expected = [(c, round(lo + k * 1e-4, 6)) for c, k in zip(["\n", "B", "V", "W", "X", "Z"], range(6, 0, -1))]
    assert [tuple(x) for x in vocab[-9:]] == expected + [("k", lo), ("q", lo), ("▁WARRANT", lo)]
    assert {p for p, _ in vocab} == {p for p, _ in MODEL} | set(KEPT) | set(SPECIALS)


def test_a_ladder_without_ties_keeps_the_trainer_scores_in_sorted_character_order():
    """No tie at the bottom (the lowest trained piece is a word): each rung gets one character, sorted."""
    model = [(p, s) for p, s in MODEL if p != "X"]
    outputs = set()
    for order in itertools.permutations(["Z", "q", "B", "X"]):
        pieces = _sort_kept_characters(_finalize_like_the_trainer(model, list(order))[len(SPECIALS):])
        outputs.add(tuple((p, round(s, 6)) for p, s in pieces if len(p) == 1 and s < -10))
    lo = -10.011069
    assert outputs == {(("B", round(lo + 3e-4, 6)), ("X", round(lo + 2e-4, 6)), ("Z", round(lo + 1e-4, 6)), ("q", lo))}


def _corpus() -> list[str]:
    """Real code plus characters that only occur inside a frequent word (kept, not trained) or alone once."""
    src = inspect.getsource(textwrap)
    texts = [src[i : i + 2000] for i in range(0, len(src), 2000)]
    return texts + [(" " + g + "mega") * 40 for g in "αβγδεζ"] + [" ".join("§¶†‡°±")]


def test_the_corpus_gives_the_trainer_a_tie_at_the_lowest_rung():
    """Guards the next test: without tied kept characters it would test nothing."""
    tok, trainer = build_untrained(TokenizerSpec(kind="unigram", vocab_size=300, sentinel_tokens=5))
    tok.train_from_iterator(iter(_corpus()), trainer=trainer)
    scores = [s for p, s in json.loads(tok.to_str())["model"]["vocab"] if len(p) == 1 and p not in SPECIALS]
    lowest = min(scores)
    assert sum(abs(s - lowest) < 1e-9 for s in scores) >= 2, "this corpus no longer makes kept characters tie"
    assert any(abs(s - lowest - 1e-4) < 1e-9 for s in scores), "this corpus no longer makes a kept-character ladder"


@pytest.mark.parametrize("kind", ["unigram", "bpe", "wordpiece"])
def test_repeated_training_is_byte_identical(kind, tmp_path):
    """Six trainings, each with freshly seeded hash sets; the old Unigram code gave ~17 outputs in 20 here."""
    spec = TokenizerSpec(kind=kind, vocab_size=300, sentinel_tokens=5 if kind == "unigram" else 0)
    texts = _corpus()
    digests = set()
    for n in range(6):
        save_tokenizer(train_tokenizer(spec, lambda: iter(texts)), tmp_path / f"{n}.json")
        digests.add(hashlib.sha256((tmp_path / f"{n}.json").read_bytes()).hexdigest())
    assert len(digests) == 1
