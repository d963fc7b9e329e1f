"""The manifest that ties token shards, tokenizer and corpus statistics together.

Written by the data pipeline next to its shards, read by the trainer (``data.path`` points at its folder)::

    {
      "format": "pretrain-token-shards", "version": 1,
      "tokenizer": "tokenizer/tokenizer.json",        # relative to the manifest's folder
      "vocab_size": 4096, "eod_id": 0, "dtype": "uint16",
      "corpora": {
        "web":  {"prefixes": ["tokens/web/part-00000"], "documents": 812, "tokens": 401233},
        "code": {"prefixes": ["tokens/code/part-00000", "tokens/code/part-00001"], ...}
      }
    }

Prefixes are relative to the manifest's folder (absolute ones are kept as they are).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from pretrain.core.atomic import atomic_write
from pretrain.core.errors import DataError

MANIFEST_NAME = "manifest.json"
FORMAT = "pretrain-token-shards"
VERSION = 1


@dataclass
class Corpus:
    name: str
    prefixes: list[str]  # absolute
    documents: int
    tokens: int


@dataclass
class Manifest:
    root: Path
    tokenizer: Path | None
    vocab_size: int
    eod_id: int
    dtype: str
    corpora: dict[str, Corpus] = field(default_factory=dict)


def manifest_path(path: str | os.PathLike) -> Path:
    p = Path(path)
    return p if p.name == MANIFEST_NAME or p.suffix == ".json" else p / MANIFEST_NAME


def write_manifest(root: str | os.PathLike, *, tokenizer: str | None, vocab_size: int, eod_id: int, dtype: str,
                   corpora: dict[str, dict]) -> Path:
    """Write ``<root>/manifest.json`` atomically. ``corpora`` maps name -> {prefixes, documents, tokens}."""
    root = Path(root)
    rel = lambda p: os.path.relpath(p, root) if os.path.isabs(p) else p  # noqa: E731
    data = {
        "format": FORMAT,
        "version": VERSION,
        "tokenizer": rel(tokenizer) if tokenizer else None,
        "vocab_size": int(vocab_size),
        "eod_id": int(eod_id),
        "dtype": dtype,
        "corpora": {
            name: {"prefixes": [rel(p) for p in c["prefixes"]], "documents": int(c["documents"]), "tokens": int(c["tokens"])}
            for name, c in sorted(corpora.items())
        },
    }
    out = root / MANIFEST_NAME
    atomic_write(out, json.dumps(data, indent=2) + "\n")
    return out


def read_manifest(path: str | os.PathLike) -> Manifest:
    mpath = manifest_path(path)
    if not mpath.is_file():
        raise DataError(f"no token-shard manifest at {mpath} (data.path must be a folder written by the data pipeline)")
    try:
        data = json.loads(mpath.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{mpath} is not valid JSON: {e}") from None
    if data.get("format") != FORMAT:
        raise DataError(f"{mpath}: 'format' is {data.get('format')!r}, expected {FORMAT!r}")
    for key in ("vocab_size", "eod_id", "dtype", "corpora"):
        if key not in data:
            raise DataError(f"{mpath}: missing key '{key}'")
    root = mpath.parent
    absp = lambda p: Path(p) if os.path.isabs(p) else root / p  # noqa: E731
    corpora = {}
    for name, c in data["corpora"].items():
        if not c.get("prefixes"):
            raise DataError(f"{mpath}: corpus '{name}' lists no 'prefixes'")
        corpora[name] = Corpus(name, [str(absp(p)) for p in c["prefixes"]], int(c.get("documents", 0)), int(c.get("tokens", 0)))
    if not corpora:
        raise DataError(f"{mpath}: 'corpora' is empty")
    tok = data.get("tokenizer")
    return Manifest(root, absp(tok) if tok else None, int(data["vocab_size"]), int(data["eod_id"]), data["dtype"], corpora)
