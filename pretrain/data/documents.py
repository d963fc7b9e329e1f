"""Document masking of packed sequences (``data.document_mask=true``, docs/attention.md).

A training window is read straight across document boundaries; the EOD token the tokenizer appended to every
document (the shards' ``eod_id``) marks where one ends. With document masking each sample also carries:

* ``segment_ids`` ``[seq]``: the document of each position, counting from 0 in the window; the EOD token belongs
  to the document it ends (a document is its tokens and its EOD), so the position after an EOD starts a new one;
* ``position_ids`` ``[seq]``: the position inside that document, restarting at 0 after every EOD (learned and
  rotary positions index by it).

The models then let a token attend only to tokens of its own document (:mod:`pretrain.models.attention`). Both
are computed from the model's ``input_ids``, so they work for every family whose windows pack documents: GPT's
causal windows and BERT's ``[CLS] window [SEP]`` (whose ``[CLS]`` joins the first document and whose ``[SEP]`` and
padding the last; BERT's special tokens are never masked, so the EOD tokens survive in its inputs). The labels are
unchanged: the EOD position still predicts the next document's first token, as without masking.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from pretrain.core.errors import ConfigError

#: families whose sample windows pack several documents
PACKING_FAMILIES = ("gpt", "bert")


def document_ids(input_ids: np.ndarray, eod_id: int) -> tuple[np.ndarray, np.ndarray]:
    """``(segment_ids, position_ids)`` of a ``[..., seq]`` array of token ids (int64, same shape)."""
    ids = np.asarray(input_ids)
    eod = (ids == eod_id).astype(np.int64)
    ends = np.cumsum(eod, axis=-1)
    segment = ends - eod  # EODs strictly before each position
    idx = np.broadcast_to(np.arange(ids.shape[-1], dtype=np.int64), ids.shape)
    # start of each position's document: one past the last EOD before it, found with a running maximum
    after_eod = np.where(np.concatenate([np.zeros_like(eod[..., :1]), eod[..., :-1]], axis=-1) == 1, idx, 0)
    start = np.maximum.accumulate(after_eod, axis=-1)
    return segment, idx - start


class DocumentMask:
    """A family's transform (or the plain causal-LM split of a ``seq + 1`` window, when the family has none) plus
    the ``segment_ids`` and ``position_ids`` of its ``input_ids``. A function of ``(index, window)`` only, as every
    transform, so a resumed run rebuilds the same batches."""

    def __init__(self, base: Optional[Callable[[int, np.ndarray], dict]], eod_id: int):
        self.base, self.eod_id = base, int(eod_id)

    def __call__(self, index: int, window: np.ndarray) -> dict[str, np.ndarray]:
        if self.base is None:
            tokens = np.asarray(window).astype(np.int64, copy=False)
            out = {"input_ids": tokens[:-1], "labels": tokens[1:]}
        else:
            out = dict(self.base(index, window))
        out["segment_ids"], out["position_ids"] = document_ids(out["input_ids"], self.eod_id)
        return out


def check_document_mask(family: str, enabled: bool) -> None:
    """ConfigError for ``data.document_mask=true`` with a family whose samples are not packed documents."""
    if enabled and family not in PACKING_FAMILIES:
        raise ConfigError(f"data.document_mask=true is implemented for model.family {' and '.join(PACKING_FAMILIES)} "
                          f"(causal and masked-LM windows), not {family}; set data.document_mask=false")


def with_document_mask(family: str, transform, eod_id: int, enabled: bool):
    """The transform the loader applies: ``transform`` itself, or with document ids when ``enabled``."""
    check_document_mask(family, enabled)
    return DocumentMask(transform, eod_id) if enabled else transform
