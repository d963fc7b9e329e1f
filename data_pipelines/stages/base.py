"""What a pipeline stage is: a name, a scope, upstream stages, outputs, a fingerprint and a run.

The runner (:class:`data_pipelines.run.Pipeline`) walks :data:`data_pipelines.stages.STAGES` in order and
does the bookkeeping every stage shares, so a stage file holds only what is its own:

* **scope**: a :class:`PartStage` runs once per work part, in executor workers, split across
  ``executor.num_shards`` machines; a :class:`GlobalStage` runs once, in the main process, over what every
  part produced, and only in a run without ``executor.shard``.
* **upstream**: the stages whose outputs it reads. Before a stage runs, the runner checks that they are
  complete (for a per-part upstream: the same parts, or every part for a global stage) and says what to run
  otherwise. A disabled upstream (``enabled`` false, e.g. dedup switched off) is not required.
* **output**: the file whose presence, with the completion marker, means a unit is complete. Outputs are
  written under a temporary name and renamed; the runner writes the marker last.
* **fingerprint**: a hash of everything the unit's output depends on (config, inputs, upstream
  fingerprints, see :meth:`Pipeline.fp <data_pipelines.run.Pipeline.fp>`). A unit whose marker holds another
  fingerprint is redone, and so is everything downstream, since their fingerprints chain.
* **run**: does the work and returns the payload of its marker (counts the report and the progress use).

Nothing in a data file may depend on time, worker count or sharding: rows keep input order, parquet and
JSON writing is deterministic.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from data_pipelines.executor.local import Progress
from data_pipelines.executor.markers import remove_stale_tmp, write_marker
from data_pipelines.executor.parts import Part
from data_pipelines.stages.layout import Layout

if TYPE_CHECKING:
    from data_pipelines.executor.local import LocalExecutor
    from data_pipelines.run import Pipeline

PART, GLOBAL = "part", "global"


def dedup_enabled(dedup: dict[str, Any]) -> bool:
    """Whether the ``dedup`` config asks for any deduplication (``dedup=none`` switches both kinds off)."""
    return bool(dedup.get("exact") or dedup.get("minhash"))


@dataclass(frozen=True)
class Task:
    """What a worker needs for one part: the run's plain config, the part, and the stage fingerprint."""

    root: str
    part: Part
    fingerprint: str
    config: dict[str, Any]  # the whole pipeline config, resolved to plain containers
    batch_size: int

    @property
    def layout(self) -> Layout:
        return Layout(Path(self.root))

    @property
    def source(self) -> dict[str, Any]:
        return self.config["sources"][self.part.source]

    @property
    def filters(self) -> dict[str, Any]:
        return self.config["filters"]

    @property
    def dedup(self) -> dict[str, Any]:
        return self.config["dedup"]

    @property
    def tokenizer(self) -> dict[str, Any]:
        return self.config["tokenizer"]


class Stage(ABC):
    """One stage of the pipeline; see the module docstring. Subclass :class:`PartStage` or :class:`GlobalStage`."""

    name: ClassVar[str]
    scope: ClassVar[str]
    upstream: ClassVar[tuple[str, ...]] = ()
    # Folder under output_dir holding this stage's files (per-part stages: <folder>/<source>/part-N.*).
    folder: ClassVar[str] = ""
    # True: the folder is removed after a complete run with executor.keep_intermediate=false.
    intermediate: ClassVar[bool] = False

    def enabled(self, pipe: "Pipeline") -> bool:
        """Whether this run does the stage at all (a disabled stage is skipped, not required downstream)."""
        return True

    @abstractmethod
    def output(self, layout: Layout, part: Part | None) -> Path:
        """The file whose presence (with the marker) means the unit is complete."""

    @abstractmethod
    def fingerprint(self, pipe: "Pipeline", part: Part | None) -> str:
        """The unit's config fingerprint; the upstream ones are ``pipe.fp(stage, part)``."""

    def measure(self, payload: dict[str, Any]) -> tuple[int, int]:
        """(documents, bytes) the unit consumed, for the summary table and the benchmark."""
        return 0, 0

    def __repr__(self) -> str:
        return f"<{self.scope} stage {self.name!r}>"


class PartStage(Stage):
    """A stage run once per part, in executor workers (the object is pickled into them: keep it stateless)."""

    scope = PART
    # The progress bar's unit: "B" counts input bytes of the parts, "doc" the documents of the first
    # per-part upstream (from its markers).
    unit: ClassVar[str] = "doc"

    @abstractmethod
    def output(self, layout: Layout, part: Part) -> Path: ...

    @abstractmethod
    def run(self, task: Task, progress: Progress) -> dict[str, Any]:
        """Write the part's output (temporary name, then rename) and return its marker payload."""

    def warm(self, config: dict[str, Any]) -> None:
        """The per-process set-up the tasks of this stage share (cached in module state), done ahead of the first
        task in each worker (:meth:`LocalExecutor.start <data_pipelines.executor.local.LocalExecutor.start>`).
        ``config``: the plain pipeline config (``Task.config``). Nothing by default."""

    def execute(self, task: Task, progress: Progress) -> dict[str, Any]:
        """Worker entry point: clear what a killed run left of this part, run, then write the marker."""
        out = self.output(task.layout, task.part)
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_tmp(out.parent, task.part.name)
        payload = {"part": task.part.label, **self.run(task, progress)}
        write_marker(task.layout.marker(self.name, task.part), task.fingerprint, payload)
        return payload


class GlobalStage(Stage):
    """A stage run once over every part, in the main process (it may use ``executor.map`` for sub-steps)."""

    scope = GLOBAL

    @abstractmethod
    def output(self, layout: Layout, part: None = None) -> Path: ...

    @abstractmethod
    def run(self, pipe: "Pipeline", executor: "LocalExecutor") -> dict[str, Any]:
        """Do the work and return the marker payload (the runner writes the marker and the timing)."""
