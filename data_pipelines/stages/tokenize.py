"""Stage ``tokenize`` (per part): the part's documents -> ``tokens/<source>/part-N.{bin,idx}`` with EOD tokens.

The shards are the Megatron indexed format (:mod:`pretrain.core.indexed`), the one the trainer reads. Beside
each shard goes its provenance sidecar (:mod:`pretrain.core.provenance`): per document its source, input file,
id, URL or title, and this stage's fingerprint, so a training step can be traced back to its documents.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from data_pipelines.executor.local import Progress
from data_pipelines.executor.markers import fingerprint
from data_pipelines.executor.parts import Part
from data_pipelines.stages.base import PartStage, Task
from data_pipelines.stages.io import text_bytes
from data_pipelines.stages.layout import Layout

if TYPE_CHECKING:
    from data_pipelines.run import Pipeline

_TOKENIZERS: dict[tuple[str, int], Any] = {}  # per worker process: the tokenizer loads once


def _tokenizer_for(path: Path):
    from pretrain.core.tokenizer import load_tokenizer

    key = (str(path), path.stat().st_mtime_ns)
    if key not in _TOKENIZERS:
        tok = load_tokenizer(path)
        tok.encode_special_tokens = True  # "<|endoftext|>" inside a document is text, never a control token
        _TOKENIZERS.clear()
        _TOKENIZERS[key] = tok
    return _TOKENIZERS[key]


class Tokenize(PartStage):
    name = "tokenize"
    upstream = ("documents", "tokenizer")
    folder = "tokens"

    def output(self, layout: Layout, part: Part) -> Path:
        return Path(f"{layout.tokens_prefix(part)}.idx")

    def fingerprint(self, pipe: "Pipeline", part: Part) -> str:
        return fingerprint({"documents": pipe.fp("documents", part), "tokenizer": pipe.fp("tokenizer")})

    def measure(self, payload: dict[str, Any]) -> tuple[int, int]:
        return int(payload["docs"]), int(payload["bytes"])

    def run(self, task: Task, progress: Progress) -> dict[str, Any]:
        from pretrain.core.indexed import IndexedDatasetWriter, best_dtype
        from pretrain.core.provenance import ProvenanceWriter
        from pretrain.core.tokenizer import TokenizerSpec, batched, encode_documents, eod_id

        part, lay = task.part, task.layout
        tok = _tokenizer_for(lay.tokenizer_file)
        spec = TokenizerSpec.from_config(task.tokenizer)
        eod = eod_id(tok, spec, str(lay.tokenizer_file))
        vocab = tok.get_vocab_size(with_added_tokens=True)
        docs = tokens = nbytes = 0
        prefix = lay.tokens_prefix(part)
        with (IndexedDatasetWriter(prefix, best_dtype(vocab)) as writer,
              ProvenanceWriter(prefix, task.fingerprint) as origins):
            rows_in = _iter_rows(lay.documents(part), task.batch_size)
            for rows in batched(rows_in, task.tokenizer.get("batch_size", 1000)):
                texts = [r.pop("text") for r in rows]
                for ids, row in zip(encode_documents(tok, texts, eod), rows):
                    writer.add_document(ids)
                    origins.add(row)
                    tokens += len(ids)
                docs += len(texts)
                nbytes += sum(map(text_bytes, texts))
                progress.update(docs=len(texts), units=len(texts))
        return {"docs": docs, "tokens": tokens, "bytes": nbytes}


def _iter_rows(path: Path, batch_size: int):
    """Each document's text and provenance columns, in order."""
    import pyarrow.parquet as pq

    from pretrain.core.provenance import RECORD_KEYS

    pf = pq.ParquetFile(path)
    wanted = ["text", *(c for c in RECORD_KEYS if c in pf.schema_arrow.names)]
    for batch in pf.iter_batches(batch_size=batch_size, columns=wanted):
        yield from batch.to_pylist()


STAGE = Tokenize()
