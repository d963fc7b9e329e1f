"""The driver test_ray.py runs inside its network namespace: the test_run corpus through ``executor=ray``.

    python ray_driver.py ADDRESS OUT ALPHA BETA FLAG

The read stage is the real one, except that the first read task to start kills its own worker process
(SIGKILL, after its first document, with its temporary output open), once: it creates ``FLAG`` (holding its
part) exclusively first, so no other attempt dies, and Ray must retry the task.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

from data_pipelines.executor.ray import RayExecutor
from data_pipelines.run import Pipeline
from data_pipelines.stages import STAGES
from data_pipelines.stages.read import Read
from pretrain.core.errors import DataError


class KillOnceRead(Read):
    """``read``, whose first attempt at the first part to start dies mid-part, as a worker the OOM killer or
    a lost node takes."""

    def __init__(self, flag: str):
        self.flag = flag  # travels with the pickled stage into the Ray workers

    def run(self, task, progress):
        try:
            fd = os.open(self.flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return super().run(task, progress)
        os.write(fd, task.part.label.encode())
        os.close(fd)
        update = progress.update

        def update_then_die(docs: int = 0, units: int = 0) -> None:
            update(docs, units)
            os.kill(os.getpid(), signal.SIGKILL)

        progress.update = update_then_die  # type: ignore[method-assign]
        return super().run(task, progress)


def bad_input(task, progress):
    raise DataError(f"part {task}: not a corpus")


def always_dies(task, progress):
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    from hydra import compose, initialize_config_dir

    address, out, alpha, beta, flag = sys.argv[1:6]
    conf = Path(__file__).resolve().parents[2] / "conf"
    overrides = [
        f"output_dir={out}", "sources=none", f"+sources.alpha={{kind: jsonl, paths: [{alpha}]}}",
        f"+sources.beta={{kind: jsonl, paths: [{beta}]}}", "tokenizer.vocab_size=400",
        "executor.part_size_mb=0.000001", "executor=ray", f"executor.address={address}", "executor.max_retries=2",
    ]
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose("pipeline", overrides=overrides)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    stages = tuple(KillOnceRead(flag) if s.name == "read" else s for s in STAGES)
    t0 = time.perf_counter()
    with RayExecutor.from_config(cfg.executor) as executor:  # what run_pipeline does for executor=ray
        summary = Pipeline(cfg, stages).run(executor)
        print(f"driver: pipeline {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        try:  # an error in the data is raised on the driver as the task raised it (and not retried)
            executor.map("bad", bad_input, [7], record=False)
            error = None
        except DataError as e:
            error = f"{type(e).__name__}: {e}"
        try:  # a worker that dies on every try: the run stops once executor.max_retries is spent
            RayExecutor(address=address, max_retries=0, progress=False).map("dies", always_dies, [0], record=False)
            died = None
        except RuntimeError as e:
            died = str(e)
    print(json.dumps({"complete": summary.complete, "timings": [t.__dict__ for t in summary.timings],
                      "error": error, "died": died}))


if __name__ == "__main__":
    main()
