"""What every source reader shares: option checking, counting, size caps, decoding, compressed streams.

Counting convention (the report relies on it): every input unit a reader looks at is one ``docs_in`` (its
raw bytes in ``bytes_in``), and ends as exactly one of

* a yielded document (``docs_out``/``bytes_out``, the document text's UTF-8 bytes),
* ``stats.drop(reason)``: a readable record that is not a document we want (redirect, empty text...),
* ``stats.skip(reason)``: input that could not be read (corrupt gzip, cut WARC record, binary file...).

so ``docs_in == docs_out + sum(dropped) + sum(skipped)`` holds for every reader and every file.

No single input file stops a run: every reader's ``read`` is wrapped (:meth:`SourceReader.__init_subclass__`)
so that an empty file is skipped as ``empty_file``, and an ``OSError`` or stream error that escapes the
reader's own handling (a file without read permission, one deleted since the listing, an I/O error) ends that
file only, counted under a reason from :func:`os_error_reason`; the documents it yielded before are kept.
"""

from __future__ import annotations

import bz2
import errno
import functools
import gzip
import io
import logging
import lzma
import os
import stat
import zlib
from typing import Any, BinaryIO, ClassVar, Iterator

from zstandard import ZstdError

from data_pipelines.blocks import Reader
from data_pipelines.document import Document
from data_pipelines.stats import StageStats
from pretrain.core.errors import ConfigError

log = logging.getLogger(__name__)

MiB = 1 << 20

# Exceptions a decompressor or parser raises on truncated/corrupt input. Catching these (and only these)
# keeps a bad file from crashing a shard while real bugs still surface.
# (zstandard's ZstdError subclasses Exception only.)
STREAM_ERRORS: tuple[type[BaseException], ...] = (EOFError, OSError, zlib.error, lzma.LZMAError, ValueError, ZstdError)

_MAGIC = ((b"\x1f\x8b", "gzip"), (b"BZh", "bz2"), (b"\xfd7zXZ\x00", "xz"), (b"\x28\xb5\x2f\xfd", "zstd"))


# errno -> skip reason of a file that could not be read at all
_OS_REASONS = {
    errno.EACCES: "unreadable_file", errno.EPERM: "unreadable_file", errno.ENOENT: "missing_file",
    errno.EISDIR: "not_a_file", errno.ENOTDIR: "missing_file", errno.ELOOP: "not_a_file", errno.EIO: "io_error",
    errno.ENXIO: "not_a_file",
}


def os_error_reason(exc: OSError) -> str:
    """A stable skip reason for an ``OSError`` reading an input: ``unreadable_file`` (permissions),
    ``missing_file``, ``not_a_file``, ``io_error``, else ``os_error`` (``read_error`` without an errno, e.g. a
    corrupt gzip member found late)."""
    if exc.errno is None:
        return "read_error"
    return _OS_REASONS.get(exc.errno, "os_error")


def compression_of(path: str) -> str:
    """``gzip``/``bz2``/``xz``/``zstd`` from the file's magic bytes (not its name, which lies), else ``none``."""
    with open(path, "rb") as f:
        head = f.read(6)
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    return "none"


def open_binary(path: str, span: Any = None) -> tuple[BinaryIO, str]:
    """Open ``path`` for streaming reads, decompressing transparently. Returns (stream, compression).

    ``span`` (a :class:`~data_pipelines.executor.parts.Span`): only the bytes ``[span.start, span.end)`` of
    the file, which are whole members/streams/frames of a compressed file (:mod:`data_pipelines.sources.split`).
    """
    kind = compression_of(path)
    if span is not None:
        return open_range(path, span.start, span.end, kind), kind
    if kind == "zstd":
        return io.BufferedReader(ZstdFrames(open(path, "rb")), buffer_size=MiB), kind  # type: ignore[return-value]
    if kind == "gzip":
        return gzip.open(path, "rb"), kind  # type: ignore[return-value]
    if kind == "bz2":
        return bz2.open(path, "rb"), kind  # type: ignore[return-value]
    if kind == "xz":
        return lzma.open(path, "rb"), kind  # type: ignore[return-value]
    return open(path, "rb", buffering=MiB), kind


class RangeReader(io.RawIOBase):
    """The raw bytes ``[start, end)`` of a file, as a stream of their own (one part of a split file)."""

    def __init__(self, path: str, start: int, end: int):
        super().__init__()
        self._f = open(path, "rb")
        self._f.seek(start)
        self._left = end - start

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self._left)
        if n <= 0:
            return 0
        got = self._f.readinto(memoryview(buffer)[:n])
        self._left -= got
        return got

    def close(self) -> None:
        self._f.close()
        super().close()


def open_range(path: str, start: int, end: int, kind: str) -> BinaryIO:
    """The decompressed content of the file bytes ``[start, end)``: whole gzip members, bz2 streams or zstd
    frames of a compressed file, which decompress on their own; plain bytes otherwise."""
    raw = io.BufferedReader(RangeReader(path, start, end), buffer_size=MiB)
    if kind == "gzip":
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    if kind == "bz2":
        return bz2.BZ2File(raw, "rb")  # type: ignore[return-value]
    if kind == "xz":
        return lzma.LZMAFile(raw, "rb")  # type: ignore[return-value]
    if kind == "zstd":
        return io.BufferedReader(ZstdFrames(raw), buffer_size=MiB)  # type: ignore[return-value]
    return raw  # type: ignore[return-value]


class ZstdFrames(io.RawIOBase):
    """The zstd frames of ``raw`` one after another, decompressed. A frame cut short raises ``ZstdError`` (a stream
    error, so the reader counts the damage): zstandard's own ``stream_reader`` ends quietly there instead, and the
    rest of a truncated file would be lost unreported."""

    def __init__(self, raw: BinaryIO):
        super().__init__()
        import zstandard

        self._zstd, self._raw = zstandard, raw
        self._obj: Any = None
        self._out, self._pos = b"", 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while self._pos >= len(self._out):
            if self._obj is None or self._obj.eof:  # between frames: the next one starts with what is left over
                chunk = (self._obj.unused_data if self._obj is not None else b"") or self._raw.read(MiB)
                if not chunk:
                    return 0
                self._obj = self._zstd.ZstdDecompressor().decompressobj()
            else:
                chunk = self._raw.read(MiB)
                if not chunk:
                    raise self._zstd.ZstdError("the file ends inside a zstd frame (truncated)")
            self._out, self._pos = self._obj.decompress(chunk), 0
        n = min(len(buffer), len(self._out) - self._pos)
        buffer[:n] = self._out[self._pos:self._pos + n]
        self._pos += n
        return n

    def close(self) -> None:
        self._raw.close()
        super().close()


class TolerantStream(io.RawIOBase):
    """A read-only view of a (decompressing) stream that ends cleanly where the data breaks.

    A parser that pulls large blocks (``lxml.iterparse`` asks for 32 KiB at a time) would lose the bytes
    decompressed in the same call as a truncation error. This wrapper hands out data with ``read1``, so
    every byte before the break reaches the parser; the error is remembered in :attr:`error` and the
    stream just ends, letting the parser finish the records it has.
    """

    def __init__(self, inner: BinaryIO):
        super().__init__()
        self.inner = inner
        self.error: BaseException | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.error is not None:
            return 0
        try:
            data = self.inner.read1(len(buffer))  # type: ignore[attr-defined]
        except STREAM_ERRORS as exc:
            self.error = exc
            return 0
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self.inner.close()
        super().close()


def open_tolerant(path: str, span: Any = None) -> tuple[BinaryIO, TolerantStream, str]:
    """``open_binary`` behind a :class:`TolerantStream` and a buffer (for ``readline``): every complete
    line before a truncation is delivered; afterwards ``tolerant.error`` says what broke."""
    inner, compression = open_binary(path, span)
    tolerant = TolerantStream(inner)
    return io.BufferedReader(tolerant, buffer_size=MiB), tolerant, compression  # type: ignore[return-value]


def stream_error_reason(exc: BaseException, compression: str, what: str = "file") -> str:
    """A stable reason name for a read failure: ``truncated_gzip``, ``corrupt_bz2``, ``corrupt_file``..."""
    label = compression if compression != "none" else what
    if isinstance(exc, EOFError):
        return f"truncated_{label}"
    return f"corrupt_{label}"


def iter_capped_lines(
    stream: BinaryIO, max_bytes: int, tolerant: "TolerantStream | None" = None,
) -> Iterator[bytes | None]:
    """Yield the lines of a binary stream (without the newline); ``None`` for a line over ``max_bytes``.

    ``readline(limit)`` never buffers more than ``limit`` bytes, so a 100 MB line costs ``max_bytes`` of
    memory, not 100 MB: the rest of it is read and thrown away in bounded chunks. With ``tolerant``, a
    last line cut by a truncation is not yielded (the truncation is counted once, by the caller).
    """
    while True:
        line = stream.readline(max_bytes + 1)
        if not line:
            return
        if line.endswith(b"\n"):
            yield line[:-1].rstrip(b"\r")
            continue
        if len(line) <= max_bytes:  # last line of the file, no trailing newline
            if tolerant is None or tolerant.error is None:
                yield line.rstrip(b"\r")
            return
        while True:  # too long: discard the remainder of this line
            rest = stream.readline(MiB)
            if not rest or rest.endswith(b"\n"):
                break
        yield None


_FIRST_READ = 256 * 1024  # most units are smaller: no buffer of the whole cap (64 MiB) allocated for each


def read_capped(stream: BinaryIO, max_bytes: int) -> bytes | None:
    """Read a whole (small) unit, or ``None`` (after draining it in chunks) when it exceeds ``max_bytes``."""
    data = stream.read(min(max_bytes + 1, _FIRST_READ))
    if len(data) < _FIRST_READ and len(data) <= max_bytes:  # the whole unit (a short read is its end)
        return data
    if len(data) <= max_bytes:
        data += stream.read(max_bytes + 1 - len(data))
    if len(data) <= max_bytes:
        return data
    while stream.read(MiB):
        pass
    return None


def decode_utf8(data: bytes, stats: StageStats, policy: str) -> str | None:
    """Decode UTF-8. Invalid bytes are replaced (``modified['invalid_utf8']``) or, with policy ``skip``,
    the caller skips the record (returns ``None``; the caller counts ``skipped['invalid_utf8']``)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        if policy == "skip":
            return None
        stats.modify("invalid_utf8")
        return data.decode("utf-8", errors="replace")


class SourceReader(Reader):
    """Base class of the bundled readers: validated options, counting helpers and path conventions.

    Subclasses declare ``OPTIONS`` (name -> default); an unknown option is a :class:`ConfigError` naming
    the source, so a typo in a YAML file fails before any data is read.
    """

    kind: ClassVar[str] = ""
    #: file name endings a directory expands to (``expand_paths``); empty = every regular file
    extensions: ClassVar[tuple[str, ...]] = ()
    #: True when a directory is one unit (a code repository) rather than a folder of input files
    directory_units: ClassVar[bool] = False
    COMMON_OPTIONS: ClassVar[dict[str, Any]] = {
        "max_record_bytes": 64 * MiB,  # a single record/line/page above this is skipped (record_too_large)
        "min_chars": 1,  # documents whose stripped text is shorter are dropped (empty)
        "invalid_utf8": "replace",  # replace | skip
    }
    OPTIONS: ClassVar[dict[str, Any]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Guard the ``read`` each reader defines (see :func:`_guard_read`): one place, every reader."""
        super().__init_subclass__(**kwargs)
        if "read" in cls.__dict__:
            cls.read = _guard_read(cls.__dict__["read"])  # type: ignore[method-assign]

    def __init__(self, source: str, **options: Any):
        allowed = {**self.COMMON_OPTIONS, **self.OPTIONS}
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise ConfigError(
                f"source {source!r} (kind {self.kind!r}): unknown option(s) {unknown}; "
                f"expected some of {sorted(allowed)}"
            )
        merged = {**allowed, **options}
        if merged["invalid_utf8"] not in ("replace", "skip"):
            raise ConfigError(
                f"source {source!r}: options.invalid_utf8 must be 'replace' or 'skip', got {merged['invalid_utf8']!r}"
            )
        for key in ("max_record_bytes", "min_chars"):
            if not isinstance(merged[key], int) or merged[key] < 0:
                raise ConfigError(f"source {source!r}: options.{key} must be a non-negative integer, got {merged[key]!r}")
        super().__init__(source, **merged)
        self.max_record_bytes: int = merged["max_record_bytes"]
        self.min_chars: int = merged["min_chars"]
        self.invalid_utf8: str = merged["invalid_utf8"]

    # -- counting helpers (see the module docstring) -------------------------------------------------
    @staticmethod
    def count_in(stats: StageStats, nbytes: int) -> None:
        stats.docs_in += 1
        stats.bytes_in += nbytes

    def skip(self, stats: StageStats, reason: str, nbytes: int = 0, where: str = "") -> None:
        """An input unit that could not be read: counted in ``docs_in`` and ``skipped[reason]``."""
        self.count_in(stats, nbytes)
        stats.skip(reason)
        log.debug("source %s: skipped %s (%s)", self.source, where, reason)

    def drop(self, stats: StageStats, reason: str, nbytes: int = 0) -> None:
        """A readable record that is not a wanted document: ``docs_in`` and ``dropped[reason]``."""
        self.count_in(stats, nbytes)
        stats.drop(reason)

    def iter_json_lines(self, path: str, stats: StageStats, span: Any = None) -> Iterator[tuple[Any, str, int, int]]:
        """``(record, file label, line number, raw bytes)`` for each JSON line of ``path`` (``.gz``/``.bz2``/
        ``.xz``/``.zst`` read transparently). Oversized lines, invalid UTF-8 (``skip`` policy) and invalid JSON
        are skipped and counted; a broken compressed stream ends the file, the lines before it kept.
        ``span``: only that byte range of the file, whose lines are numbered on from ``span.line``."""
        import json

        fname = file_label(path)
        stream, tolerant, compression = open_tolerant(path, span)
        first = 1 + (span.line if span is not None else 0)
        with stream:
            # JSON escapes can double a text's size, hence twice the cap for the raw line
            lines = iter_capped_lines(stream, self.max_record_bytes * 2, tolerant)
            for lineno, raw in enumerate(lines, start=first):
                if raw is None:
                    self.skip(stats, "record_too_large", where=f"{fname}:{lineno}")
                    continue
                if not raw.strip():
                    continue  # blank line between records
                line = decode_utf8(raw, stats, self.invalid_utf8)
                if line is None:
                    self.skip(stats, "invalid_utf8", len(raw), f"{fname}:{lineno}")
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    self.skip(stats, "invalid_json", len(raw), f"{fname}:{lineno}")
                    continue
                yield record, fname, lineno, len(raw)
        if tolerant.error is not None:
            reason = stream_error_reason(tolerant.error, compression, "jsonl")
            log.warning("source %s: %s in %s: %s; lines before it kept", self.source, reason, path, tolerant.error)
            self.skip(stats, reason, where=path)

    def emit(self, stats: StageStats, doc_id: str, text: str, nbytes: int, metadata: dict[str, Any]) -> Document | None:
        """Count one input record and return its document, or ``None`` (dropped as ``empty``)."""
        self.count_in(stats, nbytes)
        stripped = text.strip()
        if not stripped or (self.min_chars > 1 and len(stripped) < self.min_chars):
            stats.drop("empty")
            return None
        stats.kept(text)
        return Document(id=doc_id, text=text, source=self.source, metadata=metadata)


def _guard_read(read: Any) -> Any:
    """``read`` that skips an empty file (``empty_file``) and turns an error escaping it into one counted skip
    of that file instead of the end of the run. Documents yielded before the error are kept, as after a
    truncation. Only I/O and stream errors (:data:`STREAM_ERRORS`) are caught: a bug still surfaces."""

    @functools.wraps(read)
    def guarded(self: SourceReader, path: str, stats: StageStats, **kwargs: Any) -> Iterator[Document]:
        try:
            try:
                st = os.stat(path)  # one stat for os.path.isfile + os.path.getsize
            except OSError:
                st = None  # the read below says what is wrong
            if st is not None and stat.S_ISREG(st.st_mode) and st.st_size == 0:
                log.warning("source %s: %s is empty; skipped", self.source, path)
                self.skip(stats, "empty_file", where=path)
                return
            yield from read(self, path, stats, **kwargs)  # span=...: one part of a split file
            return
        except OSError as exc:
            reason = os_error_reason(exc)
            error: BaseException = exc
        except STREAM_ERRORS as exc:
            reason, error = stream_error_reason(exc, "none"), exc
        log.warning("source %s: %s reading %s: %s; skipped the rest of the file", self.source, reason, path, error)
        self.skip(stats, reason, where=path)

    return guarded


def file_label(path: str) -> str:
    """The provenance ``file`` value: the absolute, normalised path."""
    return os.path.abspath(path)


def read_text_file(path: str, max_bytes: int) -> tuple[bytes | None, int, str]:
    """Read a small text unit (a book, a source file) with a size cap. Returns (data, raw_size, compression).

    Raises the stream errors of :data:`STREAM_ERRORS` for the caller to count.
    """
    stream, kind = open_binary(path)
    with stream:
        data = read_capped(stream, max_bytes)
    size = os.path.getsize(path) if data is None else len(data)
    return data, size, kind


__all__ = [
    "MiB", "STREAM_ERRORS", "RangeReader", "SourceReader", "TolerantStream", "compression_of", "decode_utf8", "file_label",
    "iter_capped_lines", "open_binary", "open_range", "open_tolerant", "os_error_reason", "read_capped", "read_text_file",
    "stream_error_reason",
]
