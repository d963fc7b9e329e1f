"""The ``decontamination`` section of the pipeline config: which eval sets to remove from the corpus, and how."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional

from pretrain.core.errors import ConfigError

MODES = ("drop", "cut")


@dataclass
class DecontaminationConfig:
    """Off by default (no ``eval_paths``): then the stage does not run and the outputs are unchanged.

    A document that shares an ``ngram``-word sequence (normalised words: ``\\w+`` runs, case-folded) with an
    eval example is dropped (``mode=drop``) or has every overlapping span cut out (``mode=cut``). An eval text
    shorter than ``ngram`` words is matched as a whole (its full word sequence anywhere in a document) when it
    has at least ``min_words`` words; shorter ones are too generic to match ("Paris") and are only counted.
    """

    # JSONL (.jsonl, .jsonl.gz, .json with one object per line) or Parquet eval sets; the eval set's name in the
    # report is the file name without its suffixes, so names must differ.
    eval_paths: List[str] = field(default_factory=list)
    mode: str = "drop"  # drop | cut
    ngram: int = 13
    min_words: int = 5
    # The record fields holding eval text (a string, a list of strings, or a mapping of them); null: not used.
    question_field: Optional[str] = "question"
    answer_field: Optional[str] = "answer"
    context_field: Optional[str] = "context"

    @property
    def fields(self) -> list[str]:
        return [f for f in (self.question_field, self.context_field, self.answer_field) if f]


def as_decontamination_config(d: dict[str, Any] | None) -> DecontaminationConfig:
    return DecontaminationConfig(**(d or {}))


def check_config(cfg: DecontaminationConfig) -> None:
    """Ranges and choices Hydra's types cannot express; each error names the key."""
    if cfg.mode not in MODES:
        raise ConfigError(f"decontamination.mode: '{cfg.mode}' is not one of {', '.join(MODES)}")
    if cfg.ngram < 1:
        raise ConfigError(f"decontamination.ngram: must be >= 1, got {cfg.ngram}")
    if not 1 <= cfg.min_words <= cfg.ngram:
        raise ConfigError(f"decontamination.min_words: must be in [1, decontamination.ngram={cfg.ngram}], "
                          f"got {cfg.min_words}")
    if cfg.eval_paths and not cfg.fields:
        raise ConfigError("decontamination: question_field, answer_field and context_field are all null; "
                          "name at least one record field holding eval text")
