"""Stage ``tokenizer`` (global): train a tokenizer on the documents, or copy the given ``tokenizer.path``.

Output: ``tokenizer/tokenizer.json``. When the cleaned corpus fits in ``max_train_bytes`` (the sample
budget), every document trains. Otherwise the sample is a set of Parquet *row groups* (one per
``executor.batch_size`` documents of a part), chosen by :func:`sample_row_groups` from the files' metadata
alone: each row group gets a hash of (source, part, row group), and row groups are taken in hash order
until their text bytes reach the budget. Only those are ever read, so the stage's time and memory are
bounded by the sample, not by the corpus (the previous rule hashed every document id and so read every
text). The choice depends only on the parts and the budget: not on order or worker count.
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


def sample_row_groups(files: list[tuple[str, int, str]], budget: int) -> dict[str, list[int]]:
    """``{path: [row group, ...]}`` to train on: ``files`` are ``(source, part index, parquet path)``.

    Row groups are ranked by xxh64 of ``source, part index, row group`` (a uniform random order that is
    the same on every run), and taken in that order until the uncompressed size of their ``text`` column
    reaches ``budget`` bytes; the last one may overshoot by at most one row group.
    """
    import pyarrow.parquet as pq
    import xxhash

    ranked = []
    for source, index, path in files:
        md = pq.ParquetFile(path).metadata
        col = md.schema.names.index("text")
        for rg in range(md.num_row_groups):
            size = md.row_group(rg).column(col).total_uncompressed_size
            ranked.append((xxhash.xxh64_intdigest(f"{source}\x00{index}\x00{rg}".encode()), path, rg, size))
    ranked.sort()
    chosen: dict[str, list[int]] = {}
    taken = 0
    for _, path, rg, size in ranked:
        if taken >= budget:
            break
        chosen.setdefault(path, []).append(rg)
        taken += size
    return {path: sorted(rgs) for path, rgs in chosen.items()}


def train_tokenizer_file(layout: Layout, parts: list[Part], spec, total_bytes: int, batch_size: int) -> dict[str, Any]:
    """Train on a deterministic sample of the documents (or copy ``spec.path``); the marker payload."""
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
        files = [(part.source, part.index, str(layout.documents(part))) for part in parts]
        sample = None if total_bytes <= spec.max_train_bytes else sample_row_groups(files, spec.max_train_bytes)
        counts = {"docs": 0, "bytes": 0}

        def texts() -> Iterator[str]:
            import pyarrow.parquet as pq

            counts["docs"] = counts["bytes"] = 0
            for _, _, path in files:
                pf = pq.ParquetFile(path)
                if sample is None:
                    batches = (b.column(0) for b in pf.iter_batches(batch_size=batch_size, columns=["text"]))
                else:
                    batches = (pf.read_row_group(rg, columns=["text"]).column(0) for rg in sample.get(path, ()))
                for column in batches:
                    for text in column.to_pylist():
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
