"""T5's objective: span corruption, a port of ``t5.data.preprocessors.random_spans_noise_mask`` /
``noise_span_to_unique_sentinel`` / ``random_spans_helper`` to NumPy (:func:`random_spans_noise_mask`,
:func:`span_corruption`, :func:`t5_lengths`, :class:`T5Objective`).

A function of ``(seed, sample index, window)`` only (:func:`pretrain.models.objective.sample_rng`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pretrain.models.objective import IGNORE, sample_rng

_T5_SALT = 0x543553  # keeps this objective's stream apart from the others'


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
