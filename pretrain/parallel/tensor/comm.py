"""Per-step accounting of the bytes the tensor-parallel collectives move (forward and backward), for the
communication figures of the metrics record (``comm_tp_<kind>_bytes``)."""

from __future__ import annotations

from collections import defaultdict

import torch


class CommCounter:
    """Bytes each tensor-parallel collective moved on this rank (payload size, forward and backward), for the
    per-step communication report. :meth:`take` returns the counts since the last call and resets them."""

    def __init__(self) -> None:
        self.bytes: dict[str, int] = defaultdict(int)

    def add(self, kind: str, t: torch.Tensor) -> None:
        self.bytes[kind] += t.numel() * t.element_size()

    def take(self) -> dict[str, int]:
        out = dict(self.bytes)
        self.bytes.clear()
        return out


TP_COMM = CommCounter()
