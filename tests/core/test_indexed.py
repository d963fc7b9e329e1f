"""The Megatron-family .bin/.idx token format: round trips, byte layout, and clear errors on bad files."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from pretrain.core.errors import DataError
from pretrain.core.indexed import (
    DTYPE_CODES,
    MAGIC,
    IndexedDataset,
    IndexedDatasetWriter,
    best_dtype,
    bin_path,
    idx_path,
)

DOCS = [[5, 1, 2, 0], [], [7], [3, 3, 3, 3, 3, 0], [], [9, 8]]


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.int64, np.uint16, np.float32, np.float64])
def test_round_trip_every_dtype_with_empty_documents(tmp_path, dtype):
    prefix = tmp_path / "shard"
    with IndexedDatasetWriter(prefix, dtype=dtype) as w:
        w.add_documents(DOCS)
    ds = IndexedDataset(prefix)
    assert ds.dtype == np.dtype(dtype)
    assert len(ds) == len(DOCS)
    assert ds.num_tokens == sum(map(len, DOCS))
    for i, doc in enumerate(DOCS):
        np.testing.assert_array_equal(ds[i], np.asarray(doc, dtype=dtype))
        assert ds[i].dtype == np.dtype(dtype)
    np.testing.assert_array_equal(ds.get(3, offset=1, length=3), [3, 3, 3])
    np.testing.assert_array_equal(ds.doc_idx, np.arange(len(DOCS) + 1))  # Megatron: [0] + one entry per document
    assert ds.max_token() == 9
    assert not list(tmp_path.glob("*.tmp"))


def test_header_is_byte_exact_megatron_layout(tmp_path):
    prefix = tmp_path / "shard"
    with IndexedDatasetWriter(prefix, dtype=np.uint16) as w:
        w.add_documents([[1, 2, 3], [4], [5, 6]])
    raw = open(idx_path(prefix), "rb").read()
    assert raw[:9] == b"MMIDIDX\x00\x00"
    assert raw[9:17] == (1).to_bytes(8, "little")  # version
    assert raw[17] == 8  # uint16 code
    assert raw[18:26] == (3).to_bytes(8, "little")  # sequences
    assert raw[26:34] == (4).to_bytes(8, "little")  # document index entries
    body = raw[34:]
    assert body == (np.asarray([3, 1, 2], "<i4").tobytes() + np.asarray([0, 6, 8], "<i8").tobytes()
                     + np.asarray([0, 1, 2, 3], "<i8").tobytes())
    assert open(bin_path(prefix), "rb").read() == np.asarray([1, 2, 3, 4, 5, 6], "<u2").tobytes()


def _megatron_write_index(path, dtype, sizes, doc_idx):
    """How Megatron-LM's MMapIndexedDataset.Index.writer lays an index out (transcribed, independent of ours)."""
    code = {np.uint8: 1, np.int8: 2, np.int16: 3, np.int32: 4, np.int64: 5, np.float64: 6, np.float32: 7,
            np.uint16: 8}[dtype]
    pointers, address = [], 0
    for size in sizes:
        pointers.append(address)
        address += size * np.dtype(dtype).itemsize
    with open(path, "wb") as f:
        f.write(b"MMIDIDX\x00\x00")
        f.write(struct.pack("<Q", 1))
        f.write(struct.pack("<B", code))
        f.write(struct.pack("<Q", len(sizes)))
        f.write(struct.pack("<Q", len(doc_idx)))
        f.write(np.array(sizes, dtype=np.int32).tobytes(order="C"))
        f.write(np.array(pointers, dtype=np.int64).tobytes(order="C"))
        f.write(np.array(doc_idx, dtype=np.int64).tobytes(order="C"))


def test_reads_megatron_written_index_with_multi_sentence_documents(tmp_path):
    # Megatron's preprocess with sentence splitting: 2 documents made of 3 + 1 sequences.
    seqs = [[10, 11], [12], [13, 14, 15], [16, 0]]
    prefix = tmp_path / "meg"
    np.asarray([t for s in seqs for t in s], dtype=np.int32).tofile(bin_path(prefix))
    _megatron_write_index(idx_path(prefix), np.int32, [len(s) for s in seqs], [0, 3, 4])
    ds = IndexedDataset(prefix)
    assert [ds[i].tolist() for i in range(len(ds))] == seqs
    assert ds.doc_idx.tolist() == [0, 3, 4]
    # ...and ours is byte-identical to Megatron's for the same content
    ours = tmp_path / "ours"
    with IndexedDatasetWriter(ours, dtype=np.int32) as w:
        w.add_documents(seqs)
    _megatron_write_index(str(tmp_path / "ref.idx"), np.int32, [len(s) for s in seqs], [0, 1, 2, 3, 4])
    assert open(idx_path(ours), "rb").read() == open(tmp_path / "ref.idx", "rb").read()


def test_best_dtype_follows_megatron_rule():
    assert best_dtype(4096) is np.uint16 and best_dtype(65499) is np.uint16
    assert best_dtype(65500) is np.int32 and best_dtype(128256) is np.int32
    assert set(DTYPE_CODES) == set(range(1, 9))


def test_writer_rejects_out_of_range_tokens_and_leaves_nothing(tmp_path):
    prefix = tmp_path / "bad"
    with pytest.raises(ValueError, match="out of range"):
        with IndexedDatasetWriter(prefix, dtype=np.uint8) as w:
            w.add_document([1, 300])
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def shard(tmp_path):
    prefix = tmp_path / "part-00000"
    with IndexedDatasetWriter(prefix, dtype=np.uint16) as w:
        w.add_documents([[1, 2, 3, 0], [4, 5, 0], [6, 0]])
    return prefix


def test_missing_bin_names_the_file(shard):
    bin_file = bin_path(shard)
    import os

    os.unlink(bin_file)
    with pytest.raises(DataError, match=f"missing data file {bin_file}"):
        IndexedDataset(shard)


def test_wrong_magic_names_the_file(shard):
    raw = bytearray(open(idx_path(shard), "rb").read())
    raw[:9] = b"NOTANIDX\x00"
    open(idx_path(shard), "wb").write(bytes(raw))
    with pytest.raises(DataError, match=f"{idx_path(shard)} is not an indexed token file"):
        IndexedDataset(shard)


def test_truncated_bin_names_the_file(shard):
    data = open(bin_path(shard), "rb").read()
    open(bin_path(shard), "wb").write(data[:-3])
    with pytest.raises(DataError, match=f"{bin_path(shard)} is truncated: {len(data) - 3} bytes"):
        IndexedDataset(shard)


def test_truncated_index_names_the_file(shard):
    data = open(idx_path(shard), "rb").read()
    open(idx_path(shard), "wb").write(data[:-8])
    with pytest.raises(DataError, match=f"{idx_path(shard)} is truncated"):
        IndexedDataset(shard)


def test_unknown_dtype_and_version_name_the_file(shard):
    raw = bytearray(open(idx_path(shard), "rb").read())
    raw[17] = 42
    open(idx_path(shard), "wb").write(bytes(raw))
    with pytest.raises(DataError, match=f"{idx_path(shard)}: unknown dtype code 42"):
        IndexedDataset(shard)
    raw[17] = 8
    raw[9:17] = (7).to_bytes(8, "little")
    open(idx_path(shard), "wb").write(bytes(raw))
    with pytest.raises(DataError, match=f"{idx_path(shard)}: unsupported index version 7"):
        IndexedDataset(shard)


def test_empty_shard_round_trips(tmp_path):
    prefix = tmp_path / "empty"
    IndexedDatasetWriter(prefix).finalize()
    ds = IndexedDataset(prefix)
    assert len(ds) == 0 and ds.num_tokens == 0 and ds.max_token() == -1
    assert Path(idx_path(prefix)).read_bytes()[:9] == MAGIC


def test_index_shorter_than_header_names_the_file(shard):
    open(idx_path(shard), "wb").write(MAGIC + b"\x01\x00")
    with pytest.raises(DataError, match=f"{idx_path(shard)} is truncated: 11 bytes, shorter than the 34-byte header"):
        IndexedDataset(shard)
