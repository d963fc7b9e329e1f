"""Example model family (docs/extending.md): ``bow``, a causal bag-of-words language model.

Position t predicts token t+1 from the running mean of the embeddings of tokens 0..t, refined by residual MLP
layers; no attention, no positions. Small enough to read in one sitting, real enough to train through the
Trainer, tensor-parallel through a declared plan. It leaves out pipeline stages and a Hugging Face adapter, and
both are refused with a message naming the key.

===========  ==================================================================
family.py    :class:`BowArgs`, :class:`BowFamily` (config -> args, shape, FLOPs, TP plan); no torch
model.py     the ``nn.Module`` (no parallelism, no recomputation in it)
===========  ==================================================================

In the product this folder would be ``pretrain/models/bow/`` and the registry line
``"pretrain.models.bow",`` in ``pretrain.models.FAMILY_PACKAGES``; the tests register it with
``monkeypatch.setitem(pretrain.models.FAMILIES, "bow", FAMILY)``.
"""

from tests.extending.bow.family import BowArgs, BowFamily

FAMILY = BowFamily()

__all__ = ["FAMILY", "BowArgs", "BowFamily"]
