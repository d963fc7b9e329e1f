"""The documents stage writes with pyarrow alone exactly the bytes ``datasets`` wrote (it no longer imports
``datasets``, a second per worker process): one and several row groups, empty files, nulls, non-ASCII."""

from __future__ import annotations

import random

import pyarrow as pa

from data_pipelines.stages import documents
from data_pipelines.stages.io import COLUMNS


def _arrow_file(path, rows: int, text_len: int, rng: random.Random) -> None:
    schema = documents.arrow_schema()
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        for start in range(0, rows, 40):
            cols = {c: [None if rng.random() < 0.2 else "".join(rng.choice("ab é\n日") for _ in range(
                rng.randint(0, text_len if c == "text" else 12))) for _ in range(min(40, rows - start))]
                    for c in COLUMNS}
            writer.write_table(pa.table(cols, schema=schema))


def test_parquet_bytes_are_those_of_datasets(tmp_path, monkeypatch):
    import datasets

    datasets.disable_progress_bars()
    features = datasets.Features({c: datasets.Value("string") for c in COLUMNS})
    assert features.arrow_schema == documents.arrow_schema()
    assert features.arrow_schema.metadata == documents.arrow_schema().metadata
    monkeypatch.setattr(datasets.config, "MAX_ROW_GROUP_SIZE", "20KB")  # several row groups from small files
    rng = random.Random(0)
    for case, (rows, text_len) in enumerate([(0, 5), (1, 5), (130, 400), (90, 3000)]):
        arrow = tmp_path / f"{case}.arrow"
        _arrow_file(arrow, rows, text_len, rng)
        ours, theirs = tmp_path / f"{case}.ours.parquet", tmp_path / f"{case}.theirs.parquet"
        documents.write_parquet(arrow, ours, row_group_bytes=20 * 10**3)
        datasets.Dataset.from_file(str(arrow), info=datasets.DatasetInfo(features=features)).to_parquet(str(theirs))
        assert ours.read_bytes() == theirs.read_bytes(), (rows, text_len)
    import pyarrow.parquet as pq

    assert pq.ParquetFile(tmp_path / "3.ours.parquet").num_row_groups > 1
