"""Reading the user's eval sets (JSONL or Parquet) into example texts.

A file that is missing, of an unknown type, unreadable, or without a single usable record is a
:class:`ConfigError` naming it, raised when the pipeline validates its config (before any work). Inside a
readable file, a corrupt record (a line that is not JSON or not UTF-8, not an object, no text in the
configured fields) is skipped and counted by reason, like a corrupt corpus record.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

from pretrain.core.errors import ConfigError

# .json: JSON lines, or one array of records (also {"data": [...]})
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".ndjson")
PARQUET_SUFFIXES = (".parquet",)


@dataclass
class EvalSet:
    """One eval file: ``examples`` are (record index in the file, the texts of its configured fields)."""

    name: str
    path: str
    examples: list[tuple[int, list[str]]] = field(default_factory=list)
    records: int = 0
    skipped: Counter = field(default_factory=Counter)


def eval_set_name(path: str) -> str:
    name = Path(path).name
    for suffix in sorted(JSONL_SUFFIXES + PARQUET_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _texts(value: Any) -> Iterator[str]:
    """The strings in a field value: a string, or strings nested in lists / mappings (SQuAD's ``answers``)."""
    if isinstance(value, str):
        if value.strip():
            yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _texts(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _texts(v)


def _add(es: EvalSet, index: int, record: Any, fields: list[str]) -> None:
    es.records += 1
    if not isinstance(record, dict):
        es.skipped["not_an_object"] += 1
        return
    texts = [t for f in fields for t in _texts(record.get(f))]
    if not texts:
        es.skipped["no_text"] += 1
        return
    es.examples.append((index, texts))


def _read_json_array(es: EvalSet, fields: list[str]) -> bool:
    """A ``.json`` file holding one array of records (or ``{"data": [...]}``); False if it is JSON lines."""
    try:
        with open(es.path, "rb") as f:
            data = json.loads(f.read().decode("utf-8"))
    except ValueError:  # JSON lines (or corrupt lines, counted one by one there)
        return False
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        return False
    for index, record in enumerate(data):
        _add(es, index, record, fields)
    return True


def _read_jsonl(es: EvalSet, fields: list[str]) -> None:
    if es.path.endswith(".json") and _read_json_array(es, fields):
        return
    with open(es.path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    opener = gzip.open if gz else open
    try:
        with opener(es.path, "rb") as f:  # type: ignore[operator]
            index = 0
            for raw in f:
                if not raw.strip():
                    continue
                try:
                    record = json.loads(raw.decode("utf-8"))
                except UnicodeDecodeError:
                    es.records += 1
                    es.skipped["invalid_utf8"] += 1
                except ValueError:
                    es.records += 1
                    es.skipped["invalid_json"] += 1
                else:
                    _add(es, index, record, fields)
                index += 1
    except (OSError, EOFError) as e:  # a truncated or corrupt gzip stream
        raise ConfigError(f"decontamination.eval_paths: {es.path} is unreadable ({e})") from None


def _read_parquet(es: EvalSet, fields: list[str]) -> None:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(es.path)
        names = pf.schema_arrow.names
        wanted = [f for f in fields if f in names]
        if not wanted:
            raise ConfigError(f"decontamination.eval_paths: {es.path} has none of the eval text columns "
                              f"{fields} (its columns: {names}); set decontamination.question_field/answer_field/"
                              "context_field")
        index = 0
        for batch in pf.iter_batches(columns=wanted):
            for record in batch.to_pylist():
                _add(es, index, record, fields)
                index += 1
    except ConfigError:
        raise
    except Exception as e:  # pyarrow raises ArrowInvalid/OSError for a file that is not Parquet or is cut
        raise ConfigError(f"decontamination.eval_paths: {es.path} is not a readable Parquet file "
                          f"({str(e).splitlines()[0]})") from None


def read_eval_set(path: str, fields: list[str]) -> EvalSet:
    """Every usable example of one eval file; a :class:`ConfigError` naming the file if it cannot be used."""
    if not os.path.isfile(path):
        raise ConfigError(f"decontamination.eval_paths: {path} does not exist (or is not a file)")
    es = EvalSet(eval_set_name(path), path)
    if path.endswith(PARQUET_SUFFIXES):
        _read_parquet(es, fields)
    elif path.endswith(JSONL_SUFFIXES):
        _read_jsonl(es, fields)
    else:
        raise ConfigError(f"decontamination.eval_paths: {path}: unknown file type; expected JSON lines "
                          f"({', '.join(JSONL_SUFFIXES)}) or Parquet (.parquet)")
    if not es.examples:
        why = ", ".join(f"{k}: {v}" for k, v in sorted(es.skipped.items())) or "the file is empty"
        raise ConfigError(f"decontamination.eval_paths: {path} has no usable eval record ({es.records} records; "
                          f"{why}; text fields looked for: {fields})")
    return es


def read_eval_sets(paths: list[str], fields: list[str]) -> list[EvalSet]:
    sets = [read_eval_set(str(p), fields) for p in paths]
    seen: dict[str, str] = {}
    for es in sets:
        if es.name in seen:
            raise ConfigError(f"decontamination.eval_paths: {seen[es.name]} and {es.path} have the same eval set "
                              f"name '{es.name}' (the file name without its suffix); rename one")
        seen[es.name] = es.path
    return sets


@lru_cache(maxsize=64)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_digest(path: str) -> str:
    """sha256 of a file's content (cached per size and mtime): what fingerprints hold, so an edited eval set
    redoes the decontamination even under the same path."""
    st = os.stat(path)
    return _digest(os.path.abspath(path), st.st_size, st.st_mtime_ns)
