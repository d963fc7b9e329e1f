"""Stage ``documents`` (per part): drop the part's duplicates and write its final documents as Parquet.

With ``decontamination.eval_paths``, the hits of the ``decontaminate`` stage are then dropped or cut (after dedup,
so the report's stages chain: dedup, then decontaminate).

Output: ``documents/<source>/part-N.parquet``, one schema for every source (id, text, source, the provenance
columns of :data:`~data_pipelines.stages.io.PROVENANCE`, and the remaining metadata as JSON), so all
documents load as one dataset. The files are those ``datasets`` writes (its schema metadata, row groups,
compression and content-defined chunking; :func:`write_parquet`), written with pyarrow alone: importing
``datasets`` costs each worker process about a second.
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from data_pipelines.document import Document
from data_pipelines.executor.local import Progress
from data_pipelines.executor.markers import fingerprint
from data_pipelines.executor.parts import Part
from data_pipelines.stages import decontaminate
from data_pipelines.stages.base import PartStage, Task, dedup_enabled
from data_pipelines.stages.io import COLUMNS, PROVENANCE, iter_work_docs, meta_json
from data_pipelines.stages.layout import Layout
from data_pipelines.stats import StageStats
from pretrain.core.atomic import commit

if TYPE_CHECKING:
    from data_pipelines.run import Pipeline


# What ``datasets.Dataset.from_file(...).to_parquet(...)`` (datasets 5.2) writes for string columns:
# ``Features({c: Value("string")}).arrow_schema`` with its "huggingface" metadata, row groups of about
# ``config.MAX_ROW_GROUP_SIZE`` (100 MB) of Arrow data, snappy and dictionaries on every column, its default
# content-defined chunking, the page index. ``tests/pipeline/test_documents_parquet.py`` checks the bytes.
SCHEMA_METADATA = {"huggingface": json.dumps({"info": {"features": {c: {"dtype": "string", "_type": "Value"}
                                                                     for c in COLUMNS}}})}
CDC_OPTIONS = {"min_chunk_size": 262144, "max_chunk_size": 1048576, "norm_level": 0}
ROW_GROUP_BYTES = 100 * 10**6


def arrow_schema():
    import pyarrow as pa

    return pa.schema([(c, pa.string()) for c in COLUMNS], metadata=SCHEMA_METADATA)


def write_parquet(arrow_path: Path, out: Path, row_group_bytes: int = ROW_GROUP_BYTES) -> None:
    """The Parquet file of the Arrow stream at ``arrow_path`` (memory-mapped: memory stays at one row group)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    with pa.memory_map(str(arrow_path)) as source:
        table = pa.ipc.open_stream(source).read_all()
        nbytes = table.nbytes
        rows = max(1, table.num_rows * row_group_bytes // nbytes) if nbytes > 0 else 1
        with open(out, "wb") as f:
            writer = pq.ParquetWriter(f, schema=table.schema, use_content_defined_chunking=CDC_OPTIONS,
                                      write_page_index=True, compression={c: "snappy" for c in COLUMNS},
                                      use_dictionary=list(COLUMNS), column_encoding={})
            for offset in range(0, table.num_rows, rows):
                writer.write_table(table.slice(offset, rows))
            writer.add_key_value_metadata({"content_defined_chunking": json.dumps(CDC_OPTIONS)})
            writer.close()
        del table


class Documents(PartStage):
    name = "documents"
    upstream = ("read", "decontaminate", "cluster")
    folder = "documents"

    def output(self, layout: Layout, part: Part) -> Path:
        return layout.documents(part)

    def fingerprint(self, pipe: "Pipeline", part: Part) -> str:
        parts = {"read": pipe.fp("read", part), "dedup": pipe.fp("cluster") if pipe.dedup_on else pipe.dedup}
        if decontaminate.enabled_in(pipe.config):  # absent when off: the fingerprints of a run without it stay
            parts["decontaminate"] = [pipe.fp("decontaminate", part), pipe.config["decontamination"]["mode"]]
        return fingerprint(parts)

    def warm(self, config: dict[str, Any]) -> None:
        from data_pipelines.stages.io import warm_arrow

        warm_arrow()

    def measure(self, payload: dict[str, Any]) -> tuple[int, int]:
        st = payload.get("dedup")
        return (int(st["docs_in"]), int(st["bytes_in"])) if st else (int(payload["docs"]), int(payload["bytes"]))

    def run(self, task: Task, progress: Progress) -> dict[str, Any]:
        import pyarrow as pa

        part, lay = task.part, task.layout
        out = self.output(lay, part)

        def read_docs() -> Iterator[Document]:
            # the bar counts the part's read documents (its total: the read markers' counts), kept or dropped
            for doc in iter_work_docs(lay.read_data(part), part.source, task.batch_size):
                progress.update(units=1)
                yield doc

        docs: Iterator[Document] = read_docs()
        stats = StageStats()
        dedup_on = dedup_enabled(task.dedup)
        rows: Iterator[int] = itertools.count()  # the read row of each document that leaves dedup
        if dedup_on:
            from data_pipelines.dedup import DedupFilter

            dedup = DedupFilter(str(lay.dedup_dir), part.global_index)
            docs = dedup(docs, stats)
            rows = (r for r in itertools.count() if r not in dedup.reasons)
        decon, decon_stats = None, StageStats()
        if decontaminate.enabled_in(task.config):
            from data_pipelines.decontam import DecontamFilter

            decon = DecontamFilter(decontaminate.STAGE.output(lay, part), task.config["decontamination"]["mode"],
                                   rows)
            docs = decon(docs, decon_stats)
        # Stream the rows into an Arrow file, then write the Parquet file from it memory-mapped: memory stays at
        # one batch whatever the part's size.
        schema = arrow_schema()
        arrow_tmp = out.with_name(f"{out.name}.arrow.tmp-{os.getpid()}")
        columns: dict[str, list] = {c: [] for c in COLUMNS}
        with pa.OSFile(str(arrow_tmp), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
            def flush() -> None:
                if columns["id"]:
                    writer.write_table(pa.table(columns, schema=schema))
                    for c in COLUMNS:
                        columns[c] = []

            for doc in docs:
                if not dedup_on:
                    stats.seen(doc.text)
                    stats.kept(doc.text)
                meta = dict(doc.metadata)
                columns["id"].append(doc.id)
                columns["text"].append(doc.text)
                columns["source"].append(part.source)
                for key in PROVENANCE:
                    value = meta.pop(key, None)
                    columns[key].append(None if value is None else str(value))
                columns["metadata"].append(meta_json(meta))
                progress.update(docs=1)
                if len(columns["id"]) >= task.batch_size:
                    flush()
            flush()
        tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
        try:
            write_parquet(arrow_tmp, tmp)
        finally:
            arrow_tmp.unlink(missing_ok=True)
        commit(tmp, out)
        if decon is not None:  # what was written is what left decontamination (dropped or cut)
            return {"dedup": stats.to_dict() if dedup_on else None, "decontam": decon.payload(decon_stats),
                    "docs": decon_stats.docs_out, "bytes": decon_stats.bytes_out}
        return {"dedup": stats.to_dict() if dedup_on else None, "docs": stats.docs_out, "bytes": stats.bytes_out}


STAGE = Documents()
