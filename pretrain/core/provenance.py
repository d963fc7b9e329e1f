"""Provenance sidecars: where every document of a token shard came from.

Beside ``<prefix>.bin`` / ``<prefix>.idx`` the pipeline writes::

    <prefix>.prov.bin   one compact JSON object per document, concatenated (UTF-8, no separators)
    <prefix>.prov.idx   header + u64 byte offsets into .prov.bin (documents + 1 entries)

Document ``i`` of the shard is record ``i`` of the sidecar. A record holds ``source`` (the configured source
name), ``file`` (the input file), ``id`` (the document's stable id: the record offset or line it came from),
and where known ``url`` or ``title``. The sidecar header carries the pipeline run's fingerprint.

Reading is memory-mapped and costs nothing until a record is asked for: ``read_provenance(prefix)[i]``
decodes one record. Written atomically (both files renamed into place), so a killed writer leaves no
sidecar that looks complete. A shard without a sidecar (written by another tool) has no provenance;
:func:`read_provenance` returns None for it.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

from pretrain.core.atomic import atomic_write, commit, tmp_path
from pretrain.core.errors import DataError

MAGIC = b"PROVIDX\x00"
VERSION = 1
_HEADER = struct.Struct("<8sQQI")  # magic, version, n_doc, fingerprint length; then the fingerprint bytes
RECORD_KEYS = ("source", "file", "id", "url", "title")


def prov_paths(prefix: str | os.PathLike) -> tuple[Path, Path]:
    return Path(f"{prefix}.prov.idx"), Path(f"{prefix}.prov.bin")


class ProvenanceWriter:
    """``with ProvenanceWriter(prefix, fingerprint) as w: w.add({...})`` once per document, in shard order."""

    def __init__(self, prefix: str | os.PathLike, fingerprint: str):
        self.idx_path, self.bin_path = prov_paths(prefix)
        self.bin_path.parent.mkdir(parents=True, exist_ok=True)
        self.fingerprint = fingerprint
        self._bin_tmp = tmp_path(self.bin_path)
        self._bin = open(self._bin_tmp, "wb")
        self._offsets = [0]

    def add(self, record: dict[str, Any]) -> None:
        rec = {k: record[k] for k in RECORD_KEYS if record.get(k) not in (None, "")}
        data = json.dumps(rec, ensure_ascii=False, separators=(",", ":"), default=str).encode("utf-8")
        self._bin.write(data)
        self._offsets.append(self._offsets[-1] + len(data))

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def finalize(self) -> None:
        self._bin.close()
        fp = self.fingerprint.encode("utf-8")
        head = _HEADER.pack(MAGIC, VERSION, len(self), len(fp)) + fp
        atomic_write(self.idx_path, head + np.asarray(self._offsets, dtype="<u8").tobytes())
        commit(self._bin_tmp, self.bin_path)

    def abort(self) -> None:
        self._bin.close()
        self._bin_tmp.unlink(missing_ok=True)

    def __enter__(self) -> "ProvenanceWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finalize()
        else:
            self.abort()


class Provenance:
    """The sidecar of one shard, memory-mapped. ``len(p)`` documents; ``p[i]`` is document ``i``'s record
    (a dict with ``fingerprint`` added)."""

    def __init__(self, prefix: str | os.PathLike):
        self.idx_path, self.bin_path = prov_paths(prefix)
        raw = self.idx_path.read_bytes()
        if len(raw) < _HEADER.size or raw[:8] != MAGIC:
            raise DataError(f"{self.idx_path} is not a provenance index (expected magic {MAGIC!r} and a "
                            f"{_HEADER.size}-byte header)")
        _, version, n_doc, fp_len = _HEADER.unpack_from(raw)
        if version != VERSION:
            raise DataError(f"{self.idx_path}: unsupported provenance version {version} (expected {VERSION})")
        start = _HEADER.size + fp_len
        if len(raw) != start + 8 * (n_doc + 1):
            raise DataError(f"{self.idx_path} is truncated: {len(raw)} bytes for {n_doc} documents")
        self.fingerprint = raw[_HEADER.size:start].decode("utf-8")
        self.offsets = np.frombuffer(raw, dtype="<u8", count=n_doc + 1, offset=start)
        size = self.bin_path.stat().st_size if self.bin_path.exists() else -1
        if size != int(self.offsets[-1]):
            raise DataError(f"{self.bin_path}: {size} bytes, its index {self.idx_path} needs {int(self.offsets[-1])}")
        self._bin = np.memmap(self.bin_path, mode="r", dtype=np.uint8) if size > 0 else np.zeros(0, np.uint8)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not 0 <= i < len(self):
            raise IndexError(f"document {i} of {len(self)} in {self.bin_path}")
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        rec = json.loads(bytes(self._bin[a:b]).decode("utf-8"))
        rec["fingerprint"] = self.fingerprint
        return rec


def read_provenance(prefix: str | os.PathLike) -> Provenance | None:
    """The sidecar of shard ``prefix``, or None when the shard has none."""
    idx, _ = prov_paths(prefix)
    return Provenance(prefix) if idx.exists() else None
