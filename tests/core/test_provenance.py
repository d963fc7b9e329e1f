"""Provenance sidecars: written beside a shard, read back record for record, refused when damaged."""

import pytest

from pretrain.core.errors import DataError
from pretrain.core.provenance import ProvenanceWriter, prov_paths, read_provenance


def test_round_trip_and_missing(tmp_path):
    prefix = tmp_path / "part-0"
    assert read_provenance(prefix) is None  # a shard from another tool: no provenance
    rows = [{"source": "wiki", "file": "a.xml", "id": "a.xml:0", "title": "Ünïcode", "url": None},
            {"source": "web", "file": "b.warc", "id": "b.warc:17", "url": "http://x/y", "extra": "dropped"}]
    with ProvenanceWriter(prefix, "fp123") as w:
        for r in rows:
            w.add(r)
    prov = read_provenance(prefix)
    assert len(prov) == 2 and prov.fingerprint == "fp123"
    assert prov[0] == {"source": "wiki", "file": "a.xml", "id": "a.xml:0", "title": "Ünïcode", "fingerprint": "fp123"}
    assert prov[1]["url"] == "http://x/y" and "extra" not in prov[1]
    with pytest.raises(IndexError):
        prov[2]


def test_failed_writer_leaves_nothing_and_truncation_is_named(tmp_path):
    prefix = tmp_path / "p"
    with pytest.raises(RuntimeError):
        with ProvenanceWriter(prefix, "fp") as w:
            w.add({"source": "s"})
            raise RuntimeError("killed")
    assert not any(tmp_path.iterdir())
    with ProvenanceWriter(prefix, "fp") as w:
        w.add({"source": "s", "file": "f"})
    _, bin_path = prov_paths(prefix)
    bin_path.write_bytes(bin_path.read_bytes()[:-3])
    with pytest.raises(DataError, match="prov.bin"):
        read_provenance(prefix)
