"""Pretraining objectives that are not next-token prediction: BERT's masked LM (+ sentence order) and T5's
span corruption.

Each objective is a pure function of ``(seed, global sample index, raw token window)``: the random numbers
come from a ``RandomState`` seeded with exactly those words, so a resumed run rebuilds the very same
batches, and DataLoader workers need no shared state. (``RandomState`` rather than ``Generator`` because its
streams are frozen across NumPy releases, as in :mod:`pretrain.data.dataset`.)

* :func:`mask_tokens` — BERT: ``mlm_probability`` of the maskable (non-special) positions are chosen, exactly
  ``round(p * n)`` of them (the reference implementation's count, not a Bernoulli draw); of those 80% become
  ``[MASK]``, 10% a random non-special token, 10% stay; labels are ``-100`` elsewhere. Special tokens
  (``[CLS] [SEP] [PAD] [MASK] [UNK]``, the EOD) are never chosen.
* :class:`BertObjective` — builds ``[CLS] A [SEP] B [SEP]`` (sentence-order prediction, ALBERT) or
  ``[CLS] window [SEP]`` and masks it.
* :func:`random_spans_noise_mask`, :func:`span_corruption`, :func:`t5_lengths` — T5: a port of
  ``t5.data.preprocessors.random_spans_noise_mask`` / ``noise_span_to_unique_sentinel`` /
  ``random_spans_helper`` to NumPy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IGNORE = -100
_MLM_SALT, _T5_SALT = 0x4D4C4D, 0x543553  # keep the objectives' streams apart from each other


def sample_rng(seed: int, index: int, salt: int) -> np.random.RandomState:
    """The generator of one sample: a function of (seed, sample index, objective) only."""
    words = np.array([seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF, index & 0xFFFFFFFF, (index >> 32) & 0xFFFFFFFF,
                      salt], dtype=np.uint32)
    return np.random.RandomState(words)


# ------------------------------------------------------------------------------------------------ BERT


def mask_tokens(tokens: np.ndarray, rng: np.random.RandomState, *, special_ids: np.ndarray, mask_id: int,
                random_ids: np.ndarray, mlm_probability: float = 0.15, mask_replace_prob: float = 0.8,
                random_replace_prob: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """(masked input ids, labels). ``random_ids`` are the ids a "random token" is drawn from (the real,
    non-special vocabulary — never the padding rows of an enlarged embedding)."""
    tokens = np.asarray(tokens, dtype=np.int64)
    labels = np.full(tokens.shape, IGNORE, dtype=np.int64)
    candidates = np.flatnonzero(~np.isin(tokens, special_ids))
    n = int(round(mlm_probability * candidates.size))
    if candidates.size and mlm_probability > 0:
        n = max(1, n)
    if n == 0:
        return tokens.copy(), labels
    chosen = np.sort(rng.choice(candidates, size=n, replace=False))
    labels[chosen] = tokens[chosen]
    out = tokens.copy()
    u = rng.random_sample(n)
    to_mask = chosen[u < mask_replace_prob]
    to_random = chosen[(u >= mask_replace_prob) & (u < mask_replace_prob + random_replace_prob)]
    out[to_mask] = mask_id
    out[to_random] = random_ids[rng.randint(0, random_ids.size, size=to_random.size)]
    return out, labels


def longest_document_span(window: np.ndarray, eod_id: int) -> tuple[int, int]:
    """[start, end) of the longest run of the window without an EOD token: the biggest piece of one document
    (the first such piece on ties)."""
    cuts = np.concatenate(([-1], np.flatnonzero(window == eod_id), [window.size]))
    lengths = np.diff(cuts) - 1
    k = int(np.argmax(lengths))
    return int(cuts[k] + 1), int(cuts[k + 1])


@dataclass
class BertObjective:
    """Masked LM (+ optional sentence-order prediction) on a raw window of :meth:`window_length` tokens.

    Without SOP: ``[CLS] window [SEP]`` (documents inside the window stay separated by their EOD token, as in
    RoBERTa's packed "full sentences"). With SOP: the longest EOD-free run of the window (one document) is cut
    at a random point into A and B, which are consecutive text of one document; the sample is
    ``[CLS] A [SEP] B [SEP]`` (label 0) or, half of the time, ``[CLS] B [SEP] A [SEP]`` (label 1); the rest is
    ``[PAD]`` with ``attention_mask`` 0. A window without two consecutive non-EOD tokens gets label -100.
    """

    seq_length: int
    cls_id: int
    sep_id: int
    pad_id: int
    mask_id: int
    eod_id: int
    special_ids: np.ndarray
    random_ids: np.ndarray
    seed: int
    sop: bool = False
    mlm_probability: float = 0.15
    mask_replace_prob: float = 0.8
    random_replace_prob: float = 0.1

    def window_length(self) -> int:
        return self.seq_length - (3 if self.sop else 2)

    def __call__(self, index: int, window: np.ndarray) -> dict[str, np.ndarray]:
        rng = sample_rng(self.seed, int(index), _MLM_SALT)
        window = np.asarray(window, dtype=np.int64)
        s = self.seq_length
        ids = np.full(s, self.pad_id, dtype=np.int64)
        types = np.zeros(s, dtype=np.int64)
        attn = np.zeros(s, dtype=np.int64)
        sop_label = IGNORE
        if not self.sop:
            seq = np.concatenate(([self.cls_id], window, [self.sep_id]))
            ids[: seq.size] = seq
            attn[: seq.size] = 1
        else:
            lo, hi = longest_document_span(window, self.eod_id)
            if hi - lo >= 2:
                cut = lo + int(rng.randint(1, hi - lo))
                a, b = window[lo:cut], window[cut:hi]
                sop_label = int(rng.random_sample() < 0.5)
                if sop_label:
                    a, b = b, a
            else:  # nothing to order: the whole window as segment A, B empty
                a, b = window, window[:0]
            seq = np.concatenate(([self.cls_id], a, [self.sep_id], b, [self.sep_id]))
            ids[: seq.size] = seq
            types[a.size + 2 : seq.size] = 1
            attn[: seq.size] = 1
        masked, labels = mask_tokens(
            ids, rng, special_ids=self.special_ids, mask_id=self.mask_id, random_ids=self.random_ids,
            mlm_probability=self.mlm_probability, mask_replace_prob=self.mask_replace_prob,
            random_replace_prob=self.random_replace_prob,
        )
        out = {"input_ids": masked, "token_type_ids": types, "attention_mask": attn, "labels": labels}
        if self.sop:
            out["sop_labels"] = np.array(sop_label, dtype=np.int64)
        return out


# ------------------------------------------------------------------------------------------------ T5


def _span_counts(length: int, noise_density: float, mean_noise_span_length: float) -> tuple[int, int]:
    num_noise = int(round(length * noise_density))
    num_noise = min(max(num_noise, 1), length - 1)
    num_spans = max(int(round(num_noise / mean_noise_span_length)), 1)
    return num_noise, num_spans


def t5_lengths(inputs_length: int, noise_density: float = 0.15, mean_noise_span_length: float = 3.0) -> tuple[int, int]:
    """(raw tokens per window, targets length) so that the corrupted inputs are exactly ``inputs_length``
    tokens: T5's ``random_spans_helper`` (one sentinel per noise span in inputs and targets, one EOS each)."""

    def lengths(tokens: int) -> tuple[int, int]:
        num_noise, num_spans = _span_counts(tokens, noise_density, mean_noise_span_length)
        return tokens - num_noise + num_spans + 1, num_noise + num_spans + 1

    tokens = inputs_length - 1
    while lengths(tokens + 1)[0] <= inputs_length:
        tokens += 1
    inputs, targets = lengths(tokens)
    if noise_density == 0.5 and targets > inputs:  # T5's tweak: targets as long as inputs
        tokens -= 1
        targets -= 1
    return tokens, targets


def _random_segmentation(num_items: int, num_segments: int, rng: np.random.RandomState) -> np.ndarray:
    """Lengths of ``num_segments`` non-empty segments partitioning ``num_items`` items, uniformly at random."""
    first = np.zeros(num_items, dtype=np.int64)
    first[1:][rng.permutation(num_items - 1)[: num_segments - 1]] = 1
    segment_id = np.cumsum(first)
    return np.bincount(segment_id, minlength=num_segments)


def random_spans_noise_mask(length: int, rng: np.random.RandomState, noise_density: float = 0.15,
                            mean_noise_span_length: float = 3.0) -> np.ndarray:
    """Boolean noise mask of ``length`` tokens: noise spans and kept spans alternate, the sequence starts with a
    kept span, span counts as in T5."""
    orig = length
    length = max(length, 2)
    num_noise, num_spans = _span_counts(length, noise_density, mean_noise_span_length)
    noise_lengths = _random_segmentation(num_noise, num_spans, rng)
    keep_lengths = _random_segmentation(length - num_noise, num_spans, rng)
    interleaved = np.stack([keep_lengths, noise_lengths], axis=1).reshape(-1)
    starts = np.cumsum(interleaved)[:-1]
    indicator = np.zeros(length, dtype=np.int64)
    indicator[starts] = 1
    return (np.cumsum(indicator) % 2 == 1)[:orig]


def noise_span_to_sentinel(tokens: np.ndarray, noise: np.ndarray, sentinel_ids: np.ndarray) -> np.ndarray:
    """Each noise span becomes one sentinel (the k-th span gets ``sentinel_ids[k]``); other tokens stay."""
    prev = np.concatenate(([False], noise[:-1]))
    first_of_span = noise & ~prev
    span_index = np.cumsum(first_of_span) - 1
    out = np.where(first_of_span, sentinel_ids[np.clip(span_index, 0, None)], tokens)
    return out[~(noise & prev)]


def span_corruption(window: np.ndarray, rng: np.random.RandomState, sentinel_ids: np.ndarray, eos_id: int,
                    noise_density: float = 0.15, mean_noise_span_length: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets) of T5's span corruption, both ending in EOS. ``sentinel_ids[k]`` = ``<extra_id_k>``."""
    window = np.asarray(window, dtype=np.int64)
    noise = random_spans_noise_mask(window.size, rng, noise_density, mean_noise_span_length)
    inputs = noise_span_to_sentinel(window, noise, sentinel_ids)
    targets = noise_span_to_sentinel(window, ~noise, sentinel_ids)
    return np.append(inputs, eos_id), np.append(targets, eos_id)


@dataclass
class T5Objective:
    """Span corruption of a raw window of :attr:`raw_length` tokens into encoder ``input_ids`` (exactly
    ``seq_length``) and decoder ``labels`` (``target_length``, padded with -100 when longer than needed)."""

    seq_length: int
    target_length: int
    raw_length: int
    sentinel_ids: np.ndarray
    eos_id: int
    seed: int
    noise_density: float = 0.15
    mean_noise_span_length: float = 3.0

    def __call__(self, index: int, window: np.ndarray) -> dict[str, np.ndarray]:
        rng = sample_rng(self.seed, int(index), _T5_SALT)
        inputs, targets = span_corruption(window, rng, self.sentinel_ids, self.eos_id, self.noise_density,
                                          self.mean_noise_span_length)
        if inputs.size != self.seq_length or targets.size > self.target_length:
            raise AssertionError(  # the lengths are computed by t5_lengths: this is a bug, not bad input
                f"span corruption of {window.size} tokens gave inputs {inputs.size} (want {self.seq_length}) and "
                f"targets {targets.size} (at most {self.target_length})"
            )
        labels = np.full(self.target_length, IGNORE, dtype=np.int64)
        labels[: targets.size] = targets
        return {"input_ids": inputs, "labels": labels}
