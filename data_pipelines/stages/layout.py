"""Where the pipeline's files live under ``output_dir`` (the paths several stages and the report share)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from data_pipelines.executor.parts import Part


@dataclass(frozen=True)
class Layout:
    """Paths under ``root``. A stage's own files are ``part_file(<its folder>, part, suffix)``; the named
    ones below are read by more than one stage (or by the report and the trainer's manifest)."""

    root: Path

    @property
    def work(self) -> Path:
        return self.root / "work"

    def part_file(self, folder: str, part: Part, suffix: str) -> Path:
        """``<root>/<folder>/<source>/part-N<suffix>``: one part's file of a per-part stage."""
        return self.root / folder / part.source / f"{part.name}{suffix}"

    def read_data(self, part: Part) -> Path:
        return self.part_file("work/read", part, ".parquet")

    def signatures(self, part: Part) -> Path:
        return self.part_file("work/signatures", part, ".npz")

    @property
    def dedup_dir(self) -> Path:
        return self.work / "dedup"

    def documents(self, part: Part) -> Path:
        return self.part_file("documents", part, ".parquet")

    @property
    def tokenizer_file(self) -> Path:
        return self.root / "tokenizer" / "tokenizer.json"

    def tokens_prefix(self, part: Part) -> Path:
        return self.part_file("tokens", part, "")

    def marker(self, stage: str, part: Part | None = None) -> Path:
        if part is None:
            return self.work / "markers" / f"{stage}.done.json"
        return self.work / "markers" / stage / part.source / f"{part.name}.done.json"
