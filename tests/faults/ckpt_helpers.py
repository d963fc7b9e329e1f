"""Helpers of the checkpoint fault tests: a stand-in for DeepSpeed's engine for tests that need no training
(it writes and reads its files the way DeepSpeed does: ``torch.save`` per file, ``torch.load(weights_only=False)``
when loading, so the save protocol, the file list and the load guard see what they see with the real engine),
and a crafted pickle that would run a command."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from pretrain import checkpoint_files as files

MODEL = "mp_rank_00_model_states.pt"
OPTIM = "zero_pp_rank_0_mp_rank_00_optim_states.pt"  # rank 0's


def optim_file(rank: int) -> str:
    return f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt"


class FakeEngine:
    """Rank 0 writes the model file, every rank its optimizer shard, as DeepSpeed's ZeRO does."""

    def __init__(self, value: float = 0.0, numel: int = 1000, rank: int = 0):
        self.weight, self.rank = torch.full((numel,), float(value)), rank

    def save_checkpoint(self, save_dir, tag=None, client_state=None, save_latest=True):
        folder = Path(save_dir) / tag
        folder.mkdir(parents=True, exist_ok=True)
        if self.rank == 0:
            torch.save({"module": {"weight": self.weight.clone()}, **(client_state or {})}, folder / MODEL)
        self.save_optimizer(folder)
        return True

    def save_optimizer(self, folder: Path) -> None:
        torch.save({"optimizer_state_dict": {"exp_avg": torch.zeros_like(self.weight)}}, folder / optim_file(self.rank))

    def load_checkpoint(self, load_dir, tag=None, **_):
        folder = Path(load_dir) / tag
        sd = torch.load(folder / MODEL, map_location="cpu", weights_only=False)  # as DeepSpeed does
        torch.load(folder / optim_file(self.rank), map_location="cpu", weights_only=False)
        self.weight = sd["module"]["weight"]
        return str(folder), {k: v for k, v in sd.items() if k != "module"}


class FailingEngine(FakeEngine):
    """Its optimizer shard cannot be written (a file stands where its folder should be), the way a write error
    inside DeepSpeed's save happens: after the model file, before DeepSpeed's closing barrier."""

    def save_optimizer(self, folder: Path) -> None:
        (folder / f"blocked{self.rank}").write_text("a file where a folder should be")
        torch.save({"optimizer_state_dict": {}}, folder / f"blocked{self.rank}" / optim_file(self.rank))


def save_steps(ckpt_dir: Path, steps, keep_last: int = 100, numel: int = 1000) -> None:
    """Checkpoints of ``steps`` in ``ckpt_dir`` through pretrain.checkpoint.save, weight value = step."""
    from pretrain import checkpoint as ckpt

    for step in steps:
        state = {"step": step, "consumed_samples": step * 8, "world_size": 1}
        ckpt.save(FakeEngine(step, numel), ckpt_dir, step, state, rank=0, keep_last=keep_last)


class Payload:
    """What an attacker pickles: unpickling it would run ``touch <marker>``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def craft(path: Path, marker: Path, legacy: bool = False) -> None:
    """Overwrite ``path`` with a pickle whose loading runs a command (legacy: torch's old non-zip format,
    which the opcode scan cannot read, so only the weights-only loader stands in the way)."""
    torch.save({"module": {"weight": torch.zeros(3)}, "python": Payload(marker)}, path,
               _use_new_zipfile_serialization=not legacy)


def relist(tag_dir: Path) -> None:
    """Rewrite the file list to match the files as they are now (an attacker who rewrites it too)."""
    body = json.loads((tag_dir / files.FILE_LIST).read_text())
    files.write_file_list(tag_dir, files.describe(tag_dir, [tag_dir / rel for rel in body["files"]]))
