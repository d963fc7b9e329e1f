"""Stage ``tokenizer`` (global): train a tokenizer on the documents, or copy the given ``tokenizer.path``.

Output: ``tokenizer/tokenizer.json``. The training sample is deterministic: a document is kept when the hash
of its id falls under the fraction ``max_train_bytes / total bytes``, so it does not depend on order,
sharding or worker count.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from data_pipelines.executor.markers import fingerprint, remove_stale_tmp
from data_pipelines.executor.parts import Part
from data_pipelines.stages.base import GlobalStage
from data_pipelines.stages.io import text_bytes
from data_pipelines.stages.layout import Layout
from pretrain.core.atomic import atomic_write

if TYPE_CHECKING:
    from data_pipelines.executor.local import LocalExecutor
    from data_pipelines.run import Pipeline

log = logging.getLogger(__name__)


def train_tokenizer_file(layout: Layout, parts: list[Part], spec, total_bytes: int, batch_size: int) -> dict[str, Any]:
    """Train on a deterministic sample of the documents (or copy ``spec.path``); the marker payload."""
    import xxhash

    from pretrain.core.tokenizer import eod_id, load_tokenizer, save_tokenizer, train_tokenizer

    out = layout.tokenizer_file
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp(out.parent)
    info: dict[str, Any] = {"kind": spec.kind, "given": spec.path}
    if spec.path:
        atomic_write(out, Path(spec.path).read_bytes())
        tok = load_tokenizer(out)
        info.update(train_docs=0, train_bytes=0)
    else:
        fraction = 1.0 if total_bytes <= spec.max_train_bytes else spec.max_train_bytes / total_bytes
        limit = int(fraction * 2**64) if fraction < 1.0 else None
        counts = {"docs": 0, "bytes": 0}

        def texts() -> Iterator[str]:
            import pyarrow.parquet as pq

            counts["docs"] = counts["bytes"] = 0
            for part in parts:
                pf = pq.ParquetFile(layout.documents(part))
                for batch in pf.iter_batches(batch_size=batch_size, columns=["id", "text"]):
                    ids, txts = batch.column(0).to_pylist(), batch.column(1).to_pylist()
                    for doc_id, text in zip(ids, txts):
                        if limit is not None and xxhash.xxh64_intdigest(f"{part.source}\x00{doc_id}") >= limit:
                            continue
                        counts["docs"] += 1
                        counts["bytes"] += text_bytes(text)
                        yield text

        if total_bytes == 0:
            from pretrain.core.errors import DataError

            raise DataError("tokenizer: no document survived cleaning and dedup; nothing to train a tokenizer on")
        tok = train_tokenizer(spec, texts)
        save_tokenizer(tok, out)
        tok = load_tokenizer(out)
        info.update(train_docs=counts["docs"], train_bytes=counts["bytes"])
    info.update(
        vocab_size=tok.get_vocab_size(with_added_tokens=True), eod_token=spec.eod,
        eod_id=eod_id(tok, spec, str(spec.path or out)),
    )
    return info


class Tokenizer(GlobalStage):
    name = "tokenizer"
    upstream = ("documents",)
    folder = "tokenizer"

    def output(self, layout: Layout, part: None = None) -> Path:
        return layout.tokenizer_file

    def fingerprint(self, pipe: "Pipeline", part: None = None) -> str:
        tok_cfg = {k: v for k, v in pipe.tokenizer.items() if k != "batch_size"}
        if tok_cfg.get("path"):  # a given file edited in place must not leave the old shards "complete"
            tok_cfg["file_sha256"] = hashlib.sha256(Path(tok_cfg["path"]).read_bytes()).hexdigest()
        return fingerprint({"docs": [pipe.fp("documents", p) for p in pipe.parts], "tokenizer": tok_cfg})

    def measure(self, payload: dict[str, Any]) -> tuple[int, int]:
        return int(payload.get("train_docs", 0)), int(payload.get("train_bytes", 0))

    def run(self, pipe: "Pipeline", executor: "LocalExecutor") -> dict[str, Any]:
        from pretrain.core.tokenizer import TokenizerSpec

        spec = TokenizerSpec.from_config(pipe.tokenizer)
        total = sum(int((pipe.marker("documents", p) or {}).get("bytes", 0)) for p in pipe.parts)
        info = train_tokenizer_file(pipe.layout, pipe.parts, spec, total, int(pipe.ex.batch_size))
        log.info("tokenizer: %s, vocabulary %d, eod %s = %d", spec.kind, info["vocab_size"], info["eod_token"],
                 info["eod_id"])
        return info


STAGE = Tokenizer()
