"""The tokenizer's training sample: row groups chosen from Parquet metadata, bounded by the byte budget,
the same on every run and in any file order."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from data_pipelines.stages.tokenizer import sample_row_groups


def write_part(path, source: str, docs: int, per_group: int = 10) -> str:
    schema = pa.schema([("id", pa.string()), ("text", pa.string())])
    with pq.ParquetWriter(str(path), schema) as writer:
        for start in range(0, docs, per_group):
            ids = [f"{source}-{i}" for i in range(start, min(docs, start + per_group))]
            writer.write_table(pa.table({"id": ids, "text": [f"document {i} " * 40 for i in ids]}, schema=schema))
    return str(path)


def test_sample_is_bounded_deterministic_and_spread(tmp_path):
    files = [(src, i, write_part(tmp_path / f"{src}-{i}.parquet", f"{src}{i}", 200)) for src in ("web", "wiki")
             for i in range(3)]
    sizes = {}
    for _, _, path in files:
        md = pq.ParquetFile(path).metadata
        col = md.schema.names.index("text")
        for rg in range(md.num_row_groups):
            sizes[(path, rg)] = md.row_group(rg).column(col).total_uncompressed_size
    total = sum(sizes.values())
    budget = total // 5
    sample = sample_row_groups(files, budget)
    assert sample == sample_row_groups(list(reversed(files)), budget)  # independent of order
    taken = sum(sizes[(p, rg)] for p, rgs in sample.items() for rg in rgs)
    assert budget <= taken < budget + max(sizes.values())  # bounded by the sample, never the corpus
    assert len(sample) >= 4  # spread over files and sources, not the first ones
    assert all(rgs == sorted(rgs) for rgs in sample.values())  # read in corpus order
    everything = sample_row_groups(files, total)
    assert sum(len(r) for r in everything.values()) == len(sizes)
    assert sample_row_groups(files, budget // 2).keys() <= sample.keys()  # a smaller budget takes a prefix


def test_training_reads_only_the_sample(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from data_pipelines.executor.parts import Part
    from data_pipelines.stages import tokenizer as stage
    from pretrain.core.tokenizer import TokenizerSpec

    parts = [Part("web", "web", i, i, (), ()) for i in range(3)]
    paths = {p.index: write_part(tmp_path / f"part-{p.index}.parquet", f"w{p.index}", 100) for p in parts}
    layout = SimpleNamespace(documents=lambda part: paths[part.index],
                             tokenizer_file=tmp_path / "tok" / "tokenizer.json")
    read_groups = []
    real = pq.ParquetFile.read_row_group
    monkeypatch.setattr(pq.ParquetFile, "read_row_group",
                        lambda self, i, *a, **k: read_groups.append(i) or real(self, i, *a, **k))
    total = sum(len(f"document w{p}-{i} " * 40) for p in range(3) for i in range(100))
    spec = TokenizerSpec(kind="bpe", vocab_size=300, max_train_bytes=total // 10)
    info = stage.train_tokenizer_file(layout, parts, spec, total, batch_size=50)
    assert 0 < info["train_bytes"] < total // 5 and info["train_docs"] == 10 * len(read_groups)
    assert len(read_groups) < 30 // 5 and layout.tokenizer_file.is_file()
