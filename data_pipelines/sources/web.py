"""Common Crawl WARC (``response`` records, HTML -> main text) and WET (``conversion`` records, text).

Streams with ``warcio`` (gzip per record or uncompressed, one record in memory at a time, payloads capped
by ``max_record_bytes``). warcio itself does not complain about a record cut in half (it returns the bytes
that are there), so the reader checks the record block against its ``Content-Length`` and, with
``check_digests``, its ``WARC-Block-Digest``; a cut or corrupt record is skipped and counted, the records
before it are kept, and a file whose framing is lost after it ends there (counted once).
"""

from __future__ import annotations

import logging
import re
from typing import Any, ClassVar, Iterator

import xxhash
from warcio.archiveiterator import ArchiveIterator
from warcio.exceptions import ArchiveLoadFailed

from data_pipelines.document import Document
from data_pipelines.sources.base import (
    STREAM_ERRORS,
    SourceReader,
    compression_of,
    decode_utf8,
    file_label,
    stream_error_reason,
)
from data_pipelines.sources.html import (
    HTML_MIME_TYPES,
    clean_extracted,
    detect_charset,
    get_extractor,
    looks_like_html,
    mime_type,
)
from data_pipelines.stats import StageStats

log = logging.getLogger(__name__)

_UUID_RE = re.compile(r"<?(?:urn:uuid:)?([^<>]+)>?")
CONTENT_RECORDS = frozenset({"response", "resource", "conversion"})


class WebReader(SourceReader):
    """``kind: web`` -- WARC and WET files, ``.gz`` or plain.

    Options: ``extractor`` (``resiliparse`` | ``trafilatura``), ``check_digests`` (verify
    ``WARC-Block-Digest`` where present), ``http_status_ok_only`` (skip non-200 responses), plus the
    common ``max_record_bytes``/``min_chars``/``invalid_utf8``.
    """

    kind: ClassVar[str] = "web"
    extensions: ClassVar[tuple[str, ...]] = (".warc", ".warc.gz", ".wet", ".wet.gz", ".warc.wet.gz")
    OPTIONS: ClassVar[dict[str, Any]] = {
        "extractor": "resiliparse",
        "check_digests": True,
        "http_status_ok_only": True,
    }

    def __init__(self, source: str, **options: Any):
        super().__init__(source, **options)
        self.extract = get_extractor(self.options["extractor"], source)

    def read(self, path: str, stats: StageStats) -> Iterator[Document]:
        fname = file_label(path)
        with open(path, "rb") as raw:
            records = iter(ArchiveIterator(raw, check_digests=bool(self.options["check_digests"])))
            while True:
                try:
                    record = next(records)
                    doc = self._record(record, fname, stats)
                except StopIteration:
                    return
                except (ArchiveLoadFailed, *STREAM_ERRORS) as exc:
                    # the framing is lost: nothing after this point can be located reliably
                    if isinstance(exc, ArchiveLoadFailed):
                        reason = "warc_corrupt"
                    else:
                        reason = stream_error_reason(exc, compression_of(path), "warc")
                    log.warning("source %s: %s in %s: %s; records before it kept", self.source, reason, path, exc)
                    self.skip(stats, reason, where=path)
                    return
                if doc is not None:
                    yield doc

    def _record(self, record: Any, fname: str, stats: StageStats) -> Document | None:
        if record.rec_type not in CONTENT_RECORDS:
            return None  # warcinfo, request, metadata, revisit: not documents
        headers = record.rec_headers
        url = headers.get_header("WARC-Target-URI") or ""
        if record.length is not None and record.length > self.max_record_bytes:
            self.skip(stats, "record_too_large", record.length, url)
            return None
        payload = record.content_stream().read(self.max_record_bytes + 1)
        if len(payload) > self.max_record_bytes:  # decoded (chunked/gzip) payload larger than the cap
            self.skip(stats, "record_too_large", len(payload), url)
            return None
        if record.raw_stream.limit > 0:  # payload read to its end, yet short of Content-Length: cut
            self.skip(stats, "warc_truncated_record", len(payload), url)
            return None
        checker = getattr(record, "digest_checker", None)
        if checker is not None and checker.passed is False:
            self.skip(stats, "warc_digest_mismatch", len(payload), url)
            return None

        meta: dict[str, Any] = {"file": fname, "url": url, "date": headers.get_header("WARC-Date") or ""}
        doc_id = self._doc_id(headers.get_header("WARC-Record-ID"), url, meta["date"])
        if record.rec_type == "conversion":  # WET: already text, UTF-8 by the format's definition
            text = decode_utf8(payload, stats, self.invalid_utf8)
            if text is None:
                self.skip(stats, "invalid_utf8", len(payload), url)
                return None
            return self.emit(stats, doc_id, clean_extracted(text), len(payload), meta)

        http = record.http_headers
        if record.rec_type == "response" and http is not None and self.options["http_status_ok_only"]:
            status = http.get_statuscode()
            if status != "200":
                self.skip(stats, "http_status", len(payload), url)
                return None
        content_type = http.get_header("Content-Type") if http is not None else None
        content_type = content_type or headers.get_header("Content-Type")
        mime = mime_type(headers.get_header("WARC-Identified-Payload-Type")) or mime_type(content_type)
        if mime not in HTML_MIME_TYPES and not (mime in ("", "application/octet-stream") and looks_like_html(payload)):
            self.skip(stats, "non_html", len(payload), url)
            return None
        charset = detect_charset(payload, content_type)
        html = payload.decode(charset, errors="replace")
        meta["charset"] = charset
        try:
            text = self.extract(html, url or None)
        except Exception as exc:  # noqa: BLE001 - an extractor crash on one page must not kill the shard
            log.warning("source %s: extractor failed on %s: %s", self.source, url, exc)
            self.skip(stats, "extract_failed", len(payload), url)
            return None
        return self.emit(stats, doc_id, clean_extracted(text), len(payload), meta)

    def _doc_id(self, record_id: str | None, url: str, date: str) -> str:
        if record_id:
            m = _UUID_RE.fullmatch(record_id.strip())
            return f"{self.source}:{m.group(1) if m else record_id.strip()}"
        return f"{self.source}:{xxhash.xxh64_hexdigest(f'{url}|{date}')}"
