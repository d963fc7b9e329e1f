"""The objectives, measured over many samples: BERT masks 15% of the maskable tokens with the 80/10/10
split and never a special token, builds [CLS] A [SEP] B [SEP] pairs from one document with balanced order
labels; T5's span corruption has T5's lengths, density and span length, and inputs + targets reassemble the
original window."""

from __future__ import annotations

import numpy as np
import pytest

from pretrain.models.bert.objective import BertObjective, mask_tokens
from pretrain.models.objective import IGNORE, sample_rng
from pretrain.models.t5.objective import T5Objective, random_spans_noise_mask, span_corruption, t5_lengths

VOCAB = 1000
PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4
SPECIAL = np.array([PAD, UNK, CLS, SEP, MASK])
RANDOM_IDS = np.arange(5, VOCAB)


def test_masking_rates_and_80_10_10_over_many_samples():
    rng = np.random.RandomState(0)
    chosen = total = as_mask = as_random = kept = 0
    for i in range(3000):
        tokens = rng.randint(5, VOCAB, size=128)
        tokens[rng.rand(128) < 0.1] = SEP  # document separators and other specials sprinkled in
        tokens[0], tokens[-1] = CLS, SEP
        inputs, labels = mask_tokens(tokens, sample_rng(7, i, 1), special_ids=SPECIAL, mask_id=MASK,
                                     random_ids=RANDOM_IDS)
        special = np.isin(tokens, SPECIAL)
        picked = labels != IGNORE
        assert not (picked & special).any()  # special tokens are never masked
        assert (inputs[special] == tokens[special]).all()
        assert (labels[picked] == tokens[picked]).all()
        assert (inputs[~picked] == tokens[~picked]).all()  # only chosen positions change
        assert picked.sum() == round(0.15 * (~special).sum())
        chosen += picked.sum()
        total += (~special).sum()
        as_mask += (inputs[picked] == MASK).sum()
        changed = picked & (inputs != MASK) & (inputs != tokens)
        as_random += changed.sum()
        assert not np.isin(inputs[changed], SPECIAL).any()  # random replacements are real tokens
        kept += (picked & (inputs == tokens)).sum()
    assert chosen / total == pytest.approx(0.15, abs=0.002)
    assert as_mask / chosen == pytest.approx(0.8, abs=0.01)
    # a random replacement hits the original token 1 time in 995: counted as kept
    assert as_random / chosen == pytest.approx(0.1, abs=0.01)
    assert kept / chosen == pytest.approx(0.1, abs=0.01)


def bert(sop: bool, seq: int = 32) -> BertObjective:
    return BertObjective(seq_length=seq, cls_id=CLS, sep_id=SEP, pad_id=PAD, mask_id=MASK, eod_id=SEP,
                         special_ids=SPECIAL, random_ids=RANDOM_IDS, seed=11, sop=sop)


def unmask(sample: dict) -> np.ndarray:
    return np.where(sample["labels"] != IGNORE, sample["labels"], sample["input_ids"])


def test_sop_pairs_are_two_consecutive_pieces_of_one_document():
    obj = bert(sop=True)
    rng = np.random.RandomState(1)
    labels = []
    for i in range(2000):
        window = rng.randint(5, VOCAB, size=obj.window_length())
        window[rng.rand(window.size) < 0.08] = SEP  # document boundaries (EOD)
        s = obj(i, window)
        assert s["input_ids"].shape == (32,) and s["sop_labels"].shape == ()
        ids, types, attn = unmask(s), s["token_type_ids"], s["attention_mask"]
        n = int(attn.sum())
        assert (ids[n:] == PAD).all() and (attn[:n] == 1).all() and (s["labels"][n:] == IGNORE).all()
        seps = np.flatnonzero(ids[:n] == SEP)
        assert ids[0] == CLS and len(seps) == 2 and seps[1] == n - 1
        a, b = ids[1 : seps[0]], ids[seps[0] + 1 : n - 1]
        assert (types[: seps[0] + 1] == 0).all() and (types[seps[0] + 1 : n] == 1).all() and (types[n:] == 0).all()
        # the pieces hold no document boundary, and in label order they are the longest EOD-free run, cut once
        cuts = np.concatenate(([-1], np.flatnonzero(window == SEP), [window.size]))
        k = int(np.argmax(np.diff(cuts) - 1))
        run = window[cuts[k] + 1 : cuts[k + 1]]
        if run.size >= 2:
            first, second = (b, a) if s["sop_labels"] == 1 else (a, b)
            assert first.size and second.size and np.array_equal(np.concatenate([first, second]), run)
            labels.append(int(s["sop_labels"]))
        else:
            assert s["sop_labels"] == IGNORE
    assert np.mean(labels) == pytest.approx(0.5, abs=0.04)
    again = obj(5, window)  # a function of (seed, index, window): resume sees the same batches
    assert all(np.array_equal(again[k], obj(5, window)[k]) for k in again)
    assert not np.array_equal(obj(5, window)["input_ids"], obj(6, window)["input_ids"])


def test_without_sop_the_window_is_one_segment():
    obj = bert(sop=False)
    window = np.arange(5, 5 + obj.window_length())
    s = obj(0, window)
    assert "sop_labels" not in s and s["attention_mask"].all() and not s["token_type_ids"].any()
    ids = unmask(s)
    assert ids[0] == CLS and ids[-1] == SEP and np.array_equal(ids[1:-1], window)


def test_t5_lengths_are_t5s():
    assert t5_lengths(512) == (568, 114)  # the values of T5's random_spans_helper for inputs of 512
    assert t5_lengths(64) == (70, 14)  # 10 noise tokens in 3 spans: 60 + 3 + 1 inputs, 10 + 3 + 1 targets
    for n in (32, 64, 100, 512, 1024):
        raw, targets = t5_lengths(n)
        inputs, tgt = span_corruption(np.arange(10, 10 + raw), sample_rng(0, 0, 0), np.arange(200, 300), 1)
        assert inputs.size == n and tgt.size == targets


def reassemble(inputs: np.ndarray, targets: np.ndarray, sentinel_ids: np.ndarray) -> np.ndarray:
    """Put the target spans back in place of the input sentinels (what a correct T5 would do)."""
    pos = {int(s): k for k, s in enumerate(sentinel_ids)}
    spans, cur = {}, None
    for t in targets[:-1]:
        if int(t) in pos:
            cur = pos[int(t)]
            spans[cur] = []
        else:
            spans[cur].append(int(t))
    out = []
    for t in inputs[:-1]:
        out.extend(spans[pos[int(t)]] if int(t) in pos else [int(t)])
    return np.array(out)


def test_span_corruption_reassembles_the_original_with_t5_statistics():
    sentinels = np.arange(VOCAB - 1, VOCAB - 101, -1)  # <extra_id_0> = the top id, as in T5
    raw, target_len = t5_lengths(128)
    obj = T5Objective(seq_length=128, target_length=target_len + 4, raw_length=raw, sentinel_ids=sentinels,
                      eos_id=1, seed=3)
    noise = spans = tokens = 0
    rng = np.random.RandomState(2)
    for i in range(1000):
        window = rng.randint(5, VOCAB - 100, size=raw)
        s = obj(i, window)
        assert s["input_ids"].shape == (128,) and s["labels"].shape == (target_len + 4,)
        assert (s["labels"][target_len:] == IGNORE).all()
        inputs, targets = s["input_ids"], s["labels"][s["labels"] != IGNORE]
        assert inputs[-1] == 1 and targets[-1] == 1
        assert np.array_equal(reassemble(inputs, targets, sentinels), window)
        used = targets[np.isin(targets, sentinels)]
        assert np.array_equal(used, sentinels[: used.size])  # sentinels in order, one per span
        assert np.array_equal(inputs[np.isin(inputs, sentinels)], used)
        noise += targets.size - 1 - used.size
        spans += used.size
        tokens += raw
    assert noise / tokens == pytest.approx(0.15, abs=0.005)
    assert noise / spans == pytest.approx(3.0, abs=0.15)


def test_noise_mask_starts_with_kept_tokens_and_alternates():
    for i in range(200):
        m = random_spans_noise_mask(50, sample_rng(1, i, 2))
        assert not m[0] and m.sum() == round(50 * 0.15)
        assert int(np.sum(m[1:] & ~m[:-1])) == round(m.sum() / 3)  # number of noise spans
