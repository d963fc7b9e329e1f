"""Where a huge input file can be cut into parts: byte offsets from which a reader can start on its own.

A cut must leave every piece readable without the bytes before it, and must fall between two records, so
that reading the pieces one after another gives exactly the records of the whole file, in the same order:

* **JSON Lines, plain**: after a newline (a seek to the target offset, then to the end of that line);
* **JSON Lines, gzip / bz2 / zstd**: at the end of a gzip member, bz2 stream or zstd frame whose content
  ends with a newline (``bgzip``, ``pigz --independent``, ``zstd`` with frames, concatenated ``.gz`` files);
  finding the members means decompressing the file once;
* **MediaWiki multistream ``.xml.bz2``**: at the start of a bz2 stream listed in the dump's
  ``-index.txt.bz2`` (each stream holds whole ``<page>`` elements).

Each piece also records how many lines come before it (:attr:`Span.line`), so JSON lines keep their file
line numbers (ids of records without one). A file with a single stream (one gzip member, an ``.xz``, a wiki
dump without its index) cannot be cut and stays one part, which is logged. Scans are cached in
``<output_dir>/work/splits/`` by path, size, modification time and piece size, so shard tasks and reruns
do not repeat them.
"""

from __future__ import annotations

import bz2
import hashlib
import json
import logging
import os
import re
import zlib
from pathlib import Path
from typing import Any, Callable, Iterator

from data_pipelines.executor.parts import MiB, Span
from data_pipelines.sources.base import STREAM_ERRORS, compression_of

log = logging.getLogger(__name__)

_VERSION = 1


def _cached(cache: Path | None, path: str, piece: int, what: str, scan: Callable[[], list[Span] | None]):
    if cache is None:
        return scan()
    st = os.stat(path)
    key = hashlib.sha256(json.dumps([_VERSION, what, os.path.abspath(path), st.st_size, st.st_mtime_ns, piece])
                         .encode()).hexdigest()[:24]
    f = cache / f"{key}.json"
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
        return None if data is None else [Span(*s) for s in data]
    except (OSError, ValueError, TypeError):
        pass  # no entry yet, or a damaged one: scan the file again (and rewrite the entry below)
    spans = scan()
    from pretrain.core.atomic import atomic_write

    atomic_write(f, (json.dumps(None if spans is None else [[s.start, s.end, s.line] for s in spans]) + "\n").encode())
    return spans


def split_file(kind: str, path: str, piece: int, cache: Path | None = None) -> list[Span] | None:
    """Pieces of about ``piece`` bytes of one input file of a source of ``kind``; ``None``: one part. A file that
    cannot be read or scanned (vanished, unreadable, corrupt, a damaged index) stays one part: the read stage then
    skips and counts what is wrong with it, as for any file, instead of the whole run stopping here."""
    try:
        size = os.path.getsize(path)
        if size <= piece:
            return None
        if kind == "jsonl":
            spans = _cached(cache, path, piece, "jsonl", lambda: jsonl_spans(path, piece))
        elif kind == "wiki":
            spans = _cached(cache, path, piece, "wiki", lambda: wiki_spans(path, piece))
        else:
            return None
    except STREAM_ERRORS as e:
        log.warning("%s: cannot be scanned for cut points (%s: %s); it stays one part", path, type(e).__name__, e)
        return None
    if spans is None or len(spans) < 2:
        return None
    log.info("%s (%.1f MB): %d parts of about %.1f MB", path, size / MiB, len(spans), piece / MiB)
    return spans


# ------------------------------------------------------------------------------------------------ JSONL
def _pieces(cuts: list[tuple[int, int]], size: int) -> list[Span]:
    """``[(offset, lines before it)]`` cut points (increasing, inside the file) -> the spans between them."""
    points = [(0, 0), *cuts]
    return [Span(a, b, line) for (a, line), (b, _) in zip(points, [*cuts, (size, 0)])]


def jsonl_spans(path: str, piece: int) -> list[Span] | None:
    compression = compression_of(path)
    if compression == "none":
        return _plain_spans(path, piece)
    if compression in ("gzip", "bz2", "zstd"):
        spans = _member_spans(path, piece, compression)
        if spans is None:
            log.info("%s: a single %s stream; it cannot be split and stays one part", path, compression)
        return spans
    log.info("%s: %s cannot be split at record boundaries; it stays one part", path, compression)
    return None


def _plain_spans(path: str, piece: int) -> list[Span]:
    """Cuts just after the first newline at or after every multiple of ``piece``; lines counted on the way."""
    size = os.path.getsize(path)
    cuts: list[tuple[int, int]] = []
    lines, pos, target = 0, 0, piece
    with open(path, "rb", buffering=0) as f:
        while target < size:
            while pos < target:  # count the newlines up to the target
                chunk = f.read(min(MiB, target - pos))
                if not chunk:
                    break
                lines += chunk.count(b"\n")
                pos += len(chunk)
            while True:  # then on to the end of the line the target falls in
                chunk = f.read(64 * 1024)
                if not chunk:
                    pos = size
                    break
                nl = chunk.find(b"\n")
                if nl >= 0:
                    lines += 1
                    pos += nl + 1
                    f.seek(pos)
                    break
                pos += len(chunk)
            if pos >= size:
                break
            cuts.append((pos, lines))
            target = max(target + piece, pos + 1)
    return _pieces(cuts, size)


def _decompressor(compression: str) -> Any:
    if compression == "gzip":
        return zlib.decompressobj(wbits=31)
    if compression == "bz2":
        return bz2.BZ2Decompressor()
    import zstandard

    return zstandard.ZstdDecompressor().decompressobj()


def _members(path: str, compression: str) -> Iterator[tuple[int, int, bool]]:
    """``(compressed end offset, newlines in the member, content ends with a newline)`` of each complete member.

    A corrupt or cut member ends the scan: the pieces after the last good end then form the last part, which
    reads (and counts) the damage exactly as the whole file would."""
    d = _decompressor(compression)
    consumed, newlines, last = 0, 0, b""
    with open(path, "rb") as f:
        data = b""
        while True:
            if not data:
                data = f.read(MiB)
                if not data:
                    return
            try:
                out = d.decompress(data)
            except STREAM_ERRORS:
                return
            if out:
                newlines += out.count(b"\n")
                last = out[-1:]
            if not d.eof:
                consumed += len(data)
                data = b""
                continue
            rest = d.unused_data
            consumed += len(data) - len(rest)
            yield consumed, newlines, last == b"\n"
            newlines, last = 0, b""
            data = rest
            d = _decompressor(compression)


def _member_spans(path: str, piece: int, compression: str) -> list[Span] | None:
    size = os.path.getsize(path)
    cuts: list[tuple[int, int]] = []
    lines, target = 0, piece
    members = list(_members(path, compression))
    for end, newlines, aligned in members[:-1]:  # never after the last one (zero padding may follow it)
        lines += newlines
        if end >= target and aligned:
            cuts.append((end, lines))
            target = end + piece
    return _pieces(cuts, size) if cuts else None


# ------------------------------------------------------------------------------------------------ wiki
_DUMP = re.compile(r"\.xml\.bz2$")


def wiki_index_path(path: str) -> str | None:
    """``...-multistream.xml.bz2`` -> ``...-multistream-index.txt.bz2`` (Wikimedia's naming)."""
    if not _DUMP.search(path):
        return None
    return _DUMP.sub("-index.txt.bz2", path)


def wiki_spans(path: str, piece: int) -> list[Span] | None:
    """Cuts at the bz2 stream offsets of the dump's index (``offset:page_id:title`` per line)."""
    index = wiki_index_path(path)
    if index is None or not os.path.isfile(index):
        log.info("%s: no multistream index (%s) beside it; the dump stays one part", path,
                 os.path.basename(index) if index else "<name>-index.txt.bz2")
        return None
    size = os.path.getsize(path)
    offsets: list[int] = []
    with bz2.open(index, "rb") as f:
        for line in f:
            head = line.split(b":", 1)[0]
            if head.isdigit():
                off = int(head)
                if not offsets or off != offsets[-1]:
                    offsets.append(off)
    cuts: list[tuple[int, int]] = []
    target = piece
    with open(path, "rb") as f:
        for off in sorted(set(offsets)):
            if off < target or off <= 0 or off >= size:
                continue
            f.seek(off)
            if f.read(3) != b"BZh":
                log.warning("%s: offset %d of %s is not the start of a bz2 stream; the index does not belong to "
                            "this dump, which stays one part", path, off, index)
                return None
            cuts.append((off, 0))
            target = off + piece
    if not cuts:
        log.info("%s: the index lists a single stream; the dump stays one part", path)
        return None
    return _pieces(cuts, size)
