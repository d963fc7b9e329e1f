"""What every pretraining objective shares: a per-sample random generator.

An objective (``ModelFamily.make_transform``) turns ``(global sample index, raw token window)`` into the model's
batch arrays, and must be a pure function of ``(seed, index, window)``: its random numbers come from
:func:`sample_rng`, a ``RandomState`` seeded with exactly those words (and the objective's salt), so a resumed
run rebuilds the very same batches and DataLoader workers need no shared state. (``RandomState`` rather than
``Generator`` because its streams are frozen across NumPy releases, as in :mod:`pretrain.data.dataset`.)

The objectives live with their families: BERT's masked LM (+ sentence order) in
:mod:`pretrain.models.bert.objective`, T5's span corruption in :mod:`pretrain.models.t5.objective`.
"""

from __future__ import annotations

import numpy as np

IGNORE = -100  # the label of a position without a target


def sample_rng(seed: int, index: int, salt: int) -> np.random.RandomState:
    """The generator of one sample: a function of (seed, sample index, objective) only."""
    words = np.array([seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF, index & 0xFFFFFFFF, (index >> 32) & 0xFFFFFFFF,
                      salt], dtype=np.uint32)
    return np.random.RandomState(words)
