"""Decontamination against eval sets: n-gram overlap of the corpus with benchmarks the user supplies.

* :mod:`~data_pipelines.decontam.config`: the ``decontamination`` config section;
* :mod:`~data_pipelines.decontam.evalsets`: reading JSONL / Parquet eval sets (bad files refused, bad records
  skipped and counted);
* :mod:`~data_pipelines.decontam.ngrams`: the hashed n-gram index, built once, and the per-document lookup;
* :mod:`~data_pipelines.decontam.apply`: dropping or cutting the hits in the ``documents`` stage.

The stage itself is :mod:`data_pipelines.stages.decontaminate`.
"""

from data_pipelines.decontam.apply import CUT, DROPPED, EMPTY, DecontamFilter
from data_pipelines.decontam.config import MODES, DecontaminationConfig, as_decontamination_config, check_config
from data_pipelines.decontam.evalsets import EvalSet, file_digest, read_eval_set, read_eval_sets
from data_pipelines.decontam.ngrams import EvalIndex, cut, words

__all__ = [
    "CUT", "DROPPED", "EMPTY", "MODES", "DecontamFilter", "DecontaminationConfig", "EvalIndex", "EvalSet",
    "as_decontamination_config", "check_config", "cut", "file_digest", "read_eval_set", "read_eval_sets", "words",
]
