"""BERT's objective: masked LM (+ optional sentence-order prediction).

* :func:`mask_tokens`: ``mlm_probability`` of the maskable (non-special) positions are chosen, exactly
  ``round(p * n)`` of them (the reference implementation's count, not a Bernoulli draw); of those 80% become
  ``[MASK]``, 10% a random non-special token, 10% stay; labels are ``-100`` elsewhere. Special tokens
  (``[CLS] [SEP] [PAD] [MASK] [UNK]``, the EOD) are never chosen.
* :class:`BertObjective`: builds ``[CLS] A [SEP] B [SEP]`` (sentence-order prediction, ALBERT) or
  ``[CLS] window [SEP]`` and masks it.

A function of ``(seed, sample index, window)`` only (:func:`pretrain.models.objective.sample_rng`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pretrain.models.objective import IGNORE, sample_rng

_MLM_SALT = 0x4D4C4D  # keeps this objective's stream apart from the others'


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
