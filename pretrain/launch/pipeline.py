"""Moved: the data pipeline's SLURM launcher is ``python -m data_pipelines.executor.slurm`` (same arguments).

The trainer package does not depend on the pipeline package; this stub only says where the command went.
"""

import sys

NEW = "python -m data_pipelines.executor.slurm"

if __name__ == "__main__":
    print(f"error: `python -m pretrain.launch.pipeline` moved to `{NEW}` (same arguments), e.g. "
          f"`{NEW} output_dir=/data/pipeline slurm.array=64`", file=sys.stderr)
    sys.exit(2)
