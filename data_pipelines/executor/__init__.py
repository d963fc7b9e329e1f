"""How the pipeline's work is cut up and run.

* :mod:`~data_pipelines.executor.parts`: input files grouped into parts, and parts spread over shards;
* :mod:`~data_pipelines.executor.markers`: completion markers with config fingerprints (resume, reruns);
* :mod:`~data_pipelines.executor.local`: the tasks of a stage in worker processes on this machine;
* :mod:`~data_pipelines.executor.slurm`: the whole pipeline as chained SLURM job arrays
  (``python -m data_pipelines.executor.slurm output_dir=... slurm.array=64``; not imported here).
"""

from data_pipelines.executor.local import LocalExecutor, Progress, StageTiming, summary_table
from data_pipelines.executor.markers import (
    dump_json,
    fingerprint,
    read_marker,
    remove_stale_tmp,
    require,
    write_marker,
)
from data_pipelines.executor.parts import MiB, Part, input_size, parts_for_shard, plan_parts, plan_to_json

__all__ = [
    "LocalExecutor", "MiB", "Part", "Progress", "StageTiming", "dump_json", "fingerprint",
    "input_size", "parts_for_shard", "plan_parts", "plan_to_json", "read_marker", "remove_stale_tmp", "require",
    "summary_table", "write_marker",
]
